"""Advantages and value targets: GAE, and statistics over all ranks' rollouts (whitening, explained
variance). Tensors are (B, T) over a ``SampleBatch``'s columns, masked to the response tokens."""

from __future__ import annotations

from dataclasses import dataclass

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
    ``device`` (the module's; default: that of ``values``).
    """
    mask = mask.to(values.dtype)
    stats = torch.stack([(values * mask).sum(), (values**2 * mask).sum(), mask.sum()]).double()
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
