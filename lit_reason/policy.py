"""Policies: any Hugging Face causal LM, or a tiny Llama with a character-level tokenizer built locally.

``PolicySpec`` names the model. ``load_tokenizer`` is cheap and runs in a LightningModule's ``__init__`` (so
special tokens can be added before anything else); ``load_model`` builds the weights and runs in
``configure_model``, where sharding strategies need it.
"""

from __future__ import annotations

import difflib
import json
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel
from tokenizers import Tokenizer, decoders, models, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from lit_reason.adapters import AdapterExport, save_adapted
from lit_reason.files import find_model_file, hub_location, with_adapter_location
from lit_reason.seeds import run_seed
from lit_reason.warm_start import is_exported, resolve_policy_path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# Characters of the tiny tokenizer: printable ASCII and newline cover the built-in task, GSM8K and SVAMP
# (their few non-ASCII characters become <unk>).
CHARACTERS = "\n" + "".join(c for c in string.printable if c not in "\t\r\x0b\x0c\n")

TINY_PRESETS: dict[str, dict[str, Any]] = {
    # ~0.9M parameters: the CPU default, trains on the built-in task in minutes.
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    # ~3.3M parameters: slower, higher ceiling.
    "tiny-3m": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4),
    # ~24K parameters: for tests.
    "micro": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
}


# LlamaConfig keywords that are not among its fields (``to_dict``) but configure the model all the same.
LLAMA_OPTIONS = frozenset({"attn_implementation", "rope_theta", "rope_scaling", "torch_dtype", "dtype"})


