"""PPO: loss and advantage math by hand, the first ratio, and a seconds-long learning test."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning import Trainer

from lit_reason import PPO, PolicySpec, RolloutDataModule, SamplingConfig
from lit_reason.algorithms.ppo import CriticConfig
from lit_reason.rewards import RewardConfig
from lit_reason.sampling import sample
from lit_reason.tasks import Arithmetic
from lit_reason.tensors import eval_mode
from tests.helpers.quantization import FOUR_BIT, QUANTIZABLE_MICRO
from tests.helpers.trainers import quiet_trainer


class FirstTokenPPO(PPO):
    """Reward 1 when a response starts with the target token."""

    target = " "

    def outcome_rewards(self, problems, sampled, correct):
        first = sampled.input_ids[:, sampled.prompt_length]
        return (first == self.tokenizer.convert_tokens_to_ids(self.target)).float()


def first_token_frequency(module, task: Arithmetic) -> float:
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


def make_ppo(
    preset_overrides: dict | None = None, temperature: float = 1.0, **kwargs
) -> tuple[PPO, Trainer, RolloutDataModule]:
    module = FirstTokenPPO(
        policy=PolicySpec(name_or_path="micro", seed=1, preset_overrides=preset_overrides or {}),
        rollout=SamplingConfig(num_samples=8, temperature=temperature, max_new_tokens=3),
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


def first_loss_output(module: PPO):
    """Record what the module's loss returns at its first training step (ratios, clip fraction, approx-KL)."""
    outputs = []
    loss = module.loss

    def recording(*args, **kwargs):
        outputs.append(loss(*args, **kwargs))
        return outputs[-1]

    module.loss = recording
    return outputs


@pytest.mark.parametrize(("preset_overrides", "temperature"), [({}, 1.0), ({}, 0.7), ({"attention_dropout": 0.5}, 1.0)])
def test_first_ratio_is_one(preset_overrides, temperature):
    """The training step's log-probs reproduce the rollout's: at a temperature other than 1 too (log-probs of
    softmax(logits / T) on both sides), and for a checkpoint trained with attention dropout."""
    module, trainer, data = make_ppo(preset_overrides, temperature)
    outputs = first_loss_output(module)
    trainer.fit_loop.max_epochs = 1
    trainer.fit(module, data)
    first = outputs[0]
    assert first.clip_fraction.item() == 0 and first.ratio_max.item() == pytest.approx(1, abs=1e-5)
    assert first.approx_kl.item() == pytest.approx(0, abs=1e-9)


def assert_learns_the_first_token(module, trainer: Trainer, data: RolloutDataModule) -> None:
    """Training makes the rewarded first token, rare at the start (< 10%), the usual one (> 80%)."""
    module.configure_model()
    before = first_token_frequency(module, data.task)
    trainer.fit(module, data)
    after = first_token_frequency(module, data.task)
    assert before < 0.1 and after > 0.8, (before, after)


@pytest.mark.slow
def test_learns_a_rewarded_first_token_in_seconds():
    assert_learns_the_first_token(*make_ppo())


def test_rejects_filtered_sampling_and_orm_rewards_without_an_orm():
    with pytest.raises(ValueError, match="top_k 0, top_p 1"):
        PPO(rollout=SamplingConfig(top_k=5))
    with pytest.raises(ValueError, match=r"temperature > 0"):  # greedy: log-probs of a softmax that drew nothing
        PPO(rollout=SamplingConfig(temperature=0.0))
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


def test_the_critic_warmup_leaves_the_policy_no_optimizer_state_and_clips_the_critic_alone():
    # A learning rate of 0 alone let AdamW gather the held policy's gradients into its moments (spent on the
    # steps after the warm-up) and let them shrink the critic's clipped steps.
    module, trainer, data = make_ppo(critic=CriticConfig(warmup_rounds=1), max_grad_norm=1e-3)
    trainer.fit_loop.max_epochs = 1
    clipped = []
    original = module.clip_gradients

    def record(optimizer, gradient_clip_val, gradient_clip_algorithm):
        policy, critic = (optimizer.param_groups[i]["params"] for i in (0, 1))
        clipped.append((all(p.grad is None for p in policy), any(p.grad is not None for p in critic)))
        original(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    module.clip_gradients = record
    trainer.fit(module, data)
    optimizer = trainer.optimizers[0]
    assert clipped == [(True, True)] * 8
    assert all(p not in optimizer.state for p in optimizer.param_groups[0]["params"])
    assert all("exp_avg" in optimizer.state[p] for p in optimizer.param_groups[1]["params"])


def test_every_trainable_weight_of_a_separate_critic_gets_a_gradient_with_an_untied_head():
    # DDP stops at the second step when a trained weight got no gradient: a plain critic never reads the LM head.
    module = PPO(policy=PolicySpec(name_or_path="micro", preset_overrides={"tie_word_embeddings": False}))
    module.configure_model()
    assert module.policy.get_output_embeddings().weight is not module.policy.get_input_embeddings().weight
    input_ids = torch.randint(4, 100, (2, 6))
    _, values = module.forward_policy_and_values(input_ids, torch.ones_like(input_ids), prompt_length=3)
    values.sum().backward()
    trained = {name: p for name, p in module.value_network.named_parameters() if p.requires_grad}
    assert "head.weight" in trained and all(p.grad is not None for p in trained.values())
    assert not module.value_network.trunk.get_output_embeddings().weight.requires_grad


def test_checkpoints_of_lit_reason_0_1_0_load_their_critic():
    module = PPO(policy=PolicySpec(name_or_path="micro"))
    weight = torch.ones(1, 4)
    checkpoint = {"state_dict": {"critic.head.weight": weight, "policy.lm_head.weight": weight}}
    module.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"value_network.head.weight", "policy.lm_head.weight"}
    module.on_load_checkpoint({"epoch": 1})  # FSDP2: Lightning loaded the sharded weights; no state dict here


@pytest.mark.parametrize("load_kwargs", [{"dtype": "bfloat16"}, FOUR_BIT], ids=["bfloat16", "4-bit"])
def test_the_reference_can_be_loaded_its_own_way(load_kwargs, tmp_path):
    """reference_load_kwargs: here a bfloat16 or a 4-bit reference (bitsandbytes) beside a float32 policy, as a
    config file gives them; the round's KL to it is computed all the same."""
    exported = PPO(policy=PolicySpec(name_or_path="micro", seed=1, preset_overrides=QUANTIZABLE_MICRO))
    exported.configure_model()
    exported.export_policy(tmp_path / "policy")
    module = PPO(
        policy=PolicySpec(name_or_path=str(tmp_path / "policy")),
        rollout=SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=4),
        reference_load_kwargs=load_kwargs,
    )
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, RolloutDataModule(task=Arithmetic(train_size=8, validation_size=0), questions_per_round=8))
    if "quantization_config" in load_kwargs:  # every linear layer of the blocks holds 4-bit weights
        projection = module.reference.model.layers[0].self_attn.q_proj
        assert type(projection).__name__ == "Linear4bit" and projection.weight.dtype == torch.uint8
    else:
        assert {p.dtype for p in module.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}
    kl = trainer.callback_metrics["round/kl_to_reference"].item()
    assert kl != 0 and kl == kl  # rounded weights differ from the policy's, and the KL is a number
