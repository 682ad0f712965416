"""The batch types algorithms train on, with documented shapes, and how fine-tuning examples become them.

A fine-tuning *example* is a pair (prompt ids, target ids + EOS); the sampler's ``SampleBatch`` layout
(left-padded prompts, responses, right padding) is what the RL batches keep.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch

from lit_reason.distributed import rank_and_world_size

Example = tuple[list[int], list[int]]  # (prompt ids, target ids + EOS)


@dataclass
class TokenBatch:
    """Sequences to fine-tune on, right-padded to the longest (B sequences of L tokens).

    Attributes:
        input_ids: (B, L) long. Prompt then target tokens (EOS included), pad id after.
        attention_mask: (B, L) long. 1 on real tokens.
        loss_mask: (B, L) bool. True on the tokens that are predicted and trained on (the target).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class LabelledBatch:
    """Sampled responses with their final correctness, in the sampler's layout (B rows, L columns).

    Attributes:
        input_ids: (B, L) long. Left-padded prompt, then the response, then padding.
        attention_mask: (B, L) long.
        response_mask: (B, L) bool. The response's tokens (EOS included): where the ORM is trained.
        labels: (B,) float. 1.0 if the response's final answer is correct.
        references: reference solutions of training questions for the trunk's language-modelling loss
            (``reference_lm_coef``), or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    labels: torch.Tensor
    references: TokenBatch | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PPOBatch:
    """One minibatch of a rollout on this rank: B responses over L columns (sampler layout).

    Attributes:
        input_ids: (B, L) long.
        attention_mask: (B, L) long.
        response_mask: (B, L) bool. Sampled tokens, EOS included: the actions.
        advantages: (B, L) float32. Advantages of the actions (GAE, or a critic-free estimator).
        global_tokens: response tokens in this minibatch on all ranks together.
        global_sequences: responses in this minibatch on all ranks together.
        prompt_length: P, the column where the responses start (columns before P - 1 predict no action).
        old_logprobs: (B, L) float32. Log-probs of the actions when sampled (training forward, rollout time),
            or None when the update is one step on the whole rollout: the policy is then still the sampling
            one and the update's own forward gives them.
        old_values: (B, L) float32. Critic values of the state before each action, at rollout time (with a
            critic).
        returns: (B, L) float32. Value targets (with a critic).
        ref_logprobs: (B, L) float32. The reference policy's log-probs of the actions (with a KL loss term).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    global_tokens: int
    global_sequences: int
    prompt_length: int
    old_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def response_columns(self) -> PPOBatch:
        """The batch from column P - 1 on: all that the loss reads (the logits of column P - 1 predict the first
        action), in the layout of ``response_logits``."""
        start = self.prompt_length - 1
        columns = {
            field.name: value[:, start:] if isinstance(value, torch.Tensor) else value
            for field in fields(self)
            for value in [getattr(self, field.name)]
        }
        return PPOBatch(**{**columns, "prompt_length": 1})


BATCH_TYPES = {batch_type.__name__: batch_type for batch_type in (TokenBatch, LabelledBatch, PPOBatch)}


def batch_state(batch: TokenBatch | LabelledBatch | PPOBatch) -> dict[str, Any]:
    """A batch as plain data (its type's name and its fields: tensors, numbers, None, nested batches) that a
    checkpoint holds and ``torch.load(..., weights_only=True)`` reads back; ``batch_from_state`` rebuilds it."""
    values = {field.name: getattr(batch, field.name) for field in fields(batch)}
    return {
        "type": type(batch).__name__,
        "fields": {k: batch_state(v) if is_dataclass(v) else v for k, v in values.items()},
    }


def batch_from_state(state: dict[str, Any]) -> TokenBatch | LabelledBatch | PPOBatch:
    """The batch ``batch_state`` made ``state`` of."""
    values = {k: batch_from_state(v) if isinstance(v, dict) else v for k, v in state["fields"].items()}
    return BATCH_TYPES[state["type"]](**values)


def fits_context(example: Example, max_length: int) -> bool:
    """Whether a (prompt ids, target ids) pair fits in ``max_length`` tokens."""
    return len(example[0]) + len(example[1]) <= max_length


def make_token_batch(examples: Sequence[Example], pad_token_id: int) -> TokenBatch:
    """Right-pad (prompt ids, target ids) pairs into a ``TokenBatch`` whose loss covers the targets."""
    width = max(len(prompt) + len(target) for prompt, target in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, (prompt, target) in enumerate(examples):
        end = len(prompt) + len(target)
        input_ids[row, :end] = torch.tensor(prompt + target, dtype=torch.long)
        attention_mask[row, :end] = 1
        loss_mask[row, len(prompt) : end] = True
    return TokenBatch(input_ids, attention_mask, loss_mask)


def batch_examples(
    examples: list[Example], batch_size: int, max_length: int, pad_token_id: int, seed
) -> list[TokenBatch]:
    """Shuffle (prompt, target) id pairs with ``seed`` and cut them into ``TokenBatch``es; examples longer
    than ``max_length`` are dropped with a warning."""
    kept = [e for e in examples if fits_context(e, max_length)]
    if len(kept) < len(examples):  # on any rank: each drops its own
        warnings.warn(
            f"rank {rank_and_world_size()[0]}: dropped {len(examples) - len(kept)} of {len(examples)} examples "
            f"longer than {max_length} tokens",
            stacklevel=2,
        )
    random.Random(repr(seed)).shuffle(kept)
    return [make_token_batch(kept[i : i + batch_size], pad_token_id) for i in range(0, len(kept), batch_size)]