@dataclass
class PolicySpec:
    """Which language model to train.

    Args:
        name_or_path: a tiny preset (``tiny``, ``tiny-3m``, ``micro``: a Llama with a character-level
            tokenizer, built from scratch, no download), a local directory saved by ``save_pretrained``
            (for example an exported lit-reason policy), a Hugging Face hub name, or
            ``config:PATH.yaml``: the policy that config's ``fit`` exports, trained on first use and cached
            (the shared warm start of the RL configs).
        load_kwargs: passed to ``from_pretrained`` for model and tokenizer, e.g. ``{"dtype": "bfloat16",
            "revision": "main", "gguf_file": "model.gguf", "attn_implementation": "sdpa"}``. Without a
            ``dtype`` (or ``quantization_config``) the weights load in float32, whatever the checkpoint's.
        peft: train a LoRA adapter instead of the whole model (``peft.LoraConfig``: ``r``, ``lora_alpha``,
            ``target_modules``, ...); PPO's and GRPO's reference is then the base model, the adapter disabled.
        adapter_export: with ``peft``, what an export writes: ``merged`` (the adapter folded into the base
            weights: a plain model) or ``adapter`` (the adapter alone, for ``peft.PeftModel.from_pretrained``;
            lit-reason loads it as a policy, merged into its base; not for a tiny preset, which no file holds).
        trust_remote_code: run model code shipped with a checkpoint. Off: only enable it for code you trust.
        preset_overrides: LlamaConfig fields that override a tiny preset, e.g. ``{"num_hidden_layers": 6}``.
        max_length: longest prompt + response in tokens, for tiny presets (their position range).
        seed: initialises a tiny preset's weights (and the rows of added tokens); unset: the run's
            ``seed_everything``.
    """

    name_or_path: str = "tiny"
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    peft: LoraConfig | None = None
    adapter_export: AdapterExport = "merged"
    trust_remote_code: bool = False
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    max_length: int = 512
    seed: int | None = None

    def __post_init__(self) -> None:
        self._resolved: str | None = None  # ``resolved()``'s answer, once asked
        near = difflib.get_close_matches(self.name_or_path, TINY_PRESETS, n=1, cutoff=0.8)
        if near and not self.is_preset and not Path(self.name_or_path).expanduser().exists():
            raise ValueError(f"policy.name_or_path {self.name_or_path!r}: no such preset; did you mean {near[0]!r}?")
        if "trust_remote_code" in self.load_kwargs:
            raise ValueError("policy.load_kwargs: set trust_remote_code as policy.trust_remote_code, not a load kwarg")
        if self.is_preset and self.peft is not None and self.adapter_export == "adapter":
            raise ValueError(
                f"policy.adapter_export=adapter: the tiny preset {self.name_or_path!r} is built from a seed, not "
                "loaded, so an adapter exported alone would name no base model to load it onto; use "
                "policy.adapter_export: merged, or start from a saved model (a directory or a hub id)"
            )
        unrecorded = sorted({"gguf_file", "subfolder", "revision"} & set(self.load_kwargs))
        if self.peft is not None and self.adapter_export == "adapter" and unrecorded:
            raise ValueError(
                f"policy.adapter_export=adapter: the base model is loaded with policy.load_kwargs {unrecorded}, which "
                "an adapter's config does not record, so the export could not be loaded back onto it; use "
                "policy.adapter_export: merged"
            )
        if self.is_preset:
            # LlamaConfig keeps any keyword as an attribute, so a misspelt field would change nothing, silently;
            # some real options (attn_implementation, rope_theta) are read by it without being fields.
            unknown = sorted(set(self.preset_overrides) - set(LlamaConfig().to_dict()) - LLAMA_OPTIONS)
            if unknown:
                warnings.warn(
                    f"policy.preset_overrides: {unknown} are not LlamaConfig fields; a misspelt one changes nothing",
                    stacklevel=2,
                )
            if self.load_kwargs:
                warnings.warn(
                    f"load_kwargs {sorted(self.load_kwargs)} do nothing for the tiny preset {self.name_or_path!r}, "
                    "which is built, not loaded (its options are preset_overrides)",
                    stacklevel=2,
                )

    @property
    def is_preset(self) -> bool:
        return self.name_or_path in TINY_PRESETS

    @property
    def location(self) -> dict[str, Any]:
        """The ``load_kwargs`` that say where the checkpoint's files are (revision, folder, cache, token), for
        reading its other files as ``from_pretrained`` reads the weights."""
        return hub_location(self.load_kwargs)

    def resolved(self) -> str:
        """Where the weights come from: ``name_or_path``, with a ``config:`` warm start trained if needed.

        Resolved once: a run's later loads (each Expert Iteration round's restart) read the directory its first
        did, even if the warm start's config, data or lit-reason's code change while it runs (which changes the
        warm start's cache key: it would train another warm start mid-run, and restart from that)."""
        if self._resolved is None:
            self._resolved = resolve_policy_path(self.name_or_path)
        return self._resolved

    @property
    def resolution(self) -> str | None:
        """The directory (or name) ``resolved()`` answered, None before it was asked."""
        return self._resolved

    def with_load_kwargs(self, extra: dict[str, Any]) -> PolicySpec:
        """This policy loaded with ``extra`` ``load_kwargs`` too, from the directory this spec resolved to."""
        spec = replace(self, load_kwargs={**self.load_kwargs, **extra})
        spec._resolved = self.resolved()
        return spec


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII as a real ``PreTrainedTokenizerFast``.

    Special tokens come first (pad 0, bos 1, eos 2, unk 3); pad is distinct from EOS so that masking padding
    can never mask an EOS. The post-processor prepends BOS, so prompts are tokenized identically in training
    and sampling. ``decoders.Fuse`` joins characters back without spaces.
    """
    vocab = {token: index for index, token in enumerate([PAD, BOS, EOS, UNK, *CHARACTERS])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=True))
    backend.add_special_tokens([PAD, BOS, EOS, UNK])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def load_tokenizer(spec: PolicySpec) -> PreTrainedTokenizerFast:
    """The policy's tokenizer, with a pad token (EOS if the model has none; masks never rely on pad ids)."""
    if spec.is_preset:
        return build_char_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(
        spec.resolved(), trust_remote_code=spec.trust_remote_code, **_tokenizer_kwargs(spec.load_kwargs)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: PolicySpec,
    tokenizer: PreTrainedTokenizerFast,
    new_row_spread: float = 0.0,
    new_token_ids: Sequence[int] = (),
) -> torch.nn.Module:
    """The policy network, with embeddings grown to fit tokens added to ``tokenizer``.

    New input-embedding rows start at the mean of the existing ones (Hugging Face's mean resizing), plus, with
    ``new_row_spread > 0``, Gaussian noise of that many times the existing rows' per-dimension standard
    deviation, drawn from a generator seeded by ``spec.seed``: tokens the policy must tell apart (return
    tokens) then start apart instead of as near-identical copies of the mean. ``new_token_ids`` (tokens the
    caller added to the tokenizer) get the same start where the matrix already had rows for them: a vocabulary
    padded past its tokenizer (Qwen's, to a multiple of 128) holds untrained spare rows, often all zeros."""
    if spec.is_preset:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=spec.max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **{"tie_word_embeddings": True, **TINY_PRESETS[spec.name_or_path], **spec.preset_overrides},
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run_seed(spec.seed))
            model = LlamaForCausalLM(config)
    else:
        model = _load_pretrained(spec)
        if getattr(model, "generation_config", None) is not None:  # generate() stops where the sampler does
            model.generation_config.eos_token_id = eos_token_ids(model, tokenizer)
    old_rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    # A preset is built with a row for every token, randomly initialised like the rest: nothing is spare.
    spare = [] if spec.is_preset else sorted(i for i in new_token_ids if i < old_rows)
    if spare:
        start_at_mean(model, spare, before=min(new_token_ids))
    new_rows = sorted({*spare, *range(old_rows, len(tokenizer))})
    if new_rows and new_row_spread > 0:
        spread_rows(model.get_input_embeddings().weight, new_rows, new_row_spread, run_seed(spec.seed))
    return model


