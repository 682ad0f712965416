"""Supervised fine-tuning (SFT) on reference solutions: the baseline of Havrilla et al. 2024 and the warm
start of every RL algorithm.

The loss is the mean next-token negative log-likelihood of the reference solution and its EOS given the
prompt (prompt tokens are not trained on). An epoch is one round of the RolloutDataModule, so
``questions_per_round`` sets how often validation runs.
"""

from __future__ import annotations

import random

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_reason.algorithms.base import ReasoningModule, TokenBatch, fits_context, make_token_batch
from lit_reason.data import TrainData
from lit_reason.tasks import Problem


class SFT(ReasoningModule):
    """Supervised fine-tuning on the task's reference solutions.

    Args:
        batch_size: sequences per optimizer step on each rank.
        seed: shuffles the examples of each round.
        **kwargs: the shared options of ``ReasoningModule`` (policy, optimizer, lr_schedule, evaluation,
            text_samples). The LR schedule's window is the whole run (``max_steps``, else ``max_epochs`` x
            batches per epoch).
    """

    def __init__(self, batch_size: int = 32, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.seed = seed

    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        examples = [self.encode_example(p, self.task.target(p)) for p in problems]
        batches = batch_examples(
            examples, self.batch_size, self.max_length, self.tokenizer.pad_token_id, (self.seed, round_index)
        )
        return TrainData(batches, stats={"examples": float(len(examples))})

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        lr = self.set_learning_rate(*self.lr_window())
        loss, tokens = self.token_batch_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/lr", lr, batch_size=len(batch))
        self.log("train/target_tokens", tokens.float(), batch_size=len(batch))
        return loss

    def lr_window(self) -> tuple[int, int]:
        """(optimizer step within the LR schedule's window, the window's length): the whole run."""
        trainer = self.trainer
        if trainer.max_steps > 0:
            return self.global_step, trainer.max_steps
        return self.global_step, trainer.max_epochs * -(
            -trainer.num_training_batches // trainer.accumulate_grad_batches
        )


def batch_examples(
    examples: list[tuple[list[int], list[int]]], batch_size: int, max_length: int, pad_token_id: int, seed
) -> list[TokenBatch]:
    """Shuffle (prompt, target) id pairs with ``seed`` and cut them into ``TokenBatch``es; examples longer
    than ``max_length`` are dropped with a warning."""
    kept = [e for e in examples if fits_context(e, max_length)]
    if len(kept) < len(examples):
        rank_zero_warn(
            f"dropped {len(examples) - len(kept)} of {len(examples)} examples longer than {max_length} tokens"
        )
    random.Random(repr(seed)).shuffle(kept)
    return [make_token_batch(kept[i : i + batch_size], pad_token_id) for i in range(0, len(kept), batch_size)]
