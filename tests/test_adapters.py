"""LoRA adapters on the policy: only the adapter trains, the base model is the reference with the adapter
disabled, and exports load merged (without PEFT) or as an adapter."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_FILE
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lit_reason import GRPO, PPO, SFT, PolicySpec, ReturnConditionedRL, RolloutDataModule, SamplingConfig
from lit_reason.adapters import (
    CRITIC_ADAPTER,
    POLICY_ADAPTER,
    adapter_active,
    adapters_disabled,
    add_adapter,
    below_the_head,
    has_adapter,
    of_adapter,
    save_adapted,
    with_adapter,
)
from lit_reason.algorithms.ppo import CriticConfig
from lit_reason.cached_forward import final_hidden_states
from lit_reason.policy import build_char_tokenizer, load_model, load_tokenizer
from lit_reason.rewards import RewardConfig, RewardFunction
from lit_reason.tasks import Arithmetic
from lit_reason.warm_start import warm_start_dir
from tests.helpers.trainers import quiet_trainer

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)


def logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_an_adapter_starts_as_the_identity_and_disabled_gives_the_base_model():
    tokenizer = build_char_tokenizer()
    spec = PolicySpec(name_or_path="micro", seed=3)
    base, adapted = load_model(spec, tokenizer), with_adapter(load_model(spec, tokenizer), LORA)
    assert has_adapter(adapted) and not has_adapter(base)
    assert {n for n, p in adapted.named_parameters() if p.requires_grad} == {
        n for n, _ in adapted.named_parameters() if "lora_" in n
    }
    input_ids = torch.tensor([tokenizer("12 + 30 = ")["input_ids"]])
    assert torch.equal(logits(adapted, input_ids), logits(base, input_ids))  # LoRA's B starts at zero
    for name, parameter in adapted.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_()
    assert not torch.allclose(logits(adapted, input_ids), logits(base, input_ids))
    with adapters_disabled(adapted):
        assert torch.equal(logits(adapted, input_ids), logits(base, input_ids))
    assert not torch.allclose(logits(adapted, input_ids), logits(base, input_ids))  # enabled again


def test_the_base_model_is_whole_again_with_modules_peft_trains_whole_and_adapters_are_reproducible():
    tokenizer = build_char_tokenizer()
    spec = PolicySpec(name_or_path="micro", seed=3)
    config = LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["norm"])
    first, second = (with_adapter(load_model(spec, tokenizer), config) for _ in range(2))
    lora_a = [name for name in first.state_dict() if "lora_A" in name]
    assert lora_a and all(torch.equal(first.state_dict()[n], second.state_dict()[n]) for n in lora_a)  # seeded
    for parameter in first.parameters():
        if parameter.requires_grad:  # the adapter and the trained copy of the final norm
            parameter.data.normal_()
    input_ids = torch.tensor([tokenizer("12 + 30 = ")["input_ids"]])
    with adapters_disabled(first):
        assert torch.equal(logits(first, input_ids), logits(load_model(spec, tokenizer), input_ids))


def test_a_critic_adapter_runs_only_when_active_and_every_adapter_stays_trainable():
    tokenizer = build_char_tokenizer()
    spec = PolicySpec(name_or_path="micro", seed=3)
    model = with_adapter(load_model(spec, tokenizer), LORA)
    add_adapter(model, LORA, CRITIC_ADAPTER)
    adapter_weights = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert {n for n in adapter_weights if f".{CRITIC_ADAPTER}." in n}  # injected beside the policy's
    input_ids = torch.tensor([tokenizer("12 + 30 = ")["input_ids"]])
    base = logits(load_model(spec, tokenizer), input_ids)
    for name, parameter in model.named_parameters():
        if f"lora_B.{CRITIC_ADAPTER}" in name:
            parameter.data.normal_()
    assert torch.equal(logits(model, input_ids), base)  # the policy's adapter (still the identity) runs
    with adapter_active(model, CRITIC_ADAPTER):
        with_critic = logits(model, input_ids)
    assert not torch.allclose(with_critic, base)
    for name, parameter in model.named_parameters():
        if f"lora_B.{POLICY_ADAPTER}" in name:
            parameter.data.normal_()
    with adapter_active(model, CRITIC_ADAPTER):
        assert torch.equal(logits(model, input_ids), with_critic)  # the policy's adapter is off meanwhile
        with adapters_disabled(model):
            assert torch.equal(logits(model, input_ids), base)
    assert not torch.allclose(logits(model, input_ids), with_critic)  # the policy's adapter again
    with adapters_disabled(model):  # the reference's forward
        assert torch.equal(logits(model, input_ids), base)
    # PEFT's switches make inactive adapters untrainable; both adapters train here.
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapter_weights


POLICY_ADAPTER_CONFIGS = {
    "embeddings-head-norms-biases": LoraConfig(
        r=4, target_modules=["q_proj", "embed_tokens", "lm_head"], modules_to_save=["norm"], bias="lora_only"
    ),
    "trainable-tokens-pissa": LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], trainable_token_indices=[5, 6], init_lora_weights="pissa"
    ),
}


@pytest.mark.parametrize("config", POLICY_ADAPTER_CONFIGS.values(), ids=POLICY_ADAPTER_CONFIGS.keys())
def test_the_critic_adapter_covers_the_layers_below_the_head_and_every_one_of_its_weights_trains(config, tmp_path):
    """A policy adapter on the embeddings and the output head, with modules trained whole, biases, trainable
    tokens or an initialisation that rewrites the base weights: the critic's adapter leaves out what it never
    reads (the head; whole copies; tokens), shares no bias and starts as the identity, so each of its weights
    gets a gradient (DDP waits for every one) and the policy is unchanged; an export leaves the critic's
    weights out, whatever PEFT names them."""
    tokenizer = build_char_tokenizer()
    # Untied: LoRA on a head tied to the input embeddings is refused (merged, it would change both).
    spec = PolicySpec(name_or_path="micro", seed=3, preset_overrides={"tie_word_embeddings": False})
    model = with_adapter(load_model(spec, tokenizer), config)
    input_ids = torch.tensor([tokenizer("12 + 30 = ")["input_ids"]])
    policy_logits = logits(model, input_ids)
    add_adapter(model, below_the_head(config, model), CRITIC_ADAPTER)
    assert torch.equal(logits(model, input_ids), policy_logits)
    critic = {n: p for n, p in model.named_parameters() if of_adapter(n, CRITIC_ADAPTER)}
    if "embed_tokens" in config.target_modules:
        assert any(n.endswith(f"lora_embedding_A.{CRITIC_ADAPTER}") for n in critic)  # PEFT's name ends there
    assert critic and not any("lm_head" in n or "modules_to_save" in n or "token_adapter" in n for n in critic)
    assert all(p.requires_grad for p in critic.values())
    for name, parameter in critic.items():  # LoRA's B (zero at first) would stop the gradient of A
        if "lora_B" in name or "lora_embedding_B" in name:
            parameter.data.normal_()
    with adapter_active(model, CRITIC_ADAPTER):
        hidden = final_hidden_states(model, input_ids, torch.ones_like(input_ids))
    hidden.sum().backward()
    assert all(p.grad is not None for p in critic.values())
    for name, parameter in model.named_parameters():  # nothing of the policy's adapter reaches the critic
        if of_adapter(name, POLICY_ADAPTER):
            parameter.data.normal_()
    with adapter_active(model, CRITIC_ADAPTER), torch.no_grad():
        assert torch.equal(final_hidden_states(model, input_ids, torch.ones_like(input_ids)), hidden.detach())
    # save_adapted loads the state strictly: a critic weight it did not leave out would stop it.
    save_adapted(load_model(spec, tokenizer), config, model.state_dict(), tmp_path / "adapter", "adapter")
    assert not any(of_adapter(key, CRITIC_ADAPTER) for key in load_file(tmp_path / "adapter" / ADAPTER_FILE))
    with pytest.raises(ValueError, match="adapts only the output head"):
        only_head = LoraConfig(r=4, target_modules=["lm_head"])
        below_the_head(only_head, with_adapter(load_model(spec, tokenizer), only_head))


def test_the_value_head_reads_a_half_precision_policy():
    module = make_lora_ppo(critic="lora")
    module.configure_model()
    module.policy.to(torch.bfloat16)  # a policy loaded with dtype bfloat16; the head stays float32
    input_ids = torch.tensor([module.tokenizer("12 + 30 = 42")["input_ids"]])
    logits, values = module.forward_policy_and_values(input_ids, torch.ones_like(input_ids), prompt_length=9)
    assert values.shape == (1, input_ids.shape[1] - 8)  # a float32 head over bfloat16 hidden states crashed


def test_a_merged_export_of_a_bfloat16_base_keeps_a_small_adapter(tmp_path):
    # Merged into the bfloat16 weights, a change below half their last place rounded away: the export was the
    # base model, not the trained policy.
    tokenizer = build_char_tokenizer()

    def bfloat16_base() -> torch.nn.Module:
        return load_model(PolicySpec(name_or_path="micro", seed=1), tokenizer).to(torch.bfloat16)

    policy = with_adapter(bfloat16_base(), LORA)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.fill_(1e-4)  # B A: changes of about 5e-5, below the bfloat16 weights' last place
    save_adapted(bfloat16_base(), LORA, policy.state_dict(), tmp_path / "export", "merged")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert exported.dtype == torch.float32
    layer = policy.model.layers[0].self_attn.q_proj
    adapter_change = (
        layer.scaling[POLICY_ADAPTER] * layer.lora_B[POLICY_ADAPTER].weight @ layer.lora_A[POLICY_ADAPTER].weight
    )
    merged_change = exported.model.layers[0].self_attn.q_proj.weight - layer.base_layer.weight.float()
    assert torch.allclose(merged_change, adapter_change.float(), rtol=1e-3, atol=1e-7)


def saved_base(path: Path, seed: int = 1) -> Path:
    """A micro preset saved as a model directory: a base an adapter exported alone can name (a preset cannot)."""
    tokenizer = build_char_tokenizer()
    load_model(PolicySpec(name_or_path="micro", seed=seed), tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def trained_lora_sft(base: str) -> SFT:
    """An SFT module with a LoRA adapter on ``base`` that is not the identity (as after training)."""
    module = SFT(policy=PolicySpec(name_or_path=base, peft=LORA, adapter_export="adapter"))
    module.configure_model()
    with torch.no_grad():
        for name, parameter in module.policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(len(name)))
    return module


def test_an_adapter_exported_alone_loads_back_as_a_policy_merged_into_its_base(tmp_path, monkeypatch):
    # Loading one read its config.json, which an adapter export lacks: "Unrecognized model ... model_type".
    monkeypatch.chdir(tmp_path)
    saved_base(tmp_path / "base")
    module = trained_lora_sft("base")  # relative: the export names the base by its absolute path
    module.policy.generation_config.max_new_tokens = 7
    module.export_policy(tmp_path / "policy")
    monkeypatch.chdir(tmp_path / "policy")
    spec = PolicySpec(name_or_path=str(tmp_path / "policy"))
    loaded = load_model(spec, load_tokenizer(spec))
    assert not has_adapter(loaded) and {p.dtype for p in loaded.parameters()} == {torch.float32}
    input_ids = torch.tensor([module.tokenizer("7 + 5 = ")["input_ids"]])
    assert torch.allclose(logits(loaded.eval(), input_ids), logits(module.policy.eval(), input_ids), atol=1e-5)
    with adapters_disabled(module.policy):  # the adapter is not the identity: the base alone gives other logits
        assert not torch.allclose(logits(loaded, input_ids), logits(module.policy, input_ids), atol=1e-3)
    assert loaded.generation_config.max_new_tokens == 7  # the trained policy's, not the base's
    assert loaded.name_or_path == str(tmp_path / "policy")  # an adapter trained on it names it, not the base
    adapter_config = tmp_path / "policy" / "adapter_config.json"  # as a preset's export (now refused) wrote it
    adapter_config.write_text(json.dumps(json.loads(adapter_config.read_text()) | {"base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="names no base model.*or export with policy.adapter_export: merged"):
        load_model(spec, load_tokenizer(spec))


def test_an_adapter_exported_alone_is_a_warm_start(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_REASON_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {{init_args: {{policy: {{name_or_path: {tmp_path / 'base'}}}}}}}\n")
    module = trained_lora_sft(str(saved_base(tmp_path / "base")))
    module.export_policy(warm_start_dir(config))  # as if the config's fit had trained it
    spec = PolicySpec(name_or_path=f"config:{config}")
    loaded = load_model(spec, load_tokenizer(spec))  # found cached, not trained again
    input_ids = torch.tensor([module.tokenizer("7 + 5 = ")["input_ids"]])
    assert torch.allclose(logits(loaded.eval(), input_ids), logits(module.policy.eval(), input_ids), atol=1e-5)


def make_lora_ppo(adapter_export: str = "merged", critic: str = "separate", base: str = "micro") -> PPO:
    return PPO(
        policy=PolicySpec(name_or_path=base, seed=1, peft=LORA, adapter_export=adapter_export),
        critic=CriticConfig(kind=critic),
        rollout=SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=6),
        minibatch_size=16,
        # A reward that varies between a random policy's samples: the adapter must move.
        reward=RewardConfig(final="reward_fn", reward_fn=RewardFunction("tests.helpers.rewards.contains_a_digit")),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
    )


@pytest.mark.slow
@pytest.mark.parametrize(("adapter_export", "critic"), [("merged", "separate"), ("adapter", "lora")])
def test_ppo_with_lora_trains_the_adapter_alone_against_the_base_as_reference(adapter_export, critic, tmp_path):
    base = "micro" if adapter_export == "merged" else str(saved_base(tmp_path / "base"))
    module = make_lora_ppo(adapter_export, critic, base)
    data = RolloutDataModule(task=Arithmetic(train_size=64, validation_size=0), questions_per_round=8)
    module.configure_model()
    before = {name: value.clone() for name, value in module.policy.state_dict().items()}
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(module, data)
    assert module.reference is None and module.has_reference  # no second copy: the adapter disabled
    changed = {name for name, value in module.policy.state_dict().items() if not torch.equal(value, before[name])}
    assert changed and all("lora_" in name for name in changed)  # the base model's weights never move
    critic_changed = {name for name in changed if f".{CRITIC_ADAPTER}." in name}
    assert bool(critic_changed) == (critic == "lora") and changed - critic_changed  # both adapters train
    if critic == "lora":  # the critic's adapter at the critic's learning rate
        critic_group = {id(p) for p in module.trainable_parameters()[1]["params"]}
        assert all(id(p) in critic_group for n, p in module.policy.named_parameters() if n in critic_changed)
    assert trainer.callback_metrics["round/kl_to_reference"].item() != 0  # round 2: the adapter has moved

    module.export_policy(tmp_path / "policy")
    input_ids = torch.tensor([module.tokenizer("7 + 5 = ")["input_ids"]])
    expected = logits(module.policy.eval(), input_ids)
    if adapter_export == "merged":  # a plain model: no PEFT needed to load it
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
        assert not has_adapter(exported)
    else:
        exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "policy")
    assert torch.allclose(logits(exported.eval(), input_ids), expected, atol=1e-5)


def test_what_lora_cannot_do_is_refused():
    with pytest.raises(ValueError, match="the reference is the policy's base model"):
        PPO(policy=PolicySpec(name_or_path="micro", peft=LORA), reference_load_kwargs={"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="critic.kind=lora puts a LoRA adapter"):
        PPO(policy=PolicySpec(name_or_path="micro"), critic=CriticConfig(kind="lora"))
    with pytest.raises(ValueError, match="the tiny preset 'micro' is built.*use policy.adapter_export: merged"):
        PolicySpec(name_or_path="micro", peft=LORA, adapter_export="adapter")  # its export named no base: unloadable
    with pytest.raises(ValueError, match="RCRL with policy.peft"):
        ReturnConditionedRL(policy=PolicySpec(name_or_path="micro", peft=LORA))


@pytest.mark.parametrize("targets", [["lm_head"], ["q_proj", "embed_tokens"]])
def test_lora_on_embeddings_tied_to_the_head_is_refused(targets):
    """Merged into the weight the head shares with the input embeddings, LoRA trained on one of them changed
    both: the export was another model (its logits 25 away from the trained policy's on the micro preset)."""
    tokenizer = build_char_tokenizer()
    tied = load_model(PolicySpec(name_or_path="micro"), tokenizer)
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    with pytest.raises(ValueError, match="ties its output head to its input embeddings"):
        with_adapter(tied, LoraConfig(r=4, target_modules=targets))
    with_adapter(load_model(PolicySpec(name_or_path="micro"), tokenizer), LoraConfig(r=4, target_modules="all-linear"))


def test_an_initialisation_that_rewrites_the_base_is_refused_where_the_base_is_the_kl_reference():
    """PiSSA rewrites the base weights into a residual, which the disabled adapter then runs as the KL reference:
    16.6 nats of KL per token from a policy equal to the pretrained model (SmolLM2)."""
    pissa = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    with pytest.raises(ValueError, match="rewrites the base weights"):
        GRPO(
            policy=PolicySpec(name_or_path="micro", peft=pissa),
            reward=RewardConfig(kl_coef=0.04, kl_in="loss", kl_estimator="k3"),
        )
    GRPO(policy=PolicySpec(name_or_path="micro", peft=pissa), reward=RewardConfig(kl_coef=0.0))  # no reference


@pytest.mark.parametrize("option", [{"gguf_file": "model.gguf"}, {"subfolder": "policy"}, {"revision": "v1"}])
def test_an_adapter_export_of_a_base_it_cannot_name_is_refused(option):
    """An adapter's config records its base by path or id only: an export of one on a GGUF file, in a subfolder or
    at a revision could not be loaded back ("Unrecognized model")."""
    peft = LoraConfig(r=4, target_modules=["q_proj"])
    with pytest.raises(ValueError, match="could not be loaded back onto it"):
        PolicySpec(name_or_path="some/model", load_kwargs=option, peft=peft, adapter_export="adapter")
    PolicySpec(name_or_path="some/model", load_kwargs=option, peft=peft)  # merged: a whole model
