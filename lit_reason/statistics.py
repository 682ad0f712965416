"""Statistics of paired evaluations: two policies answering the same questions."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


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
    sides may have different numbers of seeds). With one seed a side, 0/1 outcomes (to within 1e-6) take Newcombe's
    score interval for paired proportions (``newcombe_from_cells``): near 100% accuracy only a few questions differ,
    and there the percentile bootstrap is too narrow (4 better against 0 worse out of 400 gives [+0.0025, +0.02]
    where McNemar's exact test has p = 0.125); other outcomes (shares of correct samples) take the paired bootstrap
    over questions. With several seeds on a side, the interval is ``seeds_and_questions_interval``'s, which holds
    the spread between training seeds, and for 0/1 outcomes it spans Newcombe's on the seed pairs' mean 2x2 table
    too. A side with one seed contributes no spread between seeds: the interval is about that one training run.
    """
    baseline, candidate = _per_seed(baseline), _per_seed(candidate)
    if baseline.shape[-1] != candidate.shape[-1] or baseline.shape[-1] == 0:
        raise ValueError(
            f"need outcomes of the same Q > 0 questions, got {baseline.shape[-1]} and {candidate.shape[-1]}"
        )
    one_seed_each = len(baseline) == len(candidate) == 1
    rounded = baseline.round(), candidate.round()
    binary = all(
        bool(((side - whole).abs() < 1e-6).all() and ((whole == 0) | (whole == 1)).all())
        for side, whole in zip((baseline, candidate), rounded, strict=True)
    )
    if not binary:
        if one_seed_each:
            return paired_bootstrap(baseline[0], candidate[0], resamples, seed, confidence)
        return seeds_and_questions_interval(baseline, candidate, confidence)
    baseline, candidate = rounded[0].bool()[:, None], rounded[1].bool()[None, :]  # (S_b, 1, Q), (1, S_c, Q)
    # The 2x2 table of every (baseline seed, candidate seed) pair, averaged.
    both, candidate_only, baseline_only = (
        cell.sum(-1).double().mean().item()
        for cell in (baseline & candidate, candidate & ~baseline, baseline & ~candidate)
    )
    mean, low, high = newcombe_from_cells(both, candidate_only, baseline_only, baseline.shape[-1], confidence)
    if one_seed_each:
        return mean, low, high
    _, seeds_low, seeds_high = seeds_and_questions_interval(rounded[0], rounded[1], confidence)
    return mean, min(low, seeds_low), max(high, seeds_high)