def _load_pretrained(spec: PolicySpec) -> torch.nn.Module:
    """The saved model ``spec`` names (a directory or a hub id); an ``adapter_export: adapter`` export merged
    into its base model."""
    path = spec.resolved()
    adapter = find_model_file(path, "adapter_config.json", **spec.location)
    if adapter is not None and find_model_file(path, "config.json", **spec.location) is None:
        return _merged_adapter_export(spec, path, json.loads(adapter.read_text()))
    # float32 unless asked otherwise: transformers loads a checkpoint in the dtype it was saved in (bf16 for
    # most hub models), where bf16-mixed precision would then keep bf16 weights and round small updates away.
    dtype_given = {"dtype", "torch_dtype", "quantization_config"} & spec.load_kwargs.keys()
    keep = dtype_given or _saved_quantized(spec)
    load_kwargs = spec.load_kwargs if keep else {"dtype": torch.float32, **spec.load_kwargs}
    return AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=spec.trust_remote_code, **with_adapter_location(_dequantizing_gguf(load_kwargs))
    )


def _merged_adapter_export(spec: PolicySpec, path: str, adapter: dict[str, Any]) -> torch.nn.Module:
    """An adapter exported alone (``path``, whose ``adapter_config.json`` is ``adapter``), folded into the base
    model it names, which loads as a policy does (float32 unless ``load_kwargs`` ask otherwise; an adapter
    export itself). The result is named after ``path``: an adapter trained on it and exported alone names it as
    its base, not the model this one was merged into."""
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"policy {path}: this LoRA adapter names no base model (adapter_config.json's base_model_name_or_path "
            "is null: exported from a tiny preset, which is built, not loaded). Set base_model_name_or_path to the "
            "base model's directory or hub id, or export with policy.adapter_export: merged"
        )
    # revision and subfolder locate the adapter; the base is where the adapter says, at its recorded revision.
    base_kwargs = {k: v for k, v in spec.load_kwargs.items() if k not in ("revision", "subfolder")}
    if adapter.get("revision"):
        base_kwargs["revision"] = adapter["revision"]
    base_spec = PolicySpec(name_or_path=base, load_kwargs=base_kwargs, trust_remote_code=spec.trust_remote_code)
    merged = PeftModel.from_pretrained(_load_pretrained(base_spec), path, **spec.location).merge_and_unload()
    generation = find_model_file(path, "generation_config.json", **spec.location)
    if generation is not None:  # the trained policy's (its suppressed tokens), not the base's
        merged.generation_config = GenerationConfig.from_pretrained(generation.parent)
    merged.name_or_path = merged.config.name_or_path = path
    return merged


