"""lit-reason: teach language models to reason with reinforcement learning, on PyTorch Lightning."""

__version__ = "0.1.0"

from lit_reason.algorithms import (
    PPO,
    SFT,
    ExpertIteration,
    LRSchedule,
    OutcomeRewardModel,
    ReasoningModule,
    ReturnConditionedRL,
)
from lit_reason.data import RolloutDataModule, TrainData
from lit_reason.policy import PolicySpec
from lit_reason.sampling import SampleBatch, SamplingConfig

__all__ = [
    "SFT",
    "ExpertIteration",
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
