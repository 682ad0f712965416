"""The clipped policy-gradient loss, term by term, against values computed by hand."""

import math

import pytest
import torch

from lit_reason.rl.losses import aggregate, clipped_policy_loss, clipped_value_loss
from lit_reason.tensors import entropy_from_logits, token_logprobs


def test_clipped_losses_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
    losses, clipped = clipped_policy_loss(new, old, advantages, clip=0.2)
    # ratio 1: -1; ratio 1.5, A>0: clipped at 1.2 -> -1.2; ratio 0.5, A<0: clipped at 0.8 -> 0.8;
    # ratio 1.1 inside the clip range -> 2.2.
    assert losses[0].tolist() == pytest.approx([-1.0, -1.2, 0.8, 2.2])
    assert clipped.tolist() == [[False, True, True, False]]
    values, old_values, returns = (
        torch.tensor([[1.0, 0.0, 0.5]]),
        torch.tensor([[0.5, 0.5, 0.5]]),
        torch.tensor([[2.0, 1.0, 0.0]]),
    )
    # v=1 clipped to 0.7: max((1-2)^2, (0.7-2)^2)/2 = 0.845; v=0 clipped to 0.3: max(1, 0.49)/2 = 0.5; unchanged: 0.125
    assert clipped_value_loss(values, old_values, returns, clip=0.2)[0].tolist() == pytest.approx([0.845, 0.5, 0.125])


def test_entropy_and_token_logprobs_by_hand():
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4))
    suppressed = torch.tensor([[[0.0, float("-inf"), 0.0, float("-inf")]]], requires_grad=True)
    entropy = entropy_from_logits(suppressed)
    entropy.backward()
    assert entropy.item() == pytest.approx(math.log(2)) and torch.equal(suppressed.grad, torch.zeros(1, 1, 4))
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 5.0]]])  # position t predicts t + 1
    ids = torch.tensor([[0, 1, 0]])
    assert token_logprobs(logits, ids, temperature=1.0)[0].tolist() == pytest.approx(
        [0.0, math.log(0.75), math.log(0.5)]
    )
    at_2 = token_logprobs(logits, ids, temperature=2.0)[0, 1].item()
    assert at_2 == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_aggregation_denominators_are_global():
    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # This rank holds 3 of the minibatch's 8 response tokens (2 of its 4 responses); 2 ranks.
    assert aggregate(
        per_token, mask, "token_mean", global_tokens=8, global_sequences=4, world_size=2
    ).item() == pytest.approx(6 * 2 / 8)
    assert aggregate(per_token, mask, "sequence_mean", 8, 4, 2).item() == pytest.approx((1.5 + 3.0) * 2 / 4)
    assert aggregate(per_token, mask, "token_mean", 3, 2, 1).item() == pytest.approx(2.0)  # one rank: plain mean


def test_kl_loss_term_and_no_critic_by_hand():
    from lit_reason.batches import PPOBatch
    from lit_reason.rl.losses import PPOLoss

    # One response of two tokens over a 2-token vocabulary; logits give p(token 1) = 1/2 at both positions.
    logits = torch.zeros(1, 3, 2)
    input_ids = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[False, True, True]])
    old = torch.full((1, 3), math.log(0.5)) * mask
    batch = PPOBatch(
        input_ids=input_ids, attention_mask=torch.ones(1, 3, dtype=torch.long), response_mask=mask,
        old_logprobs=old, advantages=torch.tensor([[0.0, 1.0, -1.0]]), global_tokens=2, global_sequences=1,
        prompt_length=1,
        ref_logprobs=torch.full((1, 3), math.log(0.25)) * mask,
    )  # fmt: skip
    loss = PPOLoss(aggregation="token_mean")
    plain = loss(logits, None, batch, temperature=1.0, world_size=1)
    assert plain.loss.item() == pytest.approx(0.0)  # ratio 1: -A summed over +1 and -1
    assert plain.value_loss.item() == 0.0 and plain.kl_loss.item() == 0.0
    # k3 with log(q / p) = log(0.25 / 0.5): q/p - 1 - log(q/p) = 0.5 - 1 + log 2 per token.
    with_kl = loss(logits, None, batch, temperature=1.0, world_size=1, kl_coef=0.1, kl_estimator="k3")
    assert with_kl.kl_loss.item() == pytest.approx(math.log(2) - 0.5)
    assert with_kl.loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5))
    # Dr. GRPO's constant normaliser: the same sum over 1 response x 8 tokens instead of 2 tokens.
    constant = PPOLoss(aggregation="max_length_mean")(
        logits, None, batch, temperature=1.0, world_size=1, max_length=8, kl_coef=0.1
    )
    assert constant.loss.item() == pytest.approx(0.1 * (math.log(2) - 0.5) * 2 / 8)


