"""Nothing lost to a crash: a run of every algorithm killed with SIGKILL at chosen points (mid-rollout,
mid-training, mid-validation, mid-checkpoint-save, mid-export), twice, and resumed each time with the same
command plus ``--ckpt_path`` of its ``last.ckpt`` (for one run a checkpoint taken mid-round), ends bit for bit
where the uninterrupted run ends: the same weights and optimizer state, the same metrics at every validation,
the same samples drawn and the same exported policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.helpers.faults import Kill, RunServer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL_RUN = [
    "--model.init_args.policy.name_or_path=micro",
    "--model.init_args.evaluation.num_samples=2",
    "--model.init_args.evaluation.max_new_tokens=12",
    "--data.task.init_args.train_size=48",
    "--data.questions_per_round=16",
    "--data.validation_questions=8",
    "--data.eval_batch_size=4",  # two validation batches: a kill after the first is mid-validation
    "--trainer.max_epochs=3",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
    "--export.monitor=null",  # export after every validation: every round has an export to be killed in
    "--validate_before_fit=false",
]
ROLLOUT = ["--model.init_args.rollout.num_samples=2", "--model.init_args.rollout.max_new_tokens=12"]
BATCH = "--model.init_args.batch_size=8"
# Each algorithm is killed twice: once in its second round, and once more, after resuming, in its third.
KILLS = {
    "sft": (["--config", str(CONFIGS / "sft.yaml"), BATCH], [Kill("training", 1, batch=0), Kill("export", 2)]),
    "ei": (
        ["--config", str(CONFIGS / "ei.yaml"), *ROLLOUT, BATCH, "--model.init_args.reference_solutions=8"],
        [Kill("rollout", 1), Kill("checkpoint", 2)],
    ),
    "orm": (
        ["--config", str(CONFIGS / "orm.yaml"), *ROLLOUT, BATCH, "--model.init_args.resample_every_round=false"],
        [Kill("validation", 1), Kill("training", 2)],
    ),
    "ppo": (
        ["--config", str(CONFIGS / "ppo.yaml"), *ROLLOUT, "--model.init_args.minibatch_size=8"],
        [Kill("checkpoint", 1), Kill("rollout", 2)],
    ),
    "rcrl": (
        ["--config", str(CONFIGS / "rcrl.yaml"), *ROLLOUT, BATCH, "--model.init_args.reference_solutions=8"],
        [Kill("export", 1), Kill("validation", 2)],
    ),
    # Checkpoints every 3 of a round's 8 steps: each kill resumes from one taken mid-round (its batches in it).
    "grpo-mid-round": (
        [
            "--config",
            str(CONFIGS / "grpo.yaml"),
            *ROLLOUT,
            "--model.init_args.minibatch_size=8",
            "--last_checkpoint.every_n_train_steps=3",
        ],
        [Kill("training", 1, batch=5), Kill("training", 2, batch=2)],
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def server():
    with RunServer() as server:
        yield server


def fit(server: RunServer, args: list[str], runs: Path, attempt: str, kill: Kill | None = None):
    """``lit-reason fit`` logging under ``runs``, resumed from the ``last.ckpt`` of its first version (which a
    resumed run logs on in) when there is one."""
    checkpoint = runs / "version_0" / "checkpoints" / "last.ckpt"
    command = [
        "fit",
        *args,
        *SMALL_RUN,
        f"--trainer.logger.init_args.save_dir={runs.parent}",
        f"--trainer.logger.init_args.name={runs.name}",
        *([f"--ckpt_path={checkpoint}"] if checkpoint.is_file() else []),
    ]
    runs.mkdir(parents=True, exist_ok=True)
    return server.run(command, cwd=CONFIGS.parent, log=runs / f"{attempt}.log", kill=kill)


def checkpoint_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


def evaluations(run_dir: Path) -> list[dict]:
    """The run's recorded evaluations, without the seconds each took (a timing, not a result)."""
    return [{k: v for k, v in e.items() if k != "seconds"} for e in json.loads((run_dir / "metrics.json").read_text())]


def assert_same(expected, actual, what: str) -> None:
    """Equal nested checkpoint content: tensors bit for bit."""
    assert type(expected) is type(actual), what
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), what
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), what
        for key in expected:
            assert_same(expected[key], actual[key], f"{what}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(actual), what
        for index, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_same(a, b, f"{what}[{index}]")
    else:
        assert expected == actual, what


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(KILLS))
def test_a_run_killed_twice_and_resumed_ends_bit_for_bit_as_an_uninterrupted_one(algorithm, server, tmp_path):
    args, kills = KILLS[algorithm]
    outcome = fit(server, args, tmp_path / "uninterrupted", "only")
    assert outcome.exit_code == 0, outcome.log.read_text()[-3000:]
    for attempt, kill in enumerate(kills):
        outcome = fit(server, args, tmp_path / "crashed", f"attempt{attempt}", kill)
        assert outcome.killed, f"not killed at {kill}:\n{outcome.log.read_text()[-3000:]}"
    outcome = fit(server, args, tmp_path / "crashed", "last")
    assert outcome.exit_code == 0, outcome.log.read_text()[-3000:]
    assert "Restored all states from the checkpoint" in outcome.log.read_text()
    if "--last_checkpoint.every_n_train_steps=3" in args:  # both resumes continued a round mid-way
        resumes = [(tmp_path / "crashed" / f"{attempt}.log").read_text() for attempt in ("attempt1", "last")]
        assert "round 1: resuming after 4 of its 8 batches" in resumes[0]
        assert "round 2: resuming after 2 of its 8 batches" in resumes[1]
    assert not (tmp_path / "crashed" / "version_1").exists()  # every attempt logged on in the first one's directory

    reference, crashed = tmp_path / "uninterrupted" / "version_0", tmp_path / "crashed" / "version_0"
    expected, actual = checkpoint_state(reference), checkpoint_state(crashed)
    assert actual.keys() == expected.keys()
    assert actual["RolloutDataModule"] == expected["RolloutDataModule"]  # samples drawn: nothing counted twice
    # Weights, optimizer state and groups, LR schedule, EI/RCRL's kept samples, the ORM's first round, ...
    for key in expected.keys() - {"loops", "callbacks"}:
        assert_same(expected[key], actual[key], key)
    assert evaluations(crashed) == evaluations(reference)  # a step evaluated again after a resume counts once
    assert sorted(os.listdir(crashed / "predictions")) == sorted(os.listdir(reference / "predictions"))
    exported = load_file(crashed / "policy" / "model.safetensors")
    assert_same(load_file(reference / "policy" / "model.safetensors"), exported, "export")
    assert AutoModelForCausalLM.from_pretrained(crashed / "policy") is not None
