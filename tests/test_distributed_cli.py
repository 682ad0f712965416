"""The CLI configs under DDP and FSDP2 (ModelParallelStrategy) with 2 CPU processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoModelForCausalLM

from tests.conftest import SFT_TASK

pytestmark = pytest.mark.slow  # several processes each

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STRATEGIES = {
    "ddp": ["--trainer.strategy=ddp"],
    "fsdp2": [
        "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size=2",
        "--trainer.strategy.tensor_parallel_size=1",
    ],
}


LORA = [
    "--model.init_args.policy.peft.r=4",
    "--model.init_args.policy.peft.lora_alpha=8",
    "--model.init_args.policy.peft.target_modules=[q_proj,v_proj]",
]

DIGIT_REWARD = [
    "--model.init_args.reward.final=reward_fn",
    "--model.init_args.reward.reward_fn.path=tests.helpers.rewards.contains_a_digit",
]


def run_cli(
    config: str, strategy: str, policy: str, tmp_path: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "lit_reason",
        "fit",
        "--config",
        str(CONFIGS / config),
        f"--model.init_args.policy.name_or_path={policy}",
        "--model.init_args.evaluation.num_samples=2",
        "--model.init_args.evaluation.max_new_tokens=48",
        "--data.validation_questions=5",
        "--trainer.devices=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *STRATEGIES[strategy],
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CONFIGS.parent)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0 or not check, result.stdout[-4000:] + result.stderr[-4000:]
    return result


# FSDP2 only: Expert Iteration (and SFT's training, which it inherits) runs under DDP in the unequal-batch test.
def test_expert_iteration_on_two_processes(tmp_path, sft_policy_dir):
    task = [f"--data.task.init_args.{key}={value}" for key, value in SFT_TASK.items()]
    run_cli(
        "ei.yaml",
        "fsdp2",
        str(sft_policy_dir),
        tmp_path,
        *task,
        "--model.init_args.batch_size=4",
        "--data.questions_per_round=16",
        "--trainer.max_epochs=2",
        "--model.init_args.rollout.num_samples=4",
        "--model.init_args.rollout.max_new_tokens=48",
        "--model.init_args.reference_solutions=8",
    )
    (policy,) = tmp_path.glob("**/policy")
    model = AutoModelForCausalLM.from_pretrained(policy)  # the whole model, gathered from both shards
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(sft_policy_dir).parameters()
    )
    # A sharded checkpoint is a directory; what is not a tensor is in its meta.pt.
    checkpoint = torch.load(next(tmp_path.glob("**/last.ckpt")) / "meta.pt", weights_only=True)
    state = checkpoint["RolloutDataModule"]
    assert (state["samples_drawn"], state["rounds_built"]) == (2 * 16 * 4, 2) and state["round_batches"] > 0
    # Kept data was gathered from both ranks before rank 0 saved it: rank 1's questions are in it.
    from lit_reason import RolloutDataModule
    from lit_reason.tasks import Arithmetic

    data = RolloutDataModule(task=Arithmetic(**SFT_TASK), questions_per_round=16)
    rank_one = {p.id for r in range(2) for p in data.round_problems(r)[1::2]}
    kept_ids = {problem_id for problem_id, _, _ in checkpoint["kept_samples"]}
    assert kept_ids & rank_one and kept_ids - rank_one


def test_ranks_with_unequal_batch_counts_end_with_identical_weights(tmp_path):
    """Rank 1 makes one batch more per round than rank 0; the data module cuts it, and the learning-rate
    schedule must follow the cut (not each rank's own count), or the replicas drift apart."""
    config = yaml.safe_load((CONFIGS / "ei.yaml").read_text())
    config["model"]["class_path"] = "tests.helpers.unequal_rounds.UnequalBatchesEI"
    (tmp_path / "unequal.yaml").write_text(yaml.safe_dump(config))
    result = run_cli(
        str(tmp_path / "unequal.yaml"),
        "ddp",
        "micro",
        tmp_path,
        "--model.init_args.batch_size=4",
        "--model.init_args.reference_solutions=24",
        "--model.init_args.rollout.num_samples=2",
        "--model.init_args.rollout.max_new_tokens=8",
        "--model.init_args.lr_schedule.warmup_steps=0",
        "--data.questions_per_round=8",
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=0",
    )
    rank0, rank1 = (torch.load(tmp_path / f"weights-rank{rank}.pt", weights_only=True) for rank in range(2))
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    # Said once, by rank 0, though only rank 1 dropped a batch (rank 0 counted its own none and said nothing).
    assert "round 0: the ranks made" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("config", "strategy", "options"),
    [
        # The policy a LoRA adapter (its reference the base model, the adapter disabled), the critic a model,
        # or a second adapter on the same sharded network (switched per forward; the head sharded too).
        ("ppo.yaml", "ddp", ["--model.init_args.critic.kind=separate", *LORA]),
        # A reward that varies between a random policy's samples, so that both adapters must move.
        ("ppo.yaml", "fsdp2", ["--model.init_args.critic.kind=lora", *LORA, *DIGIT_REWARD]),
        # Each rank's rollout holds whole groups (a question's samples on one rank): the estimator checks it.
        # The policy's prompt-sharing forward (two calls, one backward) under FSDP2 (PPO's lora critic adds a third).
        ("grpo.yaml", "fsdp2", []),
        # A separate critic, a value model sharded layer by layer (its trunk's decoder layers, then the whole).
        ("ppo.yaml", "fsdp2", ["--model.init_args.critic.kind=separate"]),
    ],
    ids=["ppo-ddp-lora-separate", "ppo-fsdp2-lora-lora", "grpo-fsdp2", "ppo-fsdp2-separate"],
)
def test_policy_gradient_on_two_processes(config, strategy, options, tmp_path):
    run_cli(
        config,
        strategy,
        "micro",
        tmp_path,
        "--data.questions_per_round=8",
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=1",
        "--model.init_args.rollout.num_samples=2",
        "--model.init_args.rollout.max_new_tokens=12",
        "--model.init_args.minibatch_size=4",
        *options,
    )
    (policy,) = tmp_path.glob("**/policy")
    assert (policy / "config.json").is_file()
    if LORA[0] in options:  # the adapter merged into a plain model
        assert not any("lora" in name for name, _ in AutoModelForCausalLM.from_pretrained(policy).named_parameters())
    if "--model.init_args.critic.kind=lora" in options:  # both adapters trained (LoRA's B starts at zero)
        whole = tmp_path / "whole.pt"
        dcp_to_torch_save(next(tmp_path.glob("**/last.ckpt")), whole)
        state = torch.load(whole, weights_only=True)["state_dict"]
        for adapter in ("default", "critic"):
            trained = [state[k] for k in state if f"lora_B.{adapter}." in k]
            assert trained and all(value.abs().sum() > 0 for value in trained), adapter


