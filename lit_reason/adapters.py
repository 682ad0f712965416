"""LoRA adapters on the policy (``policy.peft``, a ``peft.LoraConfig``), with PEFT.

The policy network stays the plain Hugging Face model, with PEFT's LoRA layers injected into its linear
layers: every forward of lit-reason (sampling with a KV cache, the prompt-sharing training forward, FSDP2's
per-layer sharding) runs it as before, and only the adapter's weights train. The base model is the frozen
reference of PPO and GRPO: ``adapters_disabled`` runs the same network without its adapters, so no second
copy of the model is kept. An export is the merged model (``save_pretrained``, loadable without PEFT) or the
adapter alone (``peft.PeftModel.from_pretrained`` on the base), as ``policy.adapter_export`` says.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from lit_reason.seeds import run_seed

AdapterExport = Literal["merged", "adapter"]


def with_adapter(model: torch.nn.Module, config: LoraConfig | None) -> torch.nn.Module:
    """``model`` with a new LoRA adapter injected (only its weights trainable), or ``model`` itself without a
    config. The adapter starts as the identity (LoRA's B is zero); its random A is drawn from the run's seed,
    so every rank (and every restart) makes the same one without a broadcast."""
    if config is None:
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seed(None))
        return get_peft_model(model, copy.deepcopy(config)).get_base_model()


# What PEFT adds to a model: LoRA layers, and the wrappers of modules it trains whole (``modules_to_save``,
# ``trainable_token_indices``).
ADAPTER_LAYERS = (BaseTunerLayer, AuxiliaryTrainingWrapper)


def has_adapter(model: torch.nn.Module) -> bool:
    return any(isinstance(module, ADAPTER_LAYERS) for module in model.modules())


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model: every LoRA layer passes its input through the base layer alone, and a
    module PEFT trains whole runs as its original copy."""
    layers = [module for module in model.modules() if isinstance(module, ADAPTER_LAYERS)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


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
    model). ``generation_config``: the trained network's (its suppressed tokens)."""
    peft_model = get_peft_model(base, copy.deepcopy(adapter))
    peft_model.get_base_model().load_state_dict(state)
    if generation_config is not None:
        peft_model.get_base_model().generation_config = copy.deepcopy(generation_config)
    if how == "merged":
        peft_model.merge_and_unload().save_pretrained(path)
    else:
        peft_model.save_pretrained(path)
        peft_model.get_base_model().generation_config.save_pretrained(path)  # its suppressed tokens
