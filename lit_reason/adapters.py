"""LoRA adapters on the policy (``policy.peft``, a ``peft.LoraConfig``), with PEFT.

The policy network stays the plain Hugging Face model, with PEFT's LoRA layers injected into its linear
layers: every forward of lit-reason (sampling with a KV cache, the prompt-sharing training forward, FSDP2's
per-layer sharding) runs it as before, and only the adapter's weights train. The base model is the frozen
reference of PPO and GRPO: ``adapters_disabled`` runs the same network without its adapters, so no second
copy of the model is kept. PPO's critic can be a second adapter on the same network (``add_adapter``), run in
place of the policy's for the values (``adapter_active``). An export is the policy: the merged model
(``save_pretrained``, loadable without PEFT) or its adapter alone (``peft.PeftModel.from_pretrained`` on the
base), as ``policy.adapter_export`` says.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from lit_reason.seeds import run_seed

AdapterExport = Literal["merged", "adapter"]
POLICY_ADAPTER = "default"  # PEFT's name for the first adapter
CRITIC_ADAPTER = "critic"


def with_adapter(model: torch.nn.Module, config: LoraConfig | None) -> torch.nn.Module:
    """``model`` with a new LoRA adapter injected (only its weights trainable), or ``model`` itself without a
    config. The adapter starts as the identity (LoRA's B is zero); its random A is drawn from the run's seed,
    so every rank (and every restart) makes the same one without a broadcast."""
    if config is None:
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed(None))
        adapted = get_peft_model(model, copy.deepcopy(config)).get_base_model()
    _refuse_lora_on_tied_embeddings(adapted)
    return adapted


def _refuse_lora_on_tied_embeddings(model: torch.nn.Module) -> None:
    """LoRA on an output head tied to the input embeddings (or on those) changes one of them in training, and
    both once merged into the shared weight: the export would be another model."""
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or _base_weight(embeddings) is not _base_weight(head):
        return
    adapted = [
        name for name, module in model.named_modules() if isinstance(module, LoraLayer) and module in (embeddings, head)
    ]
    if adapted:
        raise ValueError(
            f"policy.peft puts LoRA on {adapted}, and this model ties its output head to its input embeddings: "
            "merged into the shared weight, the adapter would change both, and the export would not be the trained "
            "model. Leave them out of target_modules (or train them whole with modules_to_save)"
        )


def _base_weight(module: torch.nn.Module) -> torch.Tensor:
    return getattr(module, "base_layer", module).weight


# What PEFT adds to a model: LoRA layers, and the wrappers of modules it trains whole (``modules_to_save``,
# ``trainable_token_indices``).
ADAPTER_LAYERS = (BaseTunerLayer, AuxiliaryTrainingWrapper)


def has_adapter(model: torch.nn.Module) -> bool:
    return any(isinstance(module, ADAPTER_LAYERS) for module in model.modules())


def adapter_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [module for module in model.modules() if isinstance(module, ADAPTER_LAYERS)]


def of_adapter(parameter_name: str, adapter: str) -> bool:
    """Whether a parameter (or state-dict key) of a network with adapters belongs to ``adapter``: PEFT names
    them ``...lora_A.<adapter>.weight``, ``...modules_to_save.<adapter>.weight``, ``...lora_embedding_A.<adapter>``."""
    return f".{adapter}." in parameter_name or parameter_name.endswith(f".{adapter}")


def add_adapter(model: torch.nn.Module, config: LoraConfig, name: str) -> None:
    """Inject a second adapter ``name`` into ``model``, which has one (``with_adapter``): trainable, starting as
    the identity, and inactive: the model still runs its first adapter (``adapter_active`` switches)."""
    layers = adapter_layers(model)
    active = [layer.active_adapters for layer in layers]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # two adapters: what we want
        torch.manual_seed(run_seed(None) + 1)  # not the first adapter's random A
        inject_adapter_in_model(copy.deepcopy(config), model, adapter_name=name)
    for layer, adapters in zip(layers, active, strict=True):  # PEFT makes the new adapter the active one
        layer.set_adapter(adapters)
    for parameter_name, parameter in model.named_parameters():
        if of_adapter(parameter_name, name):
            parameter.requires_grad_(True)


def below_the_head(config: LoraConfig, model: torch.nn.Module) -> LoraConfig:
    """A LoRA configuration for an adapter beside ``config``'s (which ``model`` has) that reads the last hidden
    states and never the logits (a critic's): LoRA of the same rank, scaling and kind on the same layers, less
    the output head; no modules trained whole, trainable tokens or biases (their copies under the head would
    never train, DDP would wait for their gradients, and biases are shared); initialised as the identity
    (initialisations such as PiSSA rewrite the base weights the policy and the reference run on)."""
    output = model.get_output_embeddings()
    head = next((name for name, module in model.named_modules() if module is output and output is not None), None)
    targets = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and not (head is not None and (name == head or name.startswith(f"{head}.")))
    )
    if not targets:
        raise ValueError(
            "critic.kind=lora: policy.peft adapts only the output head, which the critic does not use; add layers "
            "below it to policy.peft.target_modules (e.g. all-linear)"
        )
    return LoraConfig(
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        fan_in_fan_out=config.fan_in_fan_out,
        rank_pattern=copy.deepcopy(config.rank_pattern),
        alpha_pattern=copy.deepcopy(config.alpha_pattern),
        target_modules=targets,  # full module names: exactly the policy's layers
    )


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model: every LoRA layer passes its input through the base layer alone, and a
    module PEFT trains whole runs as its original copy."""
    layers = adapter_layers(model)
    with _trainable_kept(layers):
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)


@contextlib.contextmanager
def adapter_active(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Run ``model`` with its adapter ``name`` in place of the one it runs; where ``name`` has no layer (the
    output head, modules the first adapter trains whole), the base model's."""
    layers = _outermost_adapter_layers(model)
    active = [layer.active_adapters for layer in layers]
    with _trainable_kept(layers):
        for layer in layers:
            if isinstance(layer, AuxiliaryTrainingWrapper):  # a whole copy per adapter, or the original module
                layer.set_adapter([name] if layer.check_set_adapter([name]) is not None else [])
            else:
                layer.set_adapter(name)  # a LoRA layer without ``name`` runs its base layer alone
        try:
            yield
        finally:
            for layer, adapters in zip(layers, active, strict=True):
                layer.set_adapter(adapters)


def _outermost_adapter_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    # A wrapper of a module PEFT trains (trainable tokens) switches the adapter layers inside it itself.
    wrappers = [layer for layer in adapter_layers(model) if isinstance(layer, AuxiliaryTrainingWrapper)]
    inside = {id(inner) for wrapper in wrappers for inner in wrapper.modules() if inner is not wrapper}
    return [layer for layer in adapter_layers(model) if id(layer) not in inside]


@contextlib.contextmanager
def _trainable_kept(layers: Sequence[torch.nn.Module]) -> Iterator[None]:
    # PEFT's switches also set requires_grad: only active adapters train, and none while disabled. Every
    # adapter here trains (the critic's too), and FSDP2 gives the flag to the parameters it gathers, so the
    # flags are put back before any backward.
    flags = [(parameter, parameter.requires_grad) for layer in layers for parameter in layer.parameters()]
    try:
        yield
    finally:
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def _in_half_precision(model: torch.nn.Module) -> bool:
    """Whether ``model``'s floating-point weights are bfloat16 or float16 (not quantized: its kernels own those)."""
    if getattr(getattr(model, "config", None), "quantization_config", None) is not None:
        return False
    return any(parameter.dtype in (torch.bfloat16, torch.float16) for parameter in model.parameters())


def save_adapted(
    base: torch.nn.Module,
    adapter: LoraConfig,
    state: dict[str, torch.Tensor],
    path: str | Path,
    how: AdapterExport,
    generation_config=None,
) -> None:
    """Save a network trained with ``adapter`` from its full state dict ``state``, into ``base``, a fresh copy
    of its base model (on rank 0's CPU: the trained network may be sharded): ``merged`` writes the base model
    with the adapter folded into its weights, ``adapter`` the adapter alone (with its config, naming the base
    model: a local one by its absolute path). A merged export of a bfloat16 or float16 base is float32. A critic's
    adapter in ``state`` is left out. ``generation_config``: the trained network's (its suppressed tokens)."""
    if how == "merged" and _in_half_precision(base):
        # Folded into bfloat16 weights, a small adapter's change rounds away (a change below half a weight's last
        # place vanishes): merged into a float32 copy, the export computes what was trained.
        base = base.float()
    peft_model = get_peft_model(base, copy.deepcopy(adapter))
    recorded = peft_model.peft_config[POLICY_ADAPTER]
    if recorded.base_model_name_or_path and Path(recorded.base_model_name_or_path).expanduser().is_dir():
        # A relative path would be read from the loader's working directory (a warm start is loaded from any).
        recorded.base_model_name_or_path = str(Path(recorded.base_model_name_or_path).expanduser().resolve())
    policy_state = {key: value for key, value in state.items() if not of_adapter(key, CRITIC_ADAPTER)}
    peft_model.get_base_model().load_state_dict(policy_state)
    if generation_config is not None:
        peft_model.get_base_model().generation_config = copy.deepcopy(generation_config)
    if how == "merged":
        peft_model.merge_and_unload().save_pretrained(path)
    else:
        peft_model.save_pretrained(path)
        peft_model.get_base_model().generation_config.save_pretrained(path)  # its suppressed tokens
