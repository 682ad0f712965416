"""The paired intervals behind every comparison the study and the README report, and the seed intervals."""

import math

import pytest
import torch

from lit_reason.statistics import (
    paired_bootstrap,
    paired_interval,
    seed_interval,
    seeds_and_questions_interval,
    t_quantile,
    wilson_interval,
)


def four_better_of_400() -> tuple[torch.Tensor, torch.Tensor]:
    """390 questions both right, 4 only the candidate right, 6 neither (the README study's more-SFT maj@1)."""
    baseline = torch.zeros(400, dtype=torch.bool)
    baseline[:390] = True
    candidate = baseline.clone()
    candidate[390:394] = True
    return baseline, candidate


def test_newcombe_by_hand():
    # Wilson 95% intervals: 394/400 -> [0.967665, 0.993107], 390/400 -> [0.954599, 0.986365]. phi: cross
    # product 390 * 6 - 4 * 0 = 2340, corrected by n / 2 to 2140, over sqrt(394 * 6 * 390 * 10) = 3036.38:
    # 0.70479. Below: sqrt(0.017335^2 - 2 phi 0.017335 * 0.011365 + 0.011365^2) = 0.012327; above:
    # sqrt(0.020401^2 - 2 phi 0.020401 * 0.008107 + 0.008107^2) = 0.015773.
    baseline, candidate = four_better_of_400()
    mean, low, high = paired_interval(baseline.float(), candidate.float())
    assert mean == pytest.approx(0.01) and low == pytest.approx(0.01 - 0.012327, abs=2e-6)
    assert high == pytest.approx(0.01 + 0.015773, abs=2e-6)


def test_wilson_at_99_percent_by_hand():
    # z = 2.575829: 394/400 -> centre (394 + z^2 / 2) / (400 + z^2) = 0.977086, half z sqrt(394 * 6 / 400 +
    # z^2 / 4) / (400 + z^2) = 0.017427.
    assert wilson_interval(394, 400, confidence=0.99) == pytest.approx((0.959659, 0.994513), abs=2e-6)
    assert wilson_interval(394, 400) == pytest.approx((0.967665, 0.993107), abs=2e-6)


def test_a_few_one_sided_questions_are_not_significant():
    # McNemar's exact test: p = 2 * 0.5^4 = 0.125. The percentile bootstrap called it significant.
    baseline, candidate = four_better_of_400()
    assert paired_bootstrap(baseline.float(), candidate.float())[1] > 0
    mean, low, high = paired_interval(baseline.float(), candidate.float())
    assert low < 0 < high and mean == pytest.approx(0.01)


def test_newcombe_covers_the_true_difference_where_the_bootstrap_does_not():
    # Near 98% accuracy with few discordant questions (the study's regime): cells both / candidate only /
    # baseline only / neither, true difference 0.005. Newcombe's interval covers it at least 95% of the time
    # (it is conservative here: about 99%); the percentile bootstrap about 91%.
    generator = torch.Generator().manual_seed(2)
    cells = torch.multinomial(torch.tensor([0.975, 0.0075, 0.0025, 0.015]), 600 * 400, True, generator=generator)
    cells = cells.view(600, 400)
    covered = {"newcombe": 0, "bootstrap": 0}
    for trial, row in enumerate(cells):
        baseline, candidate = (row == 0) | (row == 2), (row == 0) | (row == 1)
        _, low, high = paired_interval(baseline.float(), candidate.float())
        covered["newcombe"] += low <= 0.005 <= high
        if trial < 200:
            _, low, high = paired_bootstrap(baseline.float(), candidate.float(), resamples=2000, seed=trial)
            covered["bootstrap"] += low <= 0.005 <= high
    assert covered["newcombe"] / 600 >= 0.95 and covered["bootstrap"] / 200 < 0.94


def test_shares_take_the_bootstrap_and_near_whole_outcomes_do_not():
    shares = torch.tensor([0.5, 0.25, 1.0, 0.0] * 50)
    assert paired_interval(shares, shares.roll(1)) == paired_bootstrap(shares, shares.roll(1))
    baseline, candidate = four_better_of_400()
    almost = candidate.double()
    almost[0] = 1.0000001  # was the bootstrap's [+0.0025, +0.02]: significant
    assert paired_interval(baseline.float(), almost) == pytest.approx(
        paired_interval(baseline.float(), candidate.float())
    )


