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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

if TYPE_CHECKING:
    from lit_reason.policy import PolicySpec

AdapterExport = Literal["merged", "adapter"]


def with_adapter(model: torch.nn.Module, config: LoraConfig | None) -> torch.nn.Module:
    """``model`` with a new LoRA adapter injected (only its weights trainable), or ``model`` itself without a
    config. The adapter starts as the identity (LoRA's B is zero)."""
    if config is None:
        return model
    return get_peft_model(model, copy.deepcopy(config)).get_base_model()


def has_adapter(model: torch.nn.Module) -> bool:
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model: every LoRA layer passes its input through the base layer alone."""
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def save_policy(
    policy: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    spec: PolicySpec,
    fresh_base: Callable[[], torch.nn.Module],
) -> None:
    """Save ``policy`` (its full state dict ``state``) where ``from_pretrained`` loads it. Trained with an
    adapter (``spec.peft``), as ``spec.adapter_export`` says: ``merged``, the base model with the adapter
    folded into its weights, or ``adapter``, the adapter alone (with its config, naming the base model); both
    from a fresh copy of the base model (``fresh_base()``, on rank 0's CPU): the trained one may be sharded."""
    if spec.peft is None:
        policy.save_pretrained(path, state_dict=state)
        return
    peft_model = get_peft_model(fresh_base(), copy.deepcopy(spec.peft))
    peft_model.get_base_model().load_state_dict(state)
    peft_model.get_base_model().generation_config = copy.deepcopy(policy.generation_config)  # suppressed tokens
    if spec.adapter_export == "merged":
        peft_model.merge_and_unload().save_pretrained(path)
    else:
        peft_model.save_pretrained(path)