def seeds_and_questions_interval(
    baseline: torch.Tensor, candidate: torch.Tensor, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``candidate - baseline`` and its t-interval of ``confidence`` over training seeds and questions.

    Both are (seeds, Q) outcomes of the same Q questions. The difference is D = mean over questions of d_q, the
    per-question difference of the two sides' seed means. Its variance is estimated as the sum of

    - var_q(d_q) / Q, the spread between questions (Q - 1 degrees of freedom), and
    - for each side with S > 1 seeds, var_s(accuracy_s) / S, the spread of its seeds' accuracies (S - 1 degrees of
      freedom): a training run better or worse on every question at once, which no spread between questions shows.

    Each seed's luck on single questions is in both terms, which errs wide when the seeds hardly differ. The
    interval is D +- t * sqrt(variance), with t at the Welch-Satterthwaite degrees of freedom: with 2 or 3 seeds
    whose accuracies differ, t is far above 1.96 (4.30 at 2 degrees of freedom). It is clipped to [-1, 1], where
    a difference of outcomes in [0, 1] lies. A side with one seed adds no spread between seeds (the study's warm
    start: every run starts from that one), and one question no spread between questions.
    """
    baseline, candidate = _per_seed(baseline), _per_seed(candidate)
    if baseline.shape[-1] != candidate.shape[-1] or baseline.shape[-1] == 0:
        raise ValueError(
            f"need outcomes of the same Q > 0 questions, got {baseline.shape[-1]} and {candidate.shape[-1]}"
        )
    questions = baseline.shape[-1]
    per_question = candidate.mean(0) - baseline.mean(0)  # (Q,)
    mean = per_question.mean().item()
    parts = [(per_question.var().item() / questions, questions - 1)] if questions > 1 else []  # (variance, df)
    parts += [
        (side.mean(-1).var().item() / len(side), len(side) - 1) for side in (baseline, candidate) if len(side) > 1
    ]
    variance = sum(part for part, _ in parts)
    if variance == 0:
        return mean, mean, mean
    degrees_of_freedom = 1 / sum((part / variance) ** 2 / freedom for part, freedom in parts)
    half = t_quantile(confidence, degrees_of_freedom) * math.sqrt(variance)
    return mean, max(mean - half, -1.0), min(mean + half, 1.0)


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
    """Mean of ``candidate - baseline`` and the paired percentile bootstrap's interval of ``confidence`` (its 2.5% /
    97.5% quantiles at 0.95): ``resamples`` draws of Q questions with replacement, each averaging their differences.

    Both are (Q,) per-question outcomes of the same questions (0/1 correctness, or a share of correct samples).
    """
    if baseline.dim() != 1 or baseline.shape != candidate.shape or len(baseline) == 0:
        raise ValueError(
            f"need outcomes of the same questions, got shapes {tuple(baseline.shape)} and {tuple(candidate.shape)}"
        )
    differences = candidate.double() - baseline.double()
    generator = torch.Generator().manual_seed(seed)
    questions = torch.randint(len(differences), (resamples, len(differences)), generator=generator)
    means = differences[questions].mean(-1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return differences.mean().item(), low, high


def _per_seed(outcomes: torch.Tensor) -> torch.Tensor:
    """Outcomes as (seeds, Q) float64."""
    if outcomes.dim() not in (1, 2):
        raise ValueError(f"need (Q,) or (seeds, Q) outcomes, got shape {tuple(outcomes.shape)}")
    return outcomes.double().reshape(-1, outcomes.shape[-1])


def t_quantile(confidence: float, degrees_of_freedom: float) -> float:
    """Student's t quantile that bounds a two-sided interval of ``confidence`` (4.303 at 0.95 and 2 degrees of
    freedom; fractional degrees of freedom too), to 1e-8 relative: bisection on the regularized incomplete beta
    function, P(|T| > t) = I_x(df / 2, 1 / 2) with x = df / (df + t^2). Past 1e8 degrees of freedom, where x
    rounds to 1, the normal's quantile z with its first correction, z + (z^3 + z) / (4 df)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    if not degrees_of_freedom > 0:
        raise ValueError(f"degrees of freedom must be positive, got {degrees_of_freedom}")
    if degrees_of_freedom > 1e8:
        z = normal_quantile(confidence)
        return z + (z**3 + z) / (4 * degrees_of_freedom)

    def beyond(t: float) -> float:  # P(|T| > t)
        return _regularized_incomplete_beta(
            degrees_of_freedom / 2, 0.5, degrees_of_freedom / (degrees_of_freedom + t * t)
        )

    low, high = 0.0, max(2 * normal_quantile(confidence), 1.0)
    while beyond(high) > 1 - confidence:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if beyond(middle) > 1 - confidence else (low, middle)
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by its continued fraction (modified Lentz; Press et al., *Numerical Recipes*, 6.4)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_continued_fraction(b, a, 1 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            return fraction
    raise ArithmeticError(f"the incomplete beta function's continued fraction did not converge at a={a}, b={b}, x={x}")


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of one number measured with several seeds and its 95% t-interval (the mean twice for one seed)."""
    if not values:
        raise ValueError("need at least one value")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    spread = (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5
    half = t_quantile(0.95, n - 1) * spread
    return mean, mean - half, mean + half
