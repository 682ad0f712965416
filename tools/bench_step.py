"""Throughput of one full RL step: completions per second of GRPO, PPO and Expert Iteration on one policy.

A step is a round: sample K responses for each of Q training questions, score them (grading; PPO: policy,
reference and critic forwards; GRPO: policy and reference, neither with one update pass and no KL term), and
update the policy once over them (one pass, one optimizer step per minibatch of all Q x K completions). Every
algorithm gets the same policy, questions and sampling settings, in one process, one after another. Each runs
``--rounds`` rounds after a warm-up round; the median round is reported with where its time went:

- sampling: the sampler (``generate``);
- scoring: the rest of making the round's data (log-probs, values, rewards, advantages);
- update: the optimizer steps;
- overhead: the round's remaining time (Lightning's loops and hooks).

    python tools/bench_step.py --policy study/paper/runs/warm_start/seed0/policy
    python tools/bench_step.py --policy ... --trl     # also TRL's GRPOTrainer (installed separately)

With ``--trl``, TRL's ``GRPOTrainer`` runs the same step on the same policy (transformers' ``generate``, no
vLLM, beta 0, fp32, one update pass: ``num_iterations=1`` and ``steps_per_generation=1``) and is reported the
same way; TRL is not a dependency of lit-reason (install it in its own environment, see the README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import torch
from lightning import Callback, Trainer, seed_everything

from lit_reason import GRPO, PPO, ExpertIteration, PolicySpec, RolloutDataModule
from lit_reason.cli import TRAINER_DEFAULTS
from lit_reason.rewards import RewardConfig
from lit_reason.rl.losses import PPOLoss
from lit_reason.sampling import Decoding, SamplingConfig
from lit_reason.tasks import Arithmetic


def now() -> float:
    """The time once the accelerator's queued work is done: work still queued at a clock read would be charged
    to whatever part of the round ran next."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class RoundClock(Callback):
    """Seconds of each round: in all, making its data, sampling within that, and its optimizer steps."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self._step_started = 0.0

    def wrap(self, owner: Any, name: str, bucket: str) -> None:
        """Time every call of ``owner.name`` into ``bucket`` of the current round."""
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            started = now()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[bucket] += now() - started

        setattr(owner, name, timed)

    def round_started(self) -> None:
        self.current = defaultdict(float, started=now())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_started = now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.current["update"] += now() - self._step_started

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        total = now() - self.current.pop("started")
        data = self.current.pop("data")
        sampling = self.current.pop("sampling")
        update = self.current.pop("update", 0.0)
        samples = trainer.datamodule.round_data.samples_drawn
        self.rounds.append(
            {
                "completions_per_s": samples / total,
                "seconds": total,
                "sampling": sampling / total,
                "scoring": (data - sampling) / total,
                "update": update / total,
                "overhead": (total - data - update) / total,
            }
        )


def algorithms(policy: str, rollout: SamplingConfig, questions: int) -> dict[str, Callable[[], Any]]:
    """Each algorithm's module for one update pass over a round of ``questions`` x K completions."""
    completions = questions * rollout.num_samples
    shared = dict(policy=PolicySpec(name_or_path=policy), evaluation=rollout, text_samples=0)
    no_kl = RewardConfig(kl_coef=0.0)
    return {
        "grpo": lambda: GRPO(rollout=rollout, ppo_epochs=1, minibatch_size=completions, reward=no_kl, **shared),
        "ppo": lambda: PPO(
            rollout=rollout, ppo_epochs=1, minibatch_size=completions, loss=PPOLoss(), reward=no_kl, **shared
        ),
        "expert_iteration": lambda: ExpertIteration(
            rollout=rollout, epochs_per_round=1, restart_from="previous", batch_size=completions, **shared
        ),
    }


