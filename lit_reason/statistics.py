"""Statistics of paired evaluations: two policies answering the same questions."""

from __future__ import annotations

import torch


def paired_bootstrap(
    baseline: torch.Tensor, candidate: torch.Tensor, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``candidate - baseline`` and its 2.5% / 97.5% paired-bootstrap quantiles.

    Both are (Q,) per-question outcomes of the same Q questions (0/1 correctness, or a share of correct
    samples); each resample draws Q questions with replacement and averages their differences, so the
    interval leaves out the variance between questions that both policies share.
    """
    if baseline.shape != candidate.shape or baseline.dim() != 1 or len(baseline) == 0:
        raise ValueError(
            f"need two (Q,) outcome vectors of one length, got {tuple(baseline.shape)} and {tuple(candidate.shape)}"
        )
    difference = candidate.double() - baseline.double()
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(difference), (resamples, len(difference)), generator=generator)
    means = difference[indices].mean(-1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return difference.mean().item(), low, high


# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (more: the normal's 1.96 is within 5%).
T_QUANTILE_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of one number measured with several seeds and its 95% t-interval (the mean twice for one seed)."""
    if not values:
        raise ValueError("need at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    spread = (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5
    half = (T_QUANTILE_95[n - 2] if n - 1 <= len(T_QUANTILE_95) else 1.96) * spread
    return mean, mean - half, mean + half
