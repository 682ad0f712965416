"""Advantages and value targets: GAE (with a critic), the critic-free estimators (GRPO, Dr. GRPO, RLOO,
REINFORCE++), and statistics over all ranks' rollouts (whitening, explained variance). Tensors are (B, T) over
a ``SampleBatch``'s columns, masked to the response tokens, unless a docstring says otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lit_reason.distributed import all_reduce


@dataclass
class GAE:
    """Advantages by generalised advantage estimation, optionally whitened over all ranks' rollouts.

    Args:
        gamma: discount.
        lam: GAE lambda.
        whiten: normalise advantages to mean 0, variance 1 over the whole rollout of all ranks.
    """

    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True

    def __post_init__(self) -> None:
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"GAE needs 0 <= gamma <= 1 and 0 <= lam <= 1, got gamma {self.gamma}, lam {self.lam}")

    def __call__(
        self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) rewards, values, response mask -> advantages and returns (B, T); ``device``: where the
        whitening's statistics are reduced (the module's)."""
        advantages, returns = gae(rewards, values, mask, self.gamma, self.lam)
        return (whiten(advantages, mask, device=device) if self.whiten else advantages), returns


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's contiguous run of response tokens.

    The token after a row's last response token is terminal (value 0).

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) critic values of the state before each token.
        mask: (B, T) bool, response tokens.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        advantages (B, T) and returns = advantages + values (B, T), both 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    columns = values.shape[1]
    for t in reversed(range(columns)):
        next_mask = mask[:, t + 1] if t + 1 < columns else torch.zeros_like(running)
        next_value = values[:, t + 1] * next_mask if t + 1 < columns else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def global_mean_var(
    values: torch.Tensor, mask: torch.Tensor, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of the masked entries of ``values`` on all ranks together.

    (B, T), (B, T) -> (scalar, scalar); one all-reduce of (sum, sum of squares, count) when distributed, on
    ``device`` (the module's; default: that of ``values``). The sums are float64: the variance is their
    difference, which float32 loses where the spread is small against the mean.
    """
    wide, mask = values.double(), mask.double()
    stats = torch.stack([(wide * mask).sum(), (wide**2 * mask).sum(), mask.sum()])
    total, squares, count = all_reduce(stats, device or values.device)
    mean = total / count.clamp(min=1)
    variance = (squares / count.clamp(min=1) - mean**2) * count / (count - 1).clamp(min=1)
    return mean.to(values.dtype), variance.clamp(min=0).to(values.dtype)


def whiten(
    values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, device: torch.device | None = None
) -> torch.Tensor:
    """Shift and scale the masked entries to mean 0 and variance 1 over all ranks; 0 elsewhere. (B, T).
    ``device``: where the statistics are reduced (see ``global_mean_var``)."""
    mean, variance = global_mean_var(values, mask, device)
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, device: torch.device | None = None
) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked entries (all ranks): 1 is a perfect critic.
    ``device``: where the statistics are reduced (see ``global_mean_var``)."""
    _, residual = global_mean_var(returns - values, mask, device)
    _, total = global_mean_var(returns, mask, device)
    return float(1 - residual / total) if total > 0 else float("nan")


def uniform_group_fraction(scores: torch.Tensor, groups: torch.Tensor) -> float:
    """The share of groups (a question's samples) whose scores are all equal: under a group estimator they teach
    nothing. (R,) scores, (R,) group index of each -> float."""
    count = int(groups.max()) + 1
    lowest = torch.full((count,), float("inf"), dtype=scores.dtype).scatter_reduce(0, groups, scores, "amin")
    highest = torch.full((count,), float("-inf"), dtype=scores.dtype).scatter_reduce(0, groups, scores, "amax")
    present = lowest.isfinite()
    return (lowest[present] == highest[present]).float().mean().item()


CriticFreeEstimator = Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"]


def group_advantages(scores: torch.Tensor, estimator: CriticFreeEstimator, eps: float = 1e-4) -> torch.Tensor:
    """Each response's advantage against the other responses to its question. (Q, K) -> (Q, K).

    ``grpo`` (Shao et al. 2024): ``(s - mean) / (std + eps)``, std over the K samples (unbiased);
    ``dr_grpo`` (Liu et al. 2025): ``s - mean``, no division by the std; ``rloo`` (Ahmadian et al. 2024):
    ``s`` minus the mean of the *other* K - 1 samples, ``K / (K - 1) * (s - mean)``. A question whose samples
    all score the same gives zeros (no NaN, also for K = 1).
    """
    k = scores.shape[-1]
    centred = scores - scores.mean(-1, keepdim=True)
    if estimator == "dr_grpo":
        return centred
    if estimator == "rloo":
        return centred * k / (k - 1) if k > 1 else torch.zeros_like(scores)
    if estimator == "grpo":
        std = scores.std(-1, keepdim=True) if k > 1 else torch.zeros_like(scores[..., :1])
        return centred / (std + eps)
    raise ValueError(f"{estimator!r} is not a group estimator")


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted sum of each token's reward and all later ones in its response. (B, T) -> (B, T), 0 off the
    mask."""
    masked = rewards * mask
    return (masked.flip(-1).cumsum(-1).flip(-1)) * mask


def critic_free_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    estimator: CriticFreeEstimator,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Per-token advantages without a critic, from per-token rewards of a prompt-major rollout.

    Group estimators score each response by its total reward and give every token of it the response's
    ``group_advantages`` over the ``group_size`` consecutive rows of one question (all on one rank).
    ``reinforce_pp`` (REINFORCE++, Hu 2025): each token's reward-to-go, whitened over every response token of
    all ranks (``device``: where those statistics are reduced).

    Args:
        rewards: (B, T) per-token rewards (final, dense and any KL term), B = questions x group_size.
        mask: (B, T) bool, response tokens.
        group_size: K, samples per question.
        estimator: ``grpo``, ``dr_grpo``, ``rloo`` or ``reinforce_pp``.

    Returns:
        (B, T) advantages, 0 off the mask.
    """
    if estimator == "reinforce_pp":
        return whiten(returns_to_go(rewards, mask), mask, device=device)
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} responses are not whole groups of {group_size} (a question's samples)")
    scores = (rewards * mask).sum(-1).view(-1, group_size)
    return group_advantages(scores, estimator).view(-1, 1) * mask
