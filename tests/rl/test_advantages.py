"""Advantage estimators and rollout statistics against values computed by hand."""

import math

import pytest
import torch

from lit_reason.rl.advantages import (
    critic_free_advantages,
    gae,
    global_mean_var,
    group_advantages,
    returns_to_go,
    uniform_group_fraction,
    whiten,
)
from lit_reason.tensors import masked_mean


def test_gae_by_hand_with_padding():
    # Row 0: prompt column, three response tokens (the last is EOS with reward 1), one padding column.
    rewards = torch.tensor([[9.0, 0.0, 0.0, 1.0, 5.0], [9.0, 0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[3.0, 0.5, 0.6, 0.7, 4.0], [3.0, 0.2, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    a2 = 1.0 - 0.7  # last token: terminal next state
    a1 = (0.0 + 0.7 - 0.6) + 0.95 * a2
    a0 = (0.0 + 0.6 - 0.5) + 0.95 * a1
    assert advantages[0].tolist() == pytest.approx([0.0, a0, a1, a2, 0.0])
    assert returns[0].tolist() == pytest.approx([0.0, a0 + 0.5, a1 + 0.6, a2 + 0.7, 0.0])
    assert advantages[1].tolist() == pytest.approx([0.0, 0.5 - 0.2, 0.0, 0.0, 0.0])  # one-token response
    discounted, _ = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert discounted[0, 1].item() == pytest.approx(0.0 + 0.5 * 0.0 + 0.25 * 1.0 - 0.5)  # plain discounted return - V


def test_whitening_and_means_by_hand():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    mean, variance = global_mean_var(values, mask)
    assert mean.item() == pytest.approx(2.5) and variance.item() == pytest.approx(5 / 3)  # unbiased
    white = whiten(values, mask)
    assert white[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert white[mask].std().item() == pytest.approx(1.0, abs=1e-5)
    assert (white[~mask] == 0).all()
    assert masked_mean(values, mask).item() == pytest.approx(2.5)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_whitening_keeps_a_small_spread_around_a_large_mean():
    # Rewards of 1 +- 1e-3 (a round whose answers all score alike): float32 sums of squares lost the variance.
    # They came out with a spread of 0.979 where whitening's eps of 1e-8 alone allows sqrt(var / (var + eps)).
    values = 1 + 1e-3 * torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    white = whiten(values, torch.ones_like(values, dtype=torch.bool), eps=1e-8)
    variance = values.double().var().item()
    assert white.std().item() == pytest.approx(math.sqrt(variance / (variance + 1e-8)), rel=1e-4)


def test_uniform_group_fraction_by_hand():
    # Groups 0 (1, 1), 2 (0, 1) and 3 (0.5): two of the three present groups score alike; group 1 has no sample.
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([0, 2, 0, 2, 3])
    assert uniform_group_fraction(scores, groups) == pytest.approx(2 / 3)


def test_group_estimators_by_hand():
    # One question, K = 4 samples scoring 1, 0, 0, 1: mean 0.5, unbiased std sqrt(1/3).
    scores = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    std = math.sqrt(1 / 3)
    a = 0.5 / (std + 1e-4)
    assert group_advantages(scores, "grpo").tolist()[0] == pytest.approx([a, -a, -a, a])
    assert group_advantages(scores, "dr_grpo").tolist()[0] == pytest.approx([0.5, -0.5, -0.5, 0.5])
    # RLOO: a score minus the mean of the other three: 1 - 1/3, 0 - 2/3.
    assert group_advantages(scores, "rloo").tolist()[0] == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_groups_that_are_all_right_or_all_wrong_teach_nothing(estimator, value):
    scores = torch.full((3, 4), value)
    assert torch.equal(group_advantages(scores, estimator), torch.zeros(3, 4))  # zero, and no NaN
    single = group_advantages(torch.tensor([[value]]), estimator)  # K = 1: nothing to compare against
    assert torch.equal(single, torch.zeros(1, 1))


def test_critic_free_advantages_spread_a_response_score_over_its_tokens():
    # Two questions x K = 2, prompt-major; responses of 2, 1, 3 and 2 tokens (padding after).
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    rewards = torch.zeros(4, 3)
    rewards[0, 1] = 1.0  # question 0: sample 0 right, sample 1 wrong
    rewards[2, 2], rewards[3, 1] = 1.0, 1.0  # question 1: both right
    rewards[2, 0] = -0.25  # a per-token penalty counts in the response's total
    advantages = critic_free_advantages(rewards, mask, group_size=2, estimator="dr_grpo")
    expected = [[0.5, 0.5, 0], [-0.5, 0, 0], [-0.125] * 3, [0.125, 0.125, 0]]
    assert advantages.flatten().tolist() == pytest.approx([value for row in expected for value in row])


def test_reinforce_pp_whitens_rewards_to_go_over_the_batch():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    rewards = torch.tensor([[0.0, -0.5, 1.0], [0.0, 2.0, 9.0]])  # 9.0 is padding: never counted
    to_go = returns_to_go(rewards, mask)
    assert to_go.flatten().tolist() == pytest.approx([0.5, 0.5, 1.0, 2.0, 2.0, 0.0])
    advantages = critic_free_advantages(rewards, mask, group_size=1, estimator="reinforce_pp")
    values = torch.tensor([0.5, 0.5, 1.0, 2.0, 2.0])
    expected = (values - values.mean()) / values.std()
    assert advantages[mask].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert advantages[~mask].tolist() == [0.0]
