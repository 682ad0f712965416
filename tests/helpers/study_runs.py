"""Finished study runs written straight to disk (metrics.json, predictions, study.json) with chosen
per-question outcomes: what the study's report reads, without training anything."""

from __future__ import annotations

import json
from pathlib import Path

from lit_reason.study.runner import DONE_FILE


def write_run(
    log_dir: Path,
    evaluations: list[tuple[int, int, dict[str, list[float]]]],
    minutes: float = 1.0,
    evaluation: dict | None = None,
    validation_seconds: float | None = 0.0,
    training_end: int | bool = True,
    samples_at_end: int | None = None,
) -> None:
    """A finished run in ``log_dir`` of ``minutes`` wall time: each evaluation is (step, samples drawn, metric ->
    per-question outcomes of questions 0..Q-1), and took ``validation_seconds`` (None: not recorded). Its fit
    ended at step ``training_end`` (True: the last evaluation's; False: not recorded, as by earlier versions)
    having drawn ``samples_at_end`` samples (None: as many as by its last evaluation)."""
    (log_dir / "predictions").mkdir(parents=True, exist_ok=True)
    entries = []
    for epoch, (step, samples_drawn, outcomes) in enumerate(evaluations):
        count = len(next(iter(outcomes.values())))
        with (log_dir / "predictions" / f"val-step{step}.jsonl").open("w") as file:
            for question in range(count):
                values = {metric: values[question] for metric, values in outcomes.items()}
                record = {
                    "id": question,
                    "greedy_correct": bool(values["maj@1"]),
                    "samples_correct": [bool(values.get("pass@8", values["maj@1"]))] * 8,
                    "outcomes": values,
                }
                file.write(json.dumps(record) + "\n")
        metrics = {metric: sum(values) / len(values) for metric, values in outcomes.items()}
        entry = {"stage": "val", "step": step, "epoch": epoch, "samples_drawn": samples_drawn, "metrics": metrics}
        entries.append(entry | ({"seconds": validation_seconds} if validation_seconds is not None else {}))
    if training_end is not False:
        step = evaluations[-1][0] if training_end is True else training_end
        drawn = evaluations[-1][1] if samples_at_end is None else samples_at_end
        entries.append({"stage": "fit_end", "step": step, "epoch": len(evaluations), "samples_drawn": drawn})
    (log_dir / "metrics.json").write_text(json.dumps(entries))
    config = {"model": {"init_args": {"evaluation": evaluation or {"num_samples": 8}}}, "data": {"task": "t"}}
    (log_dir / "config.yaml").write_text(json.dumps(config))
    (log_dir / DONE_FILE).write_text(json.dumps({"wall_seconds": 60 * minutes}))  # no command to check


def outcomes(correct_share: float, pass_share: float, count: int = 200) -> dict[str, list[float]]:
    """Per-question outcomes where the first ``correct_share`` of questions are right greedily and by
    majority and the first ``pass_share`` have a right sample."""
    right = [float(q < correct_share * count) for q in range(count)]
    passed = [float(q < pass_share * count) for q in range(count)]
    return {"maj@1": right, "maj@8": right, "pass@8": passed, "pass@1": [p / 2 for p in passed]}
