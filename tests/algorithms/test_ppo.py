"""PPO: loss and advantage math by hand, the first ratio, and a seconds-long learning test."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from lightning import Trainer

from lit_reason import PPO, PolicySpec, RolloutDataModule, SamplingConfig
from lit_reason.algorithms.ppo import CriticConfig
from lit_reason.rewards import RewardConfig, kl_penalty
from lit_reason.rl.advantages import gae, global_mean_var, whiten
from lit_reason.rl.losses import aggregate, clipped_policy_loss, clipped_value_loss
from lit_reason.sampling import sample
from lit_reason.tasks import Arithmetic
from lit_reason.tensors import entropy_from_logits, eval_mode, masked_mean, token_logprobs
from tests.helpers.trainers import quiet_trainer


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


def test_kl_estimators_by_hand():
    logp, logq = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.4)])
    k1 = kl_penalty(logp, logq, "k1")
    assert k1.tolist() == pytest.approx([math.log(2), math.log(0.5)])
    assert kl_penalty(logp, logq, "k2").tolist() == pytest.approx([0.5 * math.log(2) ** 2, 0.5 * math.log(0.5) ** 2])
    assert kl_penalty(logp, logq, "k3").tolist() == pytest.approx([0.5 - 1 + math.log(2), 2.0 - 1 - math.log(2)])
    assert (kl_penalty(logp, logq, "k3") >= 0).all()
    assert kl_penalty(logp, logp, "k3").abs().max().item() == 0.0


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


class FirstTokenPPO(PPO):
    """Reward 1 when a response starts with the target token."""

    target = " "

    def outcome_rewards(self, sampled, correct):
        first = sampled.input_ids[:, sampled.prompt_length]
        return (first == self.tokenizer.convert_tokens_to_ids(self.target)).float()


def first_token_frequency(module: PPO, task: Arithmetic) -> float:
    """How often the policy's sampled responses to 32 training questions start with the target token."""
    problems = task.problems("train")[:32]
    with eval_mode(module.policy):
        batch = sample(
            module.policy,
            module.tokenizer,
            [task.prompt(p) for p in problems],
            module.rollout,
            [p.id for p in problems],
            eos_token_ids=[module.tokenizer.eos_token_id],
        )
    first = batch.input_ids[:, batch.prompt_length]
    return (first == module.tokenizer.convert_tokens_to_ids(FirstTokenPPO.target)).float().mean().item()


def make_ppo(preset_overrides: dict | None = None, **kwargs) -> tuple[PPO, Trainer, RolloutDataModule]:
    module = FirstTokenPPO(
        policy=PolicySpec(name_or_path="micro", seed=1, preset_overrides=preset_overrides or {}),
        rollout=SamplingConfig(num_samples=8, temperature=1.0, max_new_tokens=3),
        minibatch_size=32,
        ppo_epochs=2,
        reward=RewardConfig(kl_coef=0.0),
        optimizer=partial(torch.optim.AdamW, lr=3e-2),
        **kwargs,
    )
    trainer = quiet_trainer(
        max_epochs=12,
        limit_val_batches=0,
    )
    data = RolloutDataModule(task=Arithmetic(train_size=200, validation_size=8, test_size=8), questions_per_round=16)
    return module, trainer, data


@pytest.mark.parametrize("preset_overrides", [{}, {"attention_dropout": 0.5}])
def test_first_ratio_is_one(preset_overrides):
    # A checkpoint trained with attention dropout: the training forward must still reproduce the rollout.
    module, trainer, data = make_ppo(preset_overrides)
    ratios = []
    original = PPO.training_step

    def record(self, batch, batch_idx):
        if not ratios:
            logits, _ = self.forward_policy_and_values(batch.input_ids, batch.attention_mask)
            logprobs = token_logprobs(logits, batch.input_ids, self.rollout.temperature)
            ratios.append(torch.exp(logprobs - batch.old_logprobs)[batch.response_mask])
        return original(self, batch, batch_idx)

    module.training_step = record.__get__(module)
    trainer.fit_loop.max_epochs = 1
    trainer.fit(module, data)
    assert torch.allclose(ratios[0], torch.ones_like(ratios[0]), atol=1e-5)


@pytest.mark.slow
def test_learns_a_rewarded_first_token_in_seconds():
    module, trainer, data = make_ppo()
    module.configure_model()
    before = first_token_frequency(module, data.task)
    trainer.fit(module, data)
    after = first_token_frequency(module, data.task)
    assert before < 0.1 and after > 0.8, (before, after)


def test_rejects_filtered_sampling_and_orm_rewards_without_an_orm():
    with pytest.raises(ValueError, match="top_k 0, top_p 1"):
        PPO(rollout=SamplingConfig(top_k=5))
    with pytest.raises(ValueError, match="need an ORM"):
        PPO(reward=RewardConfig(final="orm"))


def test_critic_warmup_holds_the_policy_for_exactly_its_rounds():
    from tests.algorithms.test_base import LearningRates

    module, trainer, data = make_ppo(critic=CriticConfig(warmup_rounds=1))
    rates = LearningRates()
    trainer.callbacks.append(rates)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(module, data)
    rounds = [round_index for round_index, _ in rates.steps]
    assert rounds == [0] * 8 + [1] * 8  # 128 responses a round, minibatches of 32, 2 PPO epochs
    assert all(actor == 0 for round_index, (actor, _) in rates.steps if round_index == 0)
    assert all(actor > 0 for round_index, (actor, _) in rates.steps if round_index == 1)
    assert all(critic > 0 for _, (_, critic) in rates.steps)


def test_checkpoints_of_lit_reason_0_1_0_load_their_critic():
    module = PPO(policy=PolicySpec(name_or_path="micro"))
    weight = torch.ones(1, 4)
    checkpoint = {"state_dict": {"critic.head.weight": weight, "policy.lm_head.weight": weight}}
    module.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"value_network.head.weight", "policy.lm_head.weight"}