def test_the_entropy_of_bf16_logits_is_taken_at_the_temperature_in_float32():
    # bf16 logits were divided by the temperature in bf16, then converted: 0.06 nats off at V = 49,152, T = 0.7
    # (the train/entropy statistic and an entropy bonus), where the log-probs convert first.
    from lit_reason.batches import PPOBatch
    from lit_reason.rl.losses import PPOLoss

    logits = (torch.randn(2, 6, 49152, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    mask = torch.tensor([[False, True, True, True, True, True]] * 2)
    batch = PPOBatch(
        input_ids=torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 6, dtype=torch.long),
        response_mask=mask, old_logprobs=None, advantages=torch.zeros(2, 6), global_tokens=10, global_sequences=2,
        prompt_length=1,
    )  # fmt: skip
    entropy = PPOLoss()(logits, None, batch, temperature=0.7, world_size=1).entropy
    expected = entropy_from_logits(logits[:, :-1].double() / 0.7).mean()
    assert entropy.item() == pytest.approx(expected.item(), abs=1e-4)


def test_without_rollout_logprobs_the_ratio_is_one_and_the_gradient_the_plain_policy_gradient():
    from lit_reason.batches import PPOBatch
    from lit_reason.rl.losses import PPOLoss

    input_ids = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[False, True, True]])
    gradients = []
    for old in (None, "current"):
        logits = torch.tensor([[[0.3, -0.2], [1.0, 0.5], [0.0, 0.0]]], requires_grad=True)
        current = torch.log_softmax(logits.detach(), -1)[0, :2].gather(-1, input_ids[0, 1:, None])[:, 0]
        batch = PPOBatch(
            input_ids=input_ids, attention_mask=torch.ones(1, 3, dtype=torch.long), response_mask=mask,
            advantages=torch.tensor([[0.0, 2.0, -1.0]]), global_tokens=2, global_sequences=1, prompt_length=1,
            old_logprobs=None if old is None else torch.nn.functional.pad(current, (1, 0))[None],
        )  # fmt: skip
        output = PPOLoss(aggregation="token_mean")(logits, None, batch, temperature=1.0, world_size=1)
        assert output.ratio_max.item() == pytest.approx(1.0) and output.clip_fraction.item() == 0.0
        output.loss.backward()
        gradients.append(logits.grad)
    # -(1/2) * sum_t A_t * d log p(a_t) / d logits: softmax minus one-hot, times -A_t / 2.
    probabilities = torch.softmax(logits.detach(), -1)
    expected = torch.zeros(1, 3, 2)
    for position, (token, advantage) in enumerate([(1, 2.0), (0, -1.0)]):
        one_hot = torch.nn.functional.one_hot(torch.tensor(token), 2)
        expected[0, position] = -advantage / 2 * (one_hot - probabilities[0, position])
    torch.testing.assert_close(gradients[0], expected)
    torch.testing.assert_close(gradients[1], expected)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_loss_term_stays_finite_where_a_padding_token_is_very_unlikely(estimator):
    """Off the response the reference log-probs are 0 while the policy's are whatever the padding token gets;
    k3's ``exp(-log ratio)`` overflowed there (log p(pad) < -88.7 at the temperature) and inf * 0 made the
    loss and every gradient NaN."""
    from lit_reason.batches import PPOBatch
    from lit_reason.rl.losses import PPOLoss

    input_ids = torch.tensor([[1, 2, 3], [1, 2, 0]])  # row 1's response is one token shorter: pad at column 2
    mask = torch.tensor([[False, True, True], [False, True, False]])
    logits = torch.zeros(2, 3, 5)
    logits[1, 1, 0] = -70.0  # what column 1 gives the pad token: log p = -101 at T = 0.7
    logits.requires_grad_(True)
    rollout = token_logprobs(logits.detach(), input_ids, 0.7) * mask
    batch = PPOBatch(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), response_mask=mask,
        advantages=torch.ones(2, 3) * mask, global_tokens=3, global_sequences=2, prompt_length=1,
        old_logprobs=rollout, ref_logprobs=(rollout + 0.01) * mask,
    )  # fmt: skip
    output = PPOLoss()(logits, None, batch, temperature=0.7, world_size=1, kl_coef=0.1, kl_estimator=estimator)
    output.loss.backward()
    assert torch.isfinite(output.loss) and torch.isfinite(output.kl_loss) and torch.isfinite(logits.grad).all()
    # Only the three response tokens count: each has log(q / p) = 0.01.
    expected = {"k1": -0.01, "k2": 0.5 * 0.01**2, "k3": math.exp(0.01) - 1 - 0.01}[estimator]
    assert output.kl_loss.item() == pytest.approx(expected, rel=1e-3)