def test_several_seeds_of_a_few_one_sided_questions_are_not_significant_either():
    # Three seeds that each repeat "4 better, 0 worse": no spread between seeds, so the t-interval over seeds and
    # questions is about [+0.0002, +0.0198]; Newcombe's interval on the mean table keeps 0 inside.
    baseline, candidate = four_better_of_400()
    seeds = torch.stack([candidate] * 3).float()
    mean, low, high = paired_interval(baseline.float(), seeds)
    assert (mean, low, high) == pytest.approx(paired_interval(baseline.float(), candidate.float()))
    # Seeds that disagree: the interval spans the one over seeds and questions, which holds their spread.
    disagreeing = torch.stack([candidate.float(), baseline.float(), candidate.float()])
    over_seeds = seeds_and_questions_interval(baseline.float(), disagreeing)
    _, low, high = paired_interval(baseline.float(), disagreeing)
    assert low <= min(over_seeds[1], 0) and high >= over_seeds[2]


def test_seeds_and_questions_interval_by_hand():
    # Candidate seeds 1110 and 0010 against 0010: per-question differences d = (0.5, 0.5, 0, 0), mean 0.25.
    # Between questions: var(d) / Q = (1/12) / 4 = 1/48 (3 degrees of freedom); between the candidate's seeds:
    # var(0.75, 0.25) / 2 = 1/16 (1 degree of freedom). Variance 1/12, Welch-Satterthwaite degrees of freedom
    # (1/12)^2 / ((1/48)^2 / 3 + (1/16)^2) = 12/7. At 95%, t = 5.0685 (scipy.stats.t.ppf(0.975, 12/7)): half
    # 1.46315, clipped to [-1, 1]; at 50%, t = 0.843962 (scipy.stats.t.ppf(0.75, 12/7)): half 0.243631.
    baseline, candidate = torch.tensor([0.0, 0, 1, 0]), torch.tensor([[1.0, 1, 1, 0], [0, 0, 1, 0]])
    assert seeds_and_questions_interval(baseline, candidate) == (0.25, -1.0, 1.0)
    mean, low, high = seeds_and_questions_interval(baseline, candidate, confidence=0.5)
    assert mean == 0.25 and low == pytest.approx(0.25 - 0.243631, abs=1e-6) and high == pytest.approx(0.25 + 0.243631)
    # Identical sides, and seeds that all agree with no spread between questions: no width.
    assert seeds_and_questions_interval(torch.ones(2, 5), torch.ones(3, 5)) == (0.0, 0.0, 0.0)


def test_the_interval_over_seeds_widens_by_the_seeds_spread():
    # Two seeds: one 20 questions better than the baseline, one 20 worse. Averaged per question the differences
    # cancel on those questions; the spread of the seeds' accuracies (and t at about 1 degree of freedom) shows
    # that the runs disagree.
    baseline = torch.zeros(400)
    candidate = torch.zeros(2, 400)
    candidate[0, :20] = 1
    baseline[20:40] = 1
    seed_mean = seeds_and_questions_interval(baseline, candidate.mean(0, keepdim=True))
    seeds = seeds_and_questions_interval(baseline, candidate)
    assert seed_mean[0] == seeds[0] == pytest.approx(-0.025)
    assert seeds[2] - seeds[1] > 5 * (seed_mean[2] - seed_mean[1])


def test_intervals_over_few_seeds_keep_their_confidence():
    # 800 simulated studies of two equally good algorithms, two training seeds each, 400 questions, where each
    # seed's training luck moves its accuracy on every question at once (a logit shift of sd 0.8: accuracies
    # about 0.09 apart between seeds). A 95% interval may exclude 0 in 5% of them. The bootstrap over seeds with
    # normal quantiles (lit-reason before) did in 30% of these (29.8%); this one does in 5.1%.
    generator = torch.Generator().manual_seed(2)
    studies, seeds, questions = 800, 2, 400
    difficulty = torch.randn(studies, 1, 1, questions, generator=generator) * 2 + 0.5
    training_luck = torch.randn(studies, 2, seeds, 1, generator=generator) * 0.8
    outcomes = torch.bernoulli(torch.sigmoid(difficulty + training_luck), generator=generator)
    excluded = sum(not low <= 0 <= high for _, low, high in (paired_interval(b, c) for b, c in outcomes))
    assert excluded / studies < 0.085


