"""The paired bootstrap behind every interval the README reports."""

import math

import pytest
import torch

from lit_reason.statistics import paired_bootstrap


def test_paired_bootstrap_by_hand():
    baseline = torch.tensor([0, 0, 1, 1] * 50)
    assert paired_bootstrap(baseline, baseline) == (0.0, 0.0, 0.0)
    mean, low, high = paired_bootstrap(baseline, torch.ones(200))
    assert mean == pytest.approx(0.5) and low < 0.5 < high and high - low < 0.2


def test_two_questions_resample_to_the_exact_bootstrap_distribution():
    # Differences (0, 1): a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles of 10,000 resamples are 0 and 1.
    assert paired_bootstrap(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == (0.5, 0.0, 1.0)


def test_interval_matches_the_normal_approximation_on_many_questions():
    # 2,000 questions, differences -1 / 0 / +1 with probabilities 0.2 / 0.5 / 0.3: the interval of the mean
    # is about mean +- 1.96 sd / sqrt(Q) (the bootstrap's own noise is far below the 10% margin).
    generator = torch.Generator().manual_seed(0)
    draws = torch.multinomial(torch.tensor([0.2, 0.5, 0.3]), 2000, replacement=True, generator=generator)
    baseline, candidate = (draws == 0).float(), (draws == 2).float()
    mean, low, high = paired_bootstrap(baseline, candidate)
    difference = candidate - baseline
    half_width = 1.96 * difference.std().item() / math.sqrt(len(difference))
    assert mean == pytest.approx(difference.mean().item())
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.1 * half_width)


def test_rejects_unpaired_outcomes():
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4))
