"""Pairing two evaluations' prediction files question by question."""

from __future__ import annotations

import json

import pytest

from tools.compare_policies import paired_outcomes, read_predictions


def test_predictions_pair_on_question_ids(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    row = {"question": "q", "greedy": "g", "samples": ["a", "b"]}
    baseline = write(
        "a.jsonl", [{**row, "id": i, "greedy_correct": False, "samples_correct": [False, i == 2]} for i in (1, 2, 3)]
    )
    candidate = write(
        "b.jsonl", [{**row, "id": i, "greedy_correct": True, "samples_correct": [True, True]} for i in (2, 3, 4)]
    )
    outcomes = paired_outcomes(read_predictions(baseline), read_predictions(candidate))
    assert outcomes["maj@1"][0].tolist() == [0.0, 0.0] and outcomes["maj@1"][1].tolist() == [1.0, 1.0]
    assert outcomes["pass@1"][0].tolist() == [0.5, 0.0] and outcomes["pass@K"][0].tolist() == [1.0, 0.0]
    broken = write("c.jsonl", [row])
    with pytest.raises(ValueError, match=r"c\.jsonl:1"):
        read_predictions(broken)
