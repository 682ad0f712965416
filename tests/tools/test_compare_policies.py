"""The paired comparison behind every interval the README reports."""

from __future__ import annotations

import json

import pytest
import torch

from tools.compare_policies import paired_bootstrap, paired_outcomes, read_predictions


def test_paired_bootstrap_by_hand():
    baseline = torch.tensor([0, 0, 1, 1] * 50)
    assert paired_bootstrap(baseline, baseline) == (0.0, 0.0, 0.0)
    mean, low, high = paired_bootstrap(baseline, torch.ones(200))
    assert mean == pytest.approx(0.5) and low < 0.5 < high and high - low < 0.2


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
