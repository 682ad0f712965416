"""lit-reason: teach language models to reason with reinforcement learning, on PyTorch Lightning."""

from lit_reason.algorithms import (
    GRPO,
    PPO,
    SFT,
    ExpertIteration,
    OutcomeRewardModel,
    ReasoningModule,
    ReturnConditionedRL,
)
from lit_reason.data import RolloutDataModule, TrainData
from lit_reason.policy import PolicySpec
from lit_reason.sampling import SampleBatch, SamplingConfig
from lit_reason.schedule import LRSchedule
from lit_reason.version import __version__

__all__ = [
    "__version__",
    "SFT",
    "ExpertIteration",
    "GRPO",
    "OutcomeRewardModel",
    "PPO",
    "ReturnConditionedRL",
    "LRSchedule",
    "PolicySpec",
    "ReasoningModule",
    "RolloutDataModule",
    "SampleBatch",
    "SamplingConfig",
    "TrainData",
]
