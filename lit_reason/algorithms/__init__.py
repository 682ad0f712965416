"""One LightningModule per algorithm, all on ``ReasoningModule``."""

from lit_reason.algorithms.base import ReasoningModule
from lit_reason.algorithms.expert_iteration import ExpertIteration
from lit_reason.algorithms.grpo import GRPO
from lit_reason.algorithms.orm import OutcomeRewardModel
from lit_reason.algorithms.ppo import PPO
from lit_reason.algorithms.rcrl import ReturnConditionedRL
from lit_reason.algorithms.sft import SFT

__all__ = ["SFT", "ExpertIteration", "GRPO", "OutcomeRewardModel", "PPO", "ReturnConditionedRL", "ReasoningModule"]
