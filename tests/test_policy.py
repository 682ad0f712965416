import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_reason import warm_start
from lit_reason.policy import (
    TINY_PRESETS,
    PolicySpec,
    _saved_quantized,
    build_char_tokenizer,
    eos_token_ids,
    is_policy_dir,
    load_model,
    load_tokenizer,
)


def test_char_tokenizer_round_trip_and_special_tokens():
    tokenizer = build_char_tokenizer()
    text = "Ann has 12 apples.\n12+7=<<12+7=19>>19\n#### 19"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text) + 1  # one token per character after BOS
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # Fuse decoder: no spaces between characters
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer("é").input_ids[1] == tokenizer.unk_token_id


def test_presets_build_without_downloads():
    tokenizer = build_char_tokenizer()
    sizes = {
        name: sum(p.numel() for p in load_model(PolicySpec(name_or_path=name), tokenizer).parameters())
        for name in TINY_PRESETS
    }
    assert sizes["micro"] < sizes["tiny"] < sizes["tiny-3m"] < 5_000_000
    overridden = load_model(PolicySpec(name_or_path="micro", preset_overrides={"num_hidden_layers": 1}), tokenizer)
    assert overridden.config.num_hidden_layers == 1
    a = load_model(PolicySpec(name_or_path="micro", seed=1), tokenizer).state_dict()
    b = load_model(PolicySpec(name_or_path="micro", seed=1), tokenizer).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_policy_loads_with_auto_classes_and_keeps_added_tokens(tmp_path):
    spec = PolicySpec(name_or_path="micro")
    tokenizer = load_tokenizer(spec)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[GOOD]", "[BAD]"]})
    model = load_model(spec, tokenizer)
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(tokenizer) == 102
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert is_policy_dir(tmp_path)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded_tokenizer("[GOOD]1").input_ids == tokenizer("[GOOD]1").input_ids
    assert torch.equal(loaded.get_input_embeddings().weight, embeddings)
    via_spec = load_model(
        PolicySpec(name_or_path=str(tmp_path)), load_tokenizer(PolicySpec(name_or_path=str(tmp_path)))
    )
    assert torch.equal(via_spec.get_input_embeddings().weight, embeddings)
    assert eos_token_ids(loaded, loaded_tokenizer) == [tokenizer.eos_token_id]


def test_trust_remote_code_is_off_by_default():
    assert PolicySpec().trust_remote_code is False


def test_a_checkpoint_saved_in_bf16_loads_in_float32_unless_asked(tmp_path):
    # transformers loads a checkpoint in its saved dtype; bf16 weights would round small optimizer updates away.
    tokenizer = build_char_tokenizer()
    load_model(PolicySpec(name_or_path="micro"), tokenizer).to(torch.bfloat16).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert {p.dtype for p in load_model(PolicySpec(name_or_path=str(tmp_path)), tokenizer).parameters()} == {
        torch.float32
    }
    asked = PolicySpec(name_or_path=str(tmp_path), load_kwargs={"dtype": "bfloat16"})
    assert {p.dtype for p in load_model(asked, tokenizer).parameters()} == {torch.bfloat16}
    # A checkpoint saved quantized (GPTQ, AWQ, ...) keeps the dtypes its kernels expect.
    assert not _saved_quantized(PolicySpec(name_or_path=str(tmp_path)))
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _saved_quantized(PolicySpec(name_or_path=str(tmp_path)))


def test_policy_options_that_would_be_ignored_or_clash_are_named():
    with pytest.raises(ValueError, match="'tiny3m': no such preset; did you mean 'tiny-3m'"):
        PolicySpec(name_or_path="tiny3m")  # was sent to the hub, a minute of retries
    with pytest.raises(ValueError, match="set trust_remote_code as policy.trust_remote_code"):
        PolicySpec(name_or_path="org/model", load_kwargs={"trust_remote_code": True})  # was a TypeError on loading
    with pytest.warns(UserWarning, match=r"policy.preset_overrides: \['num_hidden_layer'\] are not LlamaConfig"):
        PolicySpec(name_or_path="micro", preset_overrides={"num_hidden_layer": 6})  # was silently 2 layers
    eager = PolicySpec(name_or_path="micro", preset_overrides={"attn_implementation": "eager", "rope_theta": 5e5})
    assert load_model(eager, build_char_tokenizer()).config._attn_implementation == "eager"  # options, not typos
    with pytest.warns(UserWarning, match=r"load_kwargs \['dtype'\] do nothing for the tiny preset 'micro'"):
        PolicySpec(name_or_path="micro", load_kwargs={"dtype": "bfloat16"})


def test_a_warm_start_resolves_once_per_spec_whatever_changes_while_the_run_trains(tmp_path, monkeypatch):
    # Expert Iteration's restarts resolve the policy every round. A warm start's config (or data, or lit-reason's
    # code) edited while a run trained changed its cache key, and the next round trained another warm start and
    # restarted from it.
    monkeypatch.setenv("LIT_REASON_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "sft.yaml"
    config.write_text("seed_everything: 0\n")
    cached = warm_start.warm_start_dir(config)
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    spec = PolicySpec(name_or_path=f"config:{config}")
    assert spec.resolved() == str(cached)
    config.write_text("seed_everything: 1\n")
    monkeypatch.setattr(warm_start, "_train", lambda *_: pytest.fail("trained another warm start mid-run"))
    assert spec.resolved() == str(cached)
    reference = spec.with_load_kwargs({"dtype": "bfloat16"})  # PPO's reference, loaded in another dtype
    assert reference.resolved() == str(cached) and reference.load_kwargs == {"dtype": "bfloat16"}
    assert reference.name_or_path == spec.name_or_path and spec.load_kwargs == {}


def test_model_loading_options_stay_out_of_the_tokenizer_and_its_export(tmp_path):
    # Only five weight options were held back: use_safetensors, low_cpu_mem_usage, variant... reached the tokenizer
    # and were written into every export's tokenizer_config.json.
    tokenizer = build_char_tokenizer()
    load_model(PolicySpec(name_or_path="micro"), tokenizer).save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    options = {"use_safetensors": True, "low_cpu_mem_usage": True, "variant": None, "dtype": "float32"}
    loaded = load_tokenizer(PolicySpec(name_or_path=str(tmp_path / "policy"), load_kwargs=options))
    loaded.save_pretrained(tmp_path / "export")
    saved = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert not set(options) & set(saved)
