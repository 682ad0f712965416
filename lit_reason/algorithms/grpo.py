"""Critic-free policy gradient: GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300), Dr. GRPO (Liu et
al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783), RLOO (Ahmadian et al. 2024, "Back to
Basics", arXiv 2402.14740) and REINFORCE++ (Hu 2025, arXiv 2501.03262): the baselines reasoning-RL work
compares against, beside the paper's algorithms.

Rounds, rewards and the clipped update are ``PolicyGradient``'s, as PPO's, but no critic is built: a
response's advantage is its reward against its question's other samples (``grpo``: standardised by the
group's std; ``dr_grpo``: centred only; ``rloo``: minus the mean of the others), given to every one of its
tokens, or (``reinforce_pp``) each token's reward-to-go normalised over the whole batch of all ranks. A
question's K samples are always on one rank, so group statistics need no communication.

The KL penalty to the reference is a loss term by default (``reward.kl_in: loss``, GRPO's k3), or a reward
term as in PPO, RLOO and REINFORCE++ (``reward.kl_in: reward``, k1: a group estimator sums it into the
response's reward). ``grpo`` refuses the reward term: its division by the group's spread would scale the KL's
noise up to advantages of about 1 where a question's samples all score the same. Each method's loss
aggregation is an option: Dr. GRPO is ``estimator: dr_grpo`` with ``loss.aggregation: max_length_mean``
(token sums over a constant instead of each response's length), and so is RLOO's whole-response log-likelihood
(a sum over its tokens). ``reinforce_pp`` is REINFORCE++ as its paper defines it, whose baseline is the
batch's whitening alone; the later "REINFORCE++-baseline" (the group's mean subtracted first, for K > 1) is
not built.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_reason.algorithms.policy_gradient import PolicyGradient
from lit_reason.rewards import RewardConfig
from lit_reason.rl.advantages import CriticFreeEstimator, critic_free_advantages
from lit_reason.rl.losses import PPOLoss
from lit_reason.sampling import SamplingConfig


class GRPO(PolicyGradient):
    """GRPO and the critic-free estimators: advantages from each question's group of samples.

    Args:
        estimator: ``grpo`` (group-standardised), ``dr_grpo`` (group-centred), ``rloo`` (leave-one-out) or
            ``reinforce_pp`` (token rewards-to-go, batch-normalised).
        rollout: sampling of training responses; ``num_samples`` is the group size K (at least 2 for the
            group estimators).
        loss: the clipped policy loss and its aggregation (``vf_coef`` and ``value_clip`` do not apply: no
            critic).
        reward: as PPO's; by default the KL penalty is a k3 loss term.
        **kwargs: ``PolicyGradient``'s other options (ppo_epochs, minibatch_size, max_grad_norm) and the shared
            ones (policy, optimizer, lr_schedule, evaluation, text_samples, orm, seed).
    """

    def __init__(
        self,
        estimator: CriticFreeEstimator = "grpo",
        rollout: SamplingConfig = SamplingConfig(num_samples=8, temperature=1.0, max_new_tokens=128),
        loss: PPOLoss = PPOLoss(aggregation="sequence_mean"),
        reward: RewardConfig = RewardConfig(kl_coef=0.04, kl_estimator="k3", kl_in="loss"),
        **kwargs: Any,
    ) -> None:
        if estimator != "reinforce_pp" and rollout.num_samples < 2:
            raise ValueError(f"estimator {estimator} compares a question's samples: rollout.num_samples must be >= 2")
        if estimator == "grpo" and reward.reward_kl_coef:
            raise ValueError(
                "estimator grpo divides each question's total rewards by their spread, so a KL term in the reward "
                "would be too: where a question's samples are all right or all wrong, the KL's noise alone would "
                "become advantages of about +-1. Use reward.kl_in: loss (GRPO's), or estimator dr_grpo, rloo or "
                "reinforce_pp"
            )
        super().__init__(rollout=rollout, loss=loss, reward=reward, **kwargs)
        self.estimator = estimator

    def advantages(
        self, rewards: torch.Tensor, values: None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, None, dict[str, float]]:
        return critic_free_advantages(rewards, mask, self.rollout.num_samples, self.estimator, self.device), None, {}
