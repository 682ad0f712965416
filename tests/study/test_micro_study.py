"""A whole study on a micro preset: warm start, its evaluation, two algorithms, the report; a
study killed mid-run resumes without redoing what finished."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

MICRO_EVALUATION = {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 16, "batch_size": 64}
MICRO_TASK = {"class_path": "lit_reason.tasks.Arithmetic", "init_args": {"train_size": 32, "validation_size": 8}}


def fit_config(path: Path, model: str, model_args: dict) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "seed_everything": 0,
                "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False},
                "model": {
                    "class_path": model,
                    "init_args": {"policy": {"name_or_path": "micro"}, "evaluation": MICRO_EVALUATION} | model_args,
                },
                "data": {"task": MICRO_TASK, "questions_per_round": 16, "eval_batch_size": 8},
            }
        )
    )
    return str(path)


def write_micro_study(tmp_path: Path) -> Path:
    sft = fit_config(tmp_path / "sft.yaml", "lit_reason.SFT", {"batch_size": 8})
    rollout = {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 16, "batch_size": 64}
    ei = fit_config(
        tmp_path / "ei.yaml",
        "lit_reason.ExpertIteration",
        {"rollout": rollout, "batch_size": 8, "reference_solutions": 8},
    )
    study = {
        "name": "micro",
        "output_dir": str(tmp_path / "study"),
        "seeds": [0],  # several seeds: tests/study/test_report.py and test_runner.py
        "warm_start": {"config": sft},
        "runs": [
            {
                "name": "sft_more",
                "algorithm": "SFT",
                "family": "sft",
                "config": sft,
                "args": ["--trainer.max_steps=2"],
            },
            {"name": "ei", "algorithm": "Expert Iteration", "reward": "sparse", "family": "rl", "config": ei},
        ],
        "claims": {"expert_iteration": "ei", "more_sft": "sft_more"},
    }
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def study_process(study_file: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "lit_reason", "study", "--config", str(study_file)],
            start_new_session=True,  # its own process group: killing it kills the run it started too
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_a_micro_study_runs_resumes_after_a_kill_and_writes_its_report(tmp_path):
    study_file = write_micro_study(tmp_path)
    runs = tmp_path / "study" / "micro" / "runs"
    log = tmp_path / "first-attempt.log"
    process = study_process(study_file, log)
    deadline = time.monotonic() + 300
    while not (runs / "sft_more" / "seed0").exists():  # the warm start and its evaluation are finished
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the study did not reach its first run:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    warm_start_record = (runs / "warm_start" / "seed0" / "study.json").read_text()
    assert not (runs / "sft_more" / "seed0" / "study.json").exists()

    output = subprocess.run(
        [sys.executable, "-m", "lit_reason", "study", "--config", str(study_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    assert "warm_start seed 0: finished before, skipped" in output.stdout
    assert "warm_start_eval seed 0: finished before, skipped" in output.stdout
    assert (runs / "warm_start" / "seed0" / "study.json").read_text() == warm_start_record  # not trained again
    for run in ("sft_more", "ei"):
        assert (runs / run / "seed0" / "study.json").is_file()
        assert (runs / run / "seed0" / "policy" / "config.json").is_file()
    report = (tmp_path / "study" / "micro" / "results.md").read_text()
    assert "| run | algorithm | reward | maj@1 | maj@2 | pass@2 | pass@1 | samples drawn | seeds |" in report
    assert "| ei | Expert Iteration | sparse |" in report and "| sft_more | SFT | - |" in report
    assert "- **RL (Expert Iteration) beats more SFT for the same time**: " in report
    assert "- **Dense rewards do not lift final accuracy over the sparse reward**: NOT TESTED." in report
    assert all((tmp_path / "study" / "micro" / plot).is_file() for plot in ("curves.png", "sft.png"))
