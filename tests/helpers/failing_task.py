"""A task that fails on one rank of a distributed run, as a bad problem or a context-length error would."""

from __future__ import annotations

import torch.distributed as dist

from lit_reason.tasks import Arithmetic, Problem


class FailsOnOneRank(Arithmetic):
    """The built-in task, except that prompting a problem on rank ``failing_rank`` raises ``ValueError``."""

    def __init__(self, failing_rank: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failing_rank = failing_rank

    def prompt(self, problem: Problem, tokenizer=None) -> str:
        if dist.is_initialized() and dist.get_rank() == self.failing_rank:
            raise ValueError(f"problem {problem.id} cannot be prompted (a test's failure)")
        return super().prompt(problem, tokenizer)
