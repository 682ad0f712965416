"""GRPO and the critic-free estimators: no critic, the first ratio, a seconds-long learning test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning import Callback

from lit_reason import GRPO, PolicySpec, RolloutDataModule, SamplingConfig
from lit_reason.conditioning import Conditioning
from lit_reason.rewards import RewardConfig
from lit_reason.rl.losses import PPOLoss
from lit_reason.tasks import Arithmetic
from tests.algorithms.test_ppo import FirstTokenPPO, assert_learns_the_first_token, first_loss_output
from tests.helpers.trainers import quiet_trainer


class FirstTokenGRPO(GRPO):
    """Reward 1 when a response starts with the target token."""

    outcome_rewards = FirstTokenPPO.outcome_rewards
    target = FirstTokenPPO.target


def make_grpo(estimator: str, max_epochs: int, temperature: float = 1.0, **kwargs):
    module = FirstTokenGRPO(
        estimator=estimator,
        policy=PolicySpec(name_or_path="micro", seed=1),
        rollout=SamplingConfig(num_samples=8, temperature=temperature, max_new_tokens=3),
        minibatch_size=32,
        ppo_epochs=2,
        optimizer=partial(torch.optim.AdamW, lr=3e-2),
        **kwargs,
    )
    trainer = quiet_trainer(max_epochs=max_epochs, limit_val_batches=0)
    data = RolloutDataModule(task=Arithmetic(train_size=200, validation_size=8, test_size=8), questions_per_round=16)
    return module, trainer, data


@pytest.mark.parametrize(("estimator", "kl_in", "temperature"), [("grpo", "loss", 0.7), ("rloo", "reward", 1.0)])
def test_no_critic_and_the_first_ratio_is_one(estimator, kl_in, temperature):
    reward = RewardConfig(kl_coef=0.04, kl_estimator="k3", kl_in=kl_in)
    module, trainer, data = make_grpo(estimator, 1, temperature, reward=reward)
    outputs = first_loss_output(module)
    original = GRPO.training_step

    def record(self, batch, batch_idx):
        if not outputs:
            assert batch.old_values is None and batch.returns is None
            assert (batch.ref_logprobs is not None) == (kl_in == "loss")
        return original(self, batch, batch_idx)

    module.training_step = record.__get__(module)
    trainer.fit(module, data)
    assert module.networks_to_shard() == [module.policy, module.reference]  # no critic built
    first = outputs[0]
    assert first.clip_fraction.item() == 0 and first.ratio_max.item() == pytest.approx(1, abs=1e-5)
    assert first.approx_kl.item() == pytest.approx(0, abs=1e-9)
    assert first.value_loss.item() == 0  # no values
    assert 0 <= data.round_data.stats["uniform_group_fraction"] <= 1


def test_a_policy_that_suppresses_tokens_is_trained_on_the_distribution_it_samples():
    """A starting policy whose export suppresses tokens (an RCRL policy's return tokens) samples from the
    softmax without them: scoring, the reference and the loss must use that distribution too (the full
    softmax's log-probs were off by log(1 - suppressed mass), here about log 2)."""
    module, trainer, data = make_grpo("grpo", 1, reward=RewardConfig(kl_coef=0.04, kl_estimator="k3", kl_in="loss"))
    configure_model = module.configure_model

    def suppressing_half_the_vocabulary():
        configure_model()
        kept = {module.tokenizer.eos_token_id, module.tokenizer.pad_token_id}  # as a return token never is
        suppressed = tuple(token for token in range(0, len(module.tokenizer), 2) if token not in kept)
        module.recorded_conditioning = Conditioning(suppressed_token_ids=suppressed)

    module.configure_model = suppressing_half_the_vocabulary
    first_step = {}

    class FirstStep(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            first_step.setdefault("metrics", dict(trainer.callback_metrics))

    trainer.callbacks.append(FirstStep())
    trainer.fit(module, data)
    stats = data.round_data.stats
    assert stats["logprob_gap_to_sampler"] < 1e-4  # scoring
    # The loss: the policy has not moved at its first step, so its ratio to the rollout's log-probs is 1.
    assert abs(first_step["metrics"]["train/ratio_max"].item() - 1) < 1e-5
    assert abs(first_step["metrics"]["train/approx_kl"].item()) < 1e-6
    assert torch.isfinite(trainer.callback_metrics["train/entropy"])


@pytest.mark.slow
# One group estimator and the token-level one (the others differ only in ``group_advantages``, tested by hand).
@pytest.mark.parametrize(("estimator", "aggregation"), [("grpo", "sequence_mean"), ("reinforce_pp", "token_mean")])
def test_learns_a_rewarded_first_token_in_seconds(estimator, aggregation):
    assert_learns_the_first_token(*make_grpo(estimator, 12, loss=PPOLoss(aggregation=aggregation)))


def test_without_a_kl_penalty_no_reference_is_built_or_run():
    module, trainer, data = make_grpo("grpo", 1, reward=RewardConfig(kl_coef=0.0))
    trainer.fit(module, data)
    assert module.reference is None and module.networks_to_shard() == [module.policy]
    assert data.round_data.stats["kl_to_reference"] == 0.0
    assert all(batch.ref_logprobs is None for batch in data.round_data.batches)


def test_one_step_over_the_whole_rollout_needs_no_scoring_forward():
    # ppo_epochs 1 and one minibatch (16 questions x 8 = 128 rows): the update's forward gives the old
    # log-probs. The result is that of a run that scores the rollout first (ratio 1 either way).
    starts, weights, scoring_forwards = [], [], []
    for skip in (True, False):
        module, trainer, data = make_grpo("grpo", 1, reward=RewardConfig(kl_coef=0.0))
        module.ppo_epochs, module.minibatch_size = 1, 128
        if not skip:
            module._update_gives_old_logprobs = lambda rows: False
        forward = module.forward_policy_and_values
        calls = []

        def counted(*args, forward=forward, calls=calls):
            calls.append(torch.is_grad_enabled())
            return forward(*args)

        module.forward_policy_and_values = counted
        module.on_train_start = lambda module=module: starts.append(flat_weights(module.policy))
        trainer.fit(module, data)
        scoring_forwards.append(calls.count(False))
        batches = data.round_data.batches
        assert len(batches) == 1 and (batches[0].old_logprobs is None) == skip
        assert ("logprob_gap_to_sampler" in data.round_data.stats) != skip
        weights.append(flat_weights(module.policy))
    assert scoring_forwards[0] == 0 and scoring_forwards[1] > 0
    assert torch.equal(starts[0], starts[1]) and (weights[0] - starts[0]).abs().max() > 1e-3  # it trained
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=0)  # Adam steps of lr 3e-2


def flat_weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([parameter.detach().flatten() for parameter in model.parameters()])


def test_batch_sizes_below_one_are_errors_naming_the_option():
    from lit_reason import SFT, ExpertIteration, OutcomeRewardModel

    for algorithm in (SFT, ExpertIteration, OutcomeRewardModel):
        with pytest.raises(ValueError, match=r"model\.init_args\.batch_size must be at least 1, got 0"):
            algorithm(batch_size=0)  # was range()'s "arg 3 must not be zero" when the first round was cut
    with pytest.raises(ValueError, match=r"minibatch_size and ppo_epochs must be at least 1, got 0 and 2"):
        GRPO(minibatch_size=0)


def test_group_estimators_need_groups():
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        GRPO(estimator="rloo", rollout=SamplingConfig(num_samples=1))


def test_grpo_refuses_a_kl_reward_term_its_group_spread_would_scale_up():
    with pytest.raises(ValueError, match=r"estimator grpo divides .* Use reward\.kl_in: loss"):
        GRPO(estimator="grpo", reward=RewardConfig(kl_in="reward"))
    GRPO(estimator="grpo", reward=RewardConfig(kl_in="reward", kl_coef=0.0))  # no KL term: nothing to scale


def test_the_uniform_group_share_reads_the_task_reward_which_a_kl_reward_term_never_ties():
    # The first round teaches the rewarded first token, so the second round's policy is away from the reference:
    # with every task reward 0 there, each response's KL reward still differs.
    module, trainer, data = make_grpo("rloo", 2, reward=RewardConfig(kl_coef=0.04, kl_in="reward"))

    def nothing_right_after_the_first_round(problems, sampled, correct):
        rewarded = FirstTokenGRPO.outcome_rewards(module, problems, sampled, correct)
        return rewarded if module.current_epoch == 0 else torch.zeros_like(rewarded)

    module.outcome_rewards = nothing_right_after_the_first_round
    trainer.fit(module, data)
    assert data.round_data.stats["kl_to_reference"] > 1e-3
    assert data.round_data.stats["uniform_group_fraction"] == 1.0
