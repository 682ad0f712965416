"""Expert Iteration whose ranks make different numbers of batches each round, for a 2-process test that the
data module's cut to the fewest keeps the replicas identical (same learning rates, same weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_reason import ExpertIteration
from lit_reason.distributed import rank_and_world_size


class UnequalBatchesEI(ExpertIteration):
    """Rank r makes r extra copies of its last batch every round; saves its final weights as
    ``weights-rank{r}.pt`` in the working directory."""

    def batches_of_round(self, examples, round_index):
        batches = super().batches_of_round(examples, round_index)
        return batches + batches[-1:] * rank_and_world_size()[0]

    def on_train_end(self) -> None:
        state = {name: tensor.detach().cpu() for name, tensor in self.policy.state_dict().items()}
        torch.save(state, Path.cwd() / f"weights-rank{rank_and_world_size()[0]}.pt")