def test_model_parallel_strategy_with_its_default_sizes_is_refused(tmp_path):
    """Lightning's default sizes ("auto") make the devices of a node a tensor-parallel dimension, which lit-reason
    does not apply: each rank trained its own copy of the model, never synchronised, and nothing said so."""
    strategy = '--trainer.strategy={"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}'
    result = run_cli("sft.yaml", "ddp", "micro", tmp_path, strategy, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert "ModelParallelStrategy's tensor_parallel_size is 2" in output, output[-4000:]


def test_a_rank_that_fails_stops_every_rank_and_the_output_names_it(tmp_path):
    """Rank 0 (the process Lightning's launcher started from, which no launcher watches) raises while rank 1
    goes on into a collective: both stop, and the output says which rank failed and why."""
    started = time.monotonic()
    result = run_cli(
        "ei.yaml",
        "ddp",
        "micro",
        tmp_path,
        "--data.task=tests.helpers.failing_task.FailsOnOneRank",
        "--data.task.init_args.failing_rank=0",
        "--data.questions_per_round=8",
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and time.monotonic() - started < 120, output[-4000:]
    assert "[lit-reason] rank 0 of 2 failed: ValueError: problem 0 cannot be prompted" in output, output[-4000:]
    assert "[lit-reason] rank 1 stops because rank 0 of 2 failed: ValueError" in output, output[-4000:]