def bench_lit_reason(name: str, build: Callable[[], Any], questions: int, rounds: int, device: str) -> list[dict]:
    seed_everything(0)
    module = build()
    clock = RoundClock()
    clock.wrap(module, "generate", "sampling")
    clock.wrap(module, "make_train_data", "data")
    data = RolloutDataModule(task=Arithmetic(), questions_per_round=questions)
    original = data.train_dataloader

    def train_dataloader():
        clock.round_started()
        return original()

    data.train_dataloader = train_dataloader
    settings = {**TRAINER_DEFAULTS, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = Trainer(
        **settings,
        accelerator=device,
        devices=1,
        max_epochs=rounds + 1,
        limit_val_batches=0,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=data)
    return clock.rounds[1:]  # the first round warms up


def bench_trl(policy: str, rollout: SamplingConfig, questions: int, rounds: int, device: str) -> list[dict]:
    """TRL's GRPOTrainer on the same policy, questions and settings (imported here: not a dependency)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    task = Arithmetic()
    problems = {p.question: p for p in task.problems("train")}
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": task.prompt(p), "question": p.question} for p in problems.values()])

    def correctness(prompts, completions, question, **kwargs) -> list[float]:
        return [float(problems[q].is_correct(c)) for q, c in zip(question, completions, strict=True)]

    clock = RoundClock()

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.round_started()

        def on_step_end(self, args, state, control, **kwargs):
            total = now() - clock.current.pop("started")
            data, sampling = clock.current["data"], clock.current["sampling"]
            clock.rounds.append(
                {
                    "completions_per_s": completions / total,
                    "seconds": total,
                    "sampling": sampling / total,
                    "scoring": (data - sampling) / total,
                    "update": (total - data) / total,  # loss, backward and optimizer step
                }
            )

    completions = questions * rollout.num_samples
    config = GRPOConfig(
        output_dir="/tmp/bench_step_trl",
        per_device_train_batch_size=completions,
        num_generations=rollout.num_samples,
        max_completion_length=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        num_iterations=1,
        steps_per_generation=1,
        max_steps=rounds + 1,
        learning_rate=1e-6,
        use_cpu=device == "cpu",
        bf16=False,
        fp16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correctness,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    clock.wrap(trainer, "_generate", "sampling")
    clock.wrap(trainer, "_generate_and_score_completions", "data")
    trainer.train()
    return clock.rounds[1:]  # the first step warms up


def median_row(rows: list[dict]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows if key in row) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="an exported policy directory (or a tiny preset)")
    parser.add_argument("--questions", type=int, default=8, help="training questions per step")
    parser.add_argument("--samples", type=int, default=8, help="completions per question (K)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--only", default="grpo,ppo,expert_iteration", help="comma-separated algorithms")
    parser.add_argument("--decoding", default="dynamic", choices=get_args(Decoding), help="the sampler's decoding")
    parser.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer (needs trl installed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    completions = args.questions * args.samples
    rollout = SamplingConfig(
        num_samples=args.samples,
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=args.max_new_tokens,
        batch_size=completions,
        decoding=args.decoding,
    )
    results = {}
    builders = algorithms(args.policy, rollout, args.questions)
    for name in args.only.split(","):
        results[name] = median_row(bench_lit_reason(name, builders[name], args.questions, args.rounds, args.device))
    if args.trl:
        device = "cuda" if args.device == "gpu" else "cpu"
        results["trl_grpo"] = median_row(bench_trl(args.policy, rollout, args.questions, args.rounds, device))
    baseline = results.get("trl_grpo", results[next(iter(results))])
    print(
        f"{completions} completions a step ({args.questions} questions x {args.samples}), T={args.temperature}, "
        f"at most {args.max_new_tokens} new tokens, median of {args.rounds} steps after a warm-up"
    )
    print(f"{'':18} {'completions/s':>14} {'ratio':>6} {'sampling':>9} {'scoring':>8} {'update':>7} {'overhead':>9}")
    for name, row in results.items():
        shares = [
            f"{row[key]:>{width}.0%}" if key in row else f"{'-':>{width}}"
            for key, width in (("sampling", 9), ("scoring", 8), ("update", 7), ("overhead", 9))
        ]
        ratio = row["completions_per_s"] / baseline["completions_per_s"]
        print(f"{name:18} {row['completions_per_s']:>14.1f} {ratio:>5.2f}x " + " ".join(shares))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