def _dequantizing_gguf(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` options that load a GGUF file as plain float weights. Since transformers 5.24 a GGUF
    model loads with its quantizer attached unless asked to dequantize: its weights stay in GGUF blocks where the
    ``kernels`` package is installed, and even dequantized the model is marked quantized, untrainable and
    refuses ``save_pretrained`` (an export)."""
    gguf_config = getattr(transformers, "GgufConfig", None)  # (earlier versions always dequantize)
    if "gguf_file" not in load_kwargs or "quantization_config" in load_kwargs or gguf_config is None:
        return load_kwargs
    return {**load_kwargs, "quantization_config": gguf_config(dequantize=True)}


def _saved_quantized(spec: PolicySpec) -> bool:
    """Whether the checkpoint was saved quantized (GPTQ, AWQ, FP8, bitsandbytes: its config holds a
    ``quantization_config``), whose kernels fix the dtypes themselves. A GGUF file is dequantized on loading."""
    if "gguf_file" in spec.load_kwargs:
        return False
    config = AutoConfig.from_pretrained(spec.resolved(), trust_remote_code=spec.trust_remote_code, **spec.location)
    return getattr(config, "quantization_config", None) is not None


@torch.no_grad()
def start_at_mean(model: torch.nn.Module, rows: list[int], before: int) -> None:
    """Set rows ``rows`` of the input (and an untied output) embedding to the mean of rows ``[0, before)``."""
    matrices = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m}
    for weight in matrices.values():
        weight[rows] = weight[:before].float().mean(0).to(weight.dtype)


def save_policy(
    policy: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    spec: PolicySpec,
    fresh_base: Callable[[], torch.nn.Module],
) -> None:
    """Save ``policy`` (its full state dict ``state``) where ``from_pretrained`` loads it; trained with an
    adapter (``spec.peft``), as ``spec.adapter_export`` says, from a fresh copy of the base (``fresh_base()``)."""
    if spec.peft is None:
        policy.save_pretrained(path, state_dict=state)
    else:
        save_adapted(fresh_base(), spec.peft, state, path, spec.adapter_export, policy.generation_config)


@torch.no_grad()
def spread_rows(weight: torch.Tensor, rows: list[int], spread: float, seed: int) -> None:
    """Add to rows ``rows`` (ascending) of an embedding matrix (V, D) Gaussian noise with ``spread`` times the
    per-dimension standard deviation of the rows before the first of them."""
    generator = torch.Generator().manual_seed(seed)
    std = weight[: rows[0]].float().std(dim=0)
    noise = torch.randn(len(rows), weight.shape[1], generator=generator) * std * spread
    weight[rows] += noise.to(weight.dtype)


def disable_dropout(network: torch.nn.Module) -> None:
    """Dropout off everywhere in ``network``, so a training-mode forward computes what an eval-mode one does.

    Besides ``nn.Dropout`` modules, Hugging Face attention layers copy their dropout probability from the
    config into a float attribute when built (Llama's ``self.attention_dropout``) and apply it in train mode,
    so every float attribute of a module or config named like a dropout probability (or a LayerDrop rate) is
    set to 0 as well; the exported config then records 0.
    """
    for module in network.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):  # Dropout, Dropout1d-3d, AlphaDropout
            module.p = 0.0
        holders = [module, getattr(module, "config", None)]
        for holder in (h for h in holders if h is not None):
            for name, value in list(vars(holder).items()):
                if _is_dropout_probability(name, value):
                    setattr(holder, name, 0.0)


def _is_dropout_probability(name: str, value: Any) -> bool:
    named = any(word in name for word in ("dropout", "pdrop", "layerdrop"))  # layerdrop skips whole layers
    return isinstance(value, float) and named


def eos_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS, the generation config's (chat models often end
    turns with a token other than the tokenizer's EOS) and the chat template's end of turn (``chat_turn_end_id``:
    a base checkpoint's EOS can be its document end while its template closes turns with another token)."""
    ids = {tokenizer.eos_token_id, chat_turn_end_id(tokenizer)}
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list | tuple) else [configured])
    return sorted(i for i in ids if i is not None)


# Assistant text that no template changes, to find what a template writes after an assistant turn.
_TURN_PROBE = "lit-reason turn end probe"


def chat_turn_end_id(tokenizer: PreTrainedTokenizerFast) -> int | None:
    """The special token a tokenizer's chat template closes an assistant turn with (``<|im_end|>``,
    ``<|eot_id|>``), or None: no template, one that refuses a one-turn conversation, or one that closes a turn
    with plain text."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    conversation = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # noqa: BLE001 - a template's own refusal (jinja2's TemplateError), e.g. of this conversation
        return None
    after = text[text.rindex(_TURN_PROBE) + len(_TURN_PROBE) :].lstrip() if _TURN_PROBE in text else ""
    # Special tokens only: an added plain-text token ("\n\n") that a template closes turns with is text.
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    special = sorted({*tokenizer.all_special_tokens, *added}, key=len, reverse=True)
    return next((tokenizer.convert_tokens_to_ids(t) for t in special if t and after.startswith(t)), None)


def response_end_id(tokenizer: PreTrainedTokenizerFast, prompt_style: str) -> int:
    """The token a fine-tuning target ends with: after a chat prompt, the template's end of turn; else the EOS."""
    turn_end = chat_turn_end_id(tokenizer) if prompt_style == "chat" else None
    return tokenizer.eos_token_id if turn_end is None else turn_end


def is_policy_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory a policy was saved to (config and tokenizer)."""
    path = Path(path)
    return is_exported(path) and any(path.glob("tokenizer*"))


# The load options that say where a tokenizer is (besides the hub location): the rest are the weights' (dtype,
# quantization, use_safetensors, low_cpu_mem_usage, ...), which a tokenizer keeps and writes into every export.
TOKENIZER_LOCATION_OPTIONS = frozenset({"gguf_file", "code_revision", "force_download", "proxies"})


def _tokenizer_kwargs(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    return hub_location(load_kwargs) | {k: v for k, v in load_kwargs.items() if k in TOKENIZER_LOCATION_OPTIONS}
