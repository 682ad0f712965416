"""One LightningModule per algorithm, all on ``ReasoningModule``."""

from lit_reason.algorithms.base import LRSchedule, ReasoningModule, TokenBatch
from lit_reason.algorithms.expert_iteration import ExpertIteration
from lit_reason.algorithms.sft import SFT

__all__ = ["SFT", "ExpertIteration", "LRSchedule", "ReasoningModule", "TokenBatch"]
