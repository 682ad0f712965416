"""Forwards of a causal LM through a KV cache: the sampler's steps, and a training forward over a rollout that
runs each prompt once for all of its samples; and a forward for the last hidden states alone.

A rollout repeats every prompt K times (a question's K samples). A plain forward over its rows computes each
prompt K times; ``response_logits`` runs the distinct prompts once, hands their KV cache to the rows that
repeat them and runs only the responses through the model. Gradients flow back through the shared cache into
the prompts' forward, so the result and its gradients are those of the plain forward (up to float rounding:
the matmuls have other shapes), at (P / K + Lr) / (P + Lr) of its cost for prompts of P tokens and responses
of Lr, and the logits of the prompt positions, which nothing reads, are never computed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from lit_reason.tensors import position_ids_from_mask


class CausalLMWithCache:
    """Calls a Hugging Face causal LM with a KV cache across transformers versions (the cache argument was
    renamed from ``past_key_values`` to ``cache``; ``logits_to_keep`` was ``num_logits_to_keep``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        parameters = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self.keep_arg = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), None)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        last_logits_only: bool = False,
    ) -> tuple[torch.Tensor, DynamicCache]:
        """Logits (B, T, V), or (B, 1, V) of the last position with ``last_logits_only``, of ``input_ids``
        (B, T) following the ``cache``'s tokens; ``attention_mask`` (B, cached + T) covers both. Returns the
        logits and the cache, now holding these tokens too."""
        kwargs: dict[str, Any] = {self.cache_arg: cache, "use_cache": True}
        if last_logits_only and self.keep_arg:
            kwargs[self.keep_arg] = 1
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        logits = output.logits[:, -1:] if last_logits_only else output.logits
        return logits, output.cache if self.cache_arg == "cache" else output.past_key_values


def response_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int):
    """The logits that predict a rollout's responses, each distinct prompt run once.

    Args:
        model: a Hugging Face causal LM.
        input_ids: (B, L) long, the sampler's layout: left-padded prompts in columns ``:prompt_length``, then
            the responses (L > P).
        attention_mask: (B, L) long, 0 on padding.
        prompt_length: P, the column where the responses start (at least 1).

    Returns:
        (B, L - P + 1, V) logits of columns P - 1 .. L - 1 (column t predicts token t + 1): those of the full
        forward's ``logits[:, P - 1:]``. Models whose cache cannot be shared this way take the full forward.
    """
    position_ids = position_ids_from_mask(attention_mask)
    start = prompt_length - 1
    # Decided by the model alone, never by the rows: under FSDP2 every rank must call the model as often.
    if not shares_prompt_cache(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        return logits[:, start:]
    # A prompt is its tokens and its padding: rows repeat one only if both agree.
    prompts = torch.cat([input_ids[:, :prompt_length], attention_mask[:, :prompt_length]], dim=1)
    distinct, row_prompt = torch.unique(prompts, dim=0, return_inverse=True)
    forward = CausalLMWithCache(model)
    prompt_ids, prompt_mask = distinct[:, :prompt_length], distinct[:, prompt_length:]
    first_logits, cache = forward(
        prompt_ids, prompt_mask, position_ids_from_mask(prompt_mask), DynamicCache(config=model.config), True
    )
    cache.batch_select_indices(row_prompt)  # indexing, so gradients reach the prompts' forward
    rest_logits, _ = forward(
        input_ids[:, prompt_length:], attention_mask, position_ids[:, prompt_length:], cache, last_logits_only=False
    )
    return torch.cat([first_logits[row_prompt], rest_logits], dim=1)


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden states (B, L, D) of a Hugging Face causal LM over (B, L) ``input_ids`` and
    ``attention_mask`` (left padding allowed), computing the logits of the last position only. Through the
    model's own ``forward``, as FSDP2 needs (it gathers the root's weights in the root's forward hook)."""
    keep_arg = CausalLMWithCache(model).keep_arg
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        output_hidden_states=True,
        **({keep_arg: 1} if keep_arg else {}),
    )
    return output.hidden_states[-1]


def shares_prompt_cache(model: torch.nn.Module) -> bool:
    """Whether a prompt's KV cache can stand in for its forward: only attention caches that ``batch_select_indices``
    indexes whole (full or sliding-window), not recurrent or linear-attention states; not under gradient
    checkpointing (which turns the cache off); not with RoPE scaling chosen per call from the longest position
    (``dynamic``, ``longrope``: the prompt's call would scale differently from the full sequence's)."""
    checkpointing = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else None
    if getattr(model, checkpointing or "is_gradient_checkpointing", False):
        return False
    if rope_scaled_per_call(model.config):
        return False
    layers = DynamicCache(config=model.config).layers
    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def rope_scaled_per_call(config) -> bool:
    """Whether the model's RoPE scaling is chosen per call from the longest position in it (``dynamic``,
    ``longrope``), so that a forward's result depends on the other positions of its batch."""
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    return isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope")
