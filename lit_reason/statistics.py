"""Statistics of paired evaluations: two policies answering the same questions."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

Z_95 = 1.959964  # the standard normal's 97.5% quantile


def normal_quantile(confidence: float) -> float:
    """The standard normal's quantile that bounds a two-sided interval of ``confidence`` (1.96 at 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def paired_interval(
    baseline: torch.Tensor, candidate: torch.Tensor, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``candidate - baseline`` over the questions and its interval of ``confidence`` (95% by default).

    Both are per-question outcomes of the same Q questions, (Q,) or (seeds, Q) (one row per training seed; the two
    sides may have different numbers of seeds). Near 100% accuracy only a few questions differ, and there the
    percentile bootstrap is too narrow: 4 better against 0 worse out of 400 gives [+0.0025, +0.02] where McNemar's
    exact test has p = 0.125. So 0/1 outcomes (to within 1e-6) take Newcombe's score interval for paired proportions
    (``newcombe_from_cells``): of one seed a side, alone; of several, over the seed pairs' mean 2x2 table, and the
    interval spans it and the two-level bootstrap's (``paired_bootstrap``), which alone holds the spread between
    seeds. Other outcomes (shares of correct samples) take the bootstrap.
    """
    baseline, candidate = _per_seed(baseline), _per_seed(candidate)
    if baseline.shape[-1] != candidate.shape[-1] or baseline.shape[-1] == 0:
        raise ValueError(
            f"need outcomes of the same Q > 0 questions, got {baseline.shape[-1]} and {candidate.shape[-1]}"
        )
    rounded = baseline.round(), candidate.round()
    binary = all(
        bool(((side - whole).abs() < 1e-6).all() and ((whole == 0) | (whole == 1)).all())
        for side, whole in zip((baseline, candidate), rounded, strict=True)
    )
    if not binary:
        return paired_bootstrap(baseline, candidate, resamples, seed, confidence)
    baseline, candidate = rounded[0].bool()[:, None], rounded[1].bool()[None, :]  # (S_b, 1, Q), (1, S_c, Q)
    # The 2x2 table of every (baseline seed, candidate seed) pair, averaged.
    both, candidate_only, baseline_only = (
        cell.sum(-1).double().mean().item()
        for cell in (baseline & candidate, candidate & ~baseline, baseline & ~candidate)
    )
    mean, low, high = newcombe_from_cells(both, candidate_only, baseline_only, baseline.shape[-1], confidence)
    if baseline.shape[0] == candidate.shape[1] == 1:
        return mean, low, high
    _, bootstrap_low, bootstrap_high = paired_bootstrap(rounded[0], rounded[1], resamples, seed, confidence)
    return mean, min(low, bootstrap_low), max(high, bootstrap_high)


def newcombe_from_cells(
    both: float, candidate_only: float, baseline_only: float, n: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Newcombe's hybrid score interval (1998, method 10: each rate's Wilson interval, combined with the pairs'
    correlation, continuity-corrected as in Altman et al.'s *Statistics with Confidence*) for the difference of
    paired proportions, from the 2x2 table's cells (counts of questions; a mean table's may be fractional):
    (difference, low, high)."""
    neither = n - both - candidate_only - baseline_only
    p1, p2 = (both + candidate_only) / n, (both + baseline_only) / n
    low1, high1 = wilson_interval(both + candidate_only, n, confidence)
    low2, high2 = wilson_interval(both + baseline_only, n, confidence)
    margins = (both + candidate_only) * (baseline_only + neither) * (both + baseline_only) * (candidate_only + neither)
    cross = both * neither - candidate_only * baseline_only
    corrected = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    difference = p1 - p2
    below = math.sqrt(max(0.0, (p1 - low1) ** 2 - 2 * phi * (p1 - low1) * (high2 - p2) + (high2 - p2) ** 2))
    above = math.sqrt(max(0.0, (p2 - low2) ** 2 - 2 * phi * (p2 - low2) * (high1 - p1) + (high1 - p1) ** 2))
    return difference, difference - below, difference + above


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of ``confidence`` of a proportion ``successes / n``."""
    z = normal_quantile(confidence)
    centre = (successes + z**2 / 2) / (n + z**2)
    half = z * math.sqrt(successes * (n - successes) / n + z**2 / 4) / (n + z**2)
    return centre - half, centre + half


def paired_bootstrap(
    baseline: torch.Tensor, candidate: torch.Tensor, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``candidate - baseline`` and the two-level paired bootstrap's interval of ``confidence`` (its 2.5% /
    97.5% quantiles at 0.95).

    Both are per-question outcomes of the same Q questions, (Q,) or (seeds, Q) (0/1 correctness, or a share of
    correct samples). Each resample draws each side's seeds with replacement and averages their outcomes per
    question, then draws Q questions with replacement and averages the differences: the interval holds the
    variance between training seeds and between questions, and leaves out the variance between questions that
    both policies share. With one seed a side it is the plain paired bootstrap over questions.
    """
    baseline, candidate = _per_seed(baseline), _per_seed(candidate)
    if baseline.shape[-1] != candidate.shape[-1] or baseline.shape[-1] == 0:
        raise ValueError(
            f"need outcomes of the same questions, got shapes {tuple(baseline.shape)} and {tuple(candidate.shape)}"
        )
    generator = torch.Generator().manual_seed(seed)

    def resampled_seeds(outcomes: torch.Tensor) -> torch.Tensor:  # (resamples, Q)
        seeds = len(outcomes)
        if seeds == 1:
            return outcomes.expand(resamples, -1)
        drawn = torch.randint(seeds, (resamples, seeds), generator=generator)
        counts = torch.zeros(resamples, seeds, dtype=torch.float64).scatter_add_(
            1, drawn, torch.ones_like(drawn, dtype=torch.float64)
        )
        return counts @ outcomes / seeds

    differences = resampled_seeds(candidate) - resampled_seeds(baseline)
    questions = torch.randint(differences.shape[-1], differences.shape, generator=generator)
    means = differences.gather(1, questions).mean(-1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return (candidate.mean(0) - baseline.mean(0)).mean().item(), low, high


def _per_seed(outcomes: torch.Tensor) -> torch.Tensor:
    """Outcomes as (seeds, Q) float64."""
    if outcomes.dim() not in (1, 2):
        raise ValueError(f"need (Q,) or (seeds, Q) outcomes, got shape {tuple(outcomes.shape)}")
    return outcomes.double().reshape(-1, outcomes.shape[-1])


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (more: within 1.5% of 1.96 + 2.4 / df).
T_QUANTILE_95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_95(degrees_of_freedom: int) -> float:
    if degrees_of_freedom <= len(T_QUANTILE_95):
        return T_QUANTILE_95[degrees_of_freedom - 1]
    return Z_95 + 2.4 / degrees_of_freedom


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of one number measured with several seeds and its 95% t-interval (the mean twice for one seed)."""
    if not values:
        raise ValueError("need at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    spread = (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5
    half = t_quantile_95(n - 1) * spread
    return mean, mean - half, mean + half
