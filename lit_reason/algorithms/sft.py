"""Supervised fine-tuning (SFT) on reference solutions: the baseline of Havrilla et al. 2024 and the warm
start of every RL algorithm.

The loss is the mean next-token negative log-likelihood of the reference solution and its EOS given the
prompt (prompt tokens are not trained on). An epoch is one round of the RolloutDataModule, so
``questions_per_round`` sets how often validation runs.
"""

from __future__ import annotations

import torch

from lit_reason.algorithms.base import ReasoningModule
from lit_reason.batches import TokenBatch, batch_examples
from lit_reason.data import TrainData
from lit_reason.distributed import token_mean_over_ranks
from lit_reason.tasks import Problem
from lit_reason.tensors import next_token_nll, position_ids_from_mask


class SFT(ReasoningModule):
    """Supervised fine-tuning on the task's reference solutions.

    Args:
        batch_size: sequences per optimizer step on each rank.
        **kwargs: the shared options of ``ReasoningModule`` (policy, optimizer, lr_schedule, evaluation,
            text_samples, seed: shuffles the examples of each round). The LR schedule's window is the whole run
            (``max_steps``, else ``max_epochs`` x batches per epoch).
    """

    def __init__(self, batch_size: int = 32, **kwargs) -> None:
        if batch_size < 1:
            raise ValueError(f"model.init_args.batch_size must be at least 1, got {batch_size}")
        super().__init__(**kwargs)
        self.batch_size = batch_size

    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        examples = [self.encode_example(p, self.task.target(p)) for p in problems]
        batches = batch_examples(
            examples, self.batch_size, self.max_length, self.tokenizer.pad_token_id, (self.seed, round_index)
        )
        return TrainData(batches, stats={"examples": float(len(examples))})

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        loss, tokens = self.token_batch_loss(batch)
        # Averaged over ranks, each rank's share of the step's token mean is that mean.
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        self.log("train/target_tokens", tokens.float(), batch_size=len(batch))
        return loss

    def token_batch_loss(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token NLL of this rank's batch over the target tokens of every rank's batch (x world size:
        every target token of the step weighs the same once DDP / FSDP average the gradients), and this
        rank's number of target tokens. Under gradient accumulation each micro-batch's mean weighs the same."""
        position_ids = position_ids_from_mask(batch.attention_mask)
        logits = self.policy(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids
        ).logits
        total, count = next_token_nll(logits, batch.input_ids, batch.loss_mask)
        return token_mean_over_ranks(total, count, self.device), count
