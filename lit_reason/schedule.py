"""The learning-rate schedule: linear warm-up, then cosine or linear decay over a window of optimizer steps
(SFT, the ORM and PPO: the run; Expert Iteration's rounds: each round). Algorithms apply it through
``torch.optim.lr_scheduler.LambdaLR``, which Lightning steps after every optimizer step and saves in
checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class LRSchedule:
    """Learning rate over a training window.

    Args:
        warmup_steps: optimizer steps of linear warm-up from 0.
        decay: shape after warm-up, down to ``min_lr_ratio`` x the optimizer's learning rate at the end of the
            window.
        min_lr_ratio: final learning rate as a fraction of the peak, from 0 to 1.
    """

    warmup_steps: int = 0
    decay: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        # Out of range, the rate would go below zero (training uphill) or grow as the window ends.
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr_schedule.min_lr_ratio must be between 0 and 1, got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"lr_schedule.warmup_steps must be at least 0, got {self.warmup_steps}")

    def factor(self, step: int, total: int) -> float:
        """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of a ``total``-step window.
        Step 0's does not depend on ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant" or total <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1 - progress
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * shape


@dataclass
class StepCounter:
    """Where optimizer steps fall: the run's length and the current round's first step and length, all in
    optimizer steps. Every LR window and round boundary is read from here.

    Attributes:
        run_steps: optimizer steps of the whole run.
        round_start: the global step the current round started at.
        round_steps: optimizer steps of the current round.
    """

    run_steps: int = 1
    round_start: int = 0
    round_steps: int = 1

    def count_round(self, trainer) -> None:
        """Count the round a Lightning ``trainer`` is in, from what stays the same all round: call it when the
        round starts and before each batch (Lightning starts no epoch for a round resumed mid-way, and a module
        fit again must not keep another fit's counts).

        The round starts at the step its data module (a ``RolloutDataModule``) made its batches at. Its length
        counts the batches the trainer runs, which the data module has cut to the fewest of any rank (a count of
        this rank's own batches would give ranks different schedules); the run's is ``max_steps`` if set, else
        ``max_epochs`` rounds of this one's length (0 for an unbounded run: a constant rate after warm-up)."""
        self.round_start = trainer.datamodule.round_first_step
        self.round_steps = max(1, -(-int(trainer.num_training_batches) // trainer.accumulate_grad_batches))
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        self.run_steps = trainer.max_steps if trainer.max_steps > 0 else max(0, max_epochs * self.round_steps)

    def in_next_round(self, step: int) -> bool:
        """Whether global optimizer step ``step`` comes after the current round's last one."""
        return step - self.round_start >= self.round_steps