def test_paired_bootstrap_by_hand():
    baseline = torch.tensor([0, 0, 1, 1] * 50)
    assert paired_bootstrap(baseline, baseline) == (0.0, 0.0, 0.0)
    mean, low, high = paired_bootstrap(baseline, torch.ones(200))
    assert mean == pytest.approx(0.5) and low < 0.5 < high and high - low < 0.2


def test_two_questions_resample_to_the_exact_bootstrap_distribution():
    # Differences (0, 1): a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles of 10,000 resamples are 0 and 1.
    assert paired_bootstrap(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == (0.5, 0.0, 1.0)


@pytest.mark.parametrize(("confidence", "z"), [(0.95, 1.96), (1 - 0.05 / 4, 2.498)])
def test_interval_matches_the_normal_approximation_on_many_questions(confidence, z):
    # 2,000 questions, differences -1 / 0 / +1 with probabilities 0.2 / 0.5 / 0.3: the interval of the mean
    # is about mean +- z sd / sqrt(Q) (the bootstrap's own noise is far below the 10% margin), and so is
    # Newcombe's with this many discordant questions. At 98.75%, one of four Bonferroni intervals, z = 2.498.
    generator = torch.Generator().manual_seed(0)
    draws = torch.multinomial(torch.tensor([0.2, 0.5, 0.3]), 2000, replacement=True, generator=generator)
    baseline, candidate = (draws == 0).float(), (draws == 2).float()
    difference = candidate - baseline
    half_width = z * difference.std().item() / math.sqrt(len(difference))
    intervals = (
        paired_bootstrap(baseline, candidate, confidence=confidence),
        paired_interval(baseline, candidate, confidence=confidence),
    )
    for mean, low, high in intervals:
        assert mean == pytest.approx(difference.mean().item())
        assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
        assert (low + high) / 2 == pytest.approx(mean, abs=0.1 * half_width)


def test_rejects_unpaired_outcomes():
    with pytest.raises(ValueError, match=r"the same questions, got shapes \(3,\) and \(4,\)"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="the same Q > 0 questions"):
        paired_interval(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="the same Q > 0 questions"):
        seeds_and_questions_interval(torch.zeros(2, 3), torch.zeros(2, 4))


def test_intervals_over_seeds_of_one_question_and_of_tiny_spreads():
    # One question (validation_questions: 1) and several seeds: the interval over the seeds alone (it raised).
    # Seeds 1 and 0 against 0: spread var(1, 0) / 2 = 1/4 at 1 degree of freedom, t = 12.706: clipped to [-1, 1].
    assert paired_interval(torch.zeros(1, 1), torch.tensor([[1.0], [0.0]])) == (0.5, -1.0, 1.0)
    # A variance whose square underflows divided 0 by 0 for its degrees of freedom.
    tiny = torch.tensor([[0.0, 0, 1e-160], [0, 0, 0]], dtype=torch.float64)
    mean, low, high = seeds_and_questions_interval(torch.zeros(2, 3, dtype=torch.float64), tiny)
    assert low < mean < high


def test_seed_intervals_use_student_s_t():
    values = [0.5, 0.7] * 6  # 12 seeds: 11 degrees of freedom, t = 2.201 (was 1.96)
    mean, low, high = seed_interval(values)
    spread = (sum((v - 0.6) ** 2 for v in values) / 11 / 12) ** 0.5
    assert mean == pytest.approx(0.6) and high - mean == pytest.approx(2.201 * spread, rel=1e-4)
    assert seed_interval([0.3]) == (0.3, 0.3, 0.3)


@pytest.mark.parametrize(
    ("confidence", "degrees_of_freedom", "t"),
    [
        (0.95, 1, 12.706),  # Student's t tables
        (0.95, 2, 4.303),
        (0.95, 30, 2.042),
        (0.90, 10, 1.812),
        (0.99, 5, 4.032),
        (0.95, 2.5, 3.5747),  # fractional, as Welch-Satterthwaite gives: scipy.stats.t.ppf(0.975, 2.5)
        (1 - 0.05 / 26, 4, 7.2484),  # one of 26 Bonferroni intervals: scipy.stats.t.ppf(1 - 0.05 / 52, 4)
        (0.95, 1e7, 1.95996),  # the normal's
        (0.95, 1e15, 1.95996),  # past 1e8 by the normal's (the incomplete beta gave 1.75)
        (0.95, math.inf, 1.95996),
    ],
)
def test_t_quantiles(confidence, degrees_of_freedom, t):
    assert t_quantile(confidence, degrees_of_freedom) == pytest.approx(t, abs=6e-4)
