"""Tensor helpers every layer uses: positions under left padding, token log-probs, masked means, the
next-token loss, entropy, picking rows of a padded batch, eval mode. Depends on torch alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: (B, L) mask -> (B, L) ``cumsum - 1``, clamped at 0 on padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-prob of each token under the temperature-scaled softmax of the previous position's logits.

    (B, L, V), (B, L) -> (B, L), column 0 (never predicted) 0: the sampler's layout. Temperature 0 (greedy)
    uses the unscaled softmax, like the sampler.
    """
    scaled = logits[:, :-1].float() / (temperature or 1.0)
    chosen = scaled.log_softmax(-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(chosen, (1, 0))


def token_logprobs_by_rows(
    hidden: torch.Tensor,
    output_layer: torch.nn.Module,
    input_ids: torch.Tensor,
    temperature: float,
    max_logits: int = 1 << 27,
) -> torch.Tensor:
    """``token_logprobs`` of the logits ``output_layer(hidden)``, a few rows at a time: at most about
    ``max_logits`` logits exist at once (with their float32 copies), where the (B, L, V) logits of a real
    vocabulary would take gigabytes (256 rows of 1,200 tokens over 49,152: 60 GB in float32).

    (B, L, D) hidden states of positions, (B, L) ids -> (B, L), column 0 (never predicted) 0.
    """
    rows = max(1, max_logits // (input_ids.shape[1] * output_layer.out_features))
    return torch.cat(
        [
            token_logprobs(output_layer(hidden[first : first + rows]), input_ids[first : first + rows], temperature)
            for first in range(0, len(input_ids), rows)
        ]
    )


def next_token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the masked tokens, and how many there are.

    Args:
        logits: (B, L, V) logits; position t predicts token t + 1.
        input_ids: (B, L) long.
        loss_mask: (B, L) bool, True on tokens to predict (position 0 is never predicted).

    Returns:
        (scalar sum of -log p over masked tokens, scalar count of masked tokens).
    """
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (nll * mask.flatten()).sum(), mask.sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (0 if nothing is). (B, T), (B, T) -> scalar."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the temperature-scaled softmax at every position, in float32 (as ``token_logprobs``; 0: the
    unscaled one). (B, T, V) -> (B, T). Tokens at -inf logits (suppressed) count 0, as does their gradient."""
    logprobs = (logits.float() / (temperature or 1.0)).log_softmax(-1)
    probabilities = logprobs.exp()
    return -(probabilities * logprobs.masked_fill(probabilities == 0, 0.0)).sum(-1)


def without_tokens(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """``logits`` with the vocabulary entries ``token_ids`` at -inf, as a new tensor (gradients reach the
    others): the distribution a sampler that never draws those tokens draws from. (..., V), (N,) long -> (..., V).
    """
    return logits.index_fill(-1, token_ids, float("-inf"))


def take_rows(rows: torch.Tensor, attention_mask: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Rows ``rows`` of each (R, L) tensor, without the columns that are padding in every chosen row.

    Args:
        rows: (B,) long, the rows to take.
        attention_mask: (R, L), nonzero on real tokens: decides which columns stay.
        *tensors: (R, L, ...) tensors laid out like ``attention_mask``.

    Returns:
        ``attention_mask`` and then each tensor, (B, L', ...) with L' <= L.
    """
    columns = attention_mask[rows].bool().any(0)
    return [tensor[rows][:, columns] for tensor in (attention_mask, *tensors)]


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; afterwards every submodule gets back its own previous mode (a
    frozen reference model stays in eval even if the policy was training)."""
    previous = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for submodule, training in previous:
            submodule.training = training
