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
