"""Batched sampling with a KV cache, shared by rollouts and evaluation.

The sampler returns everything a trainer needs from a rollout in one ``SampleBatch``: token ids, masks, the
log-probability of every sampled token under the distribution it was sampled from, and the decoded text.

Design points:

* **Log-probs** are those of the temperature-scaled, *unfiltered* softmax (top-k / top-p only decide which
  tokens may be drawn), so a training forward at the same temperature reproduces them exactly and PPO's first
  ratio is 1.
* **Reproducible per question**: every row draws each token by inverting the cumulative distribution at one
  uniform number, a counter-based hash of (row seed, step), so a question's samples do not depend on the
  batch it lands in, the rank, the batch size or the device wherever its logits are the same; and the noise
  costs one number per row, not one per vocabulary entry. With the micro models of the tests the logits are
  bitwise the same. With a real model they are not: a prompt's logits move in their last bits when its batch
  holds other prompts, is padded wider or runs another decoding path (about 1e-5 for SmolLM2 in float32 on a
  CPU; more in bf16 and on a GPU), and the draw turns such a move into another token about once in a thousand
  draws (4 of 64 SmolLM2 samples of 96 tokens parted between batch sizes 64 and 8). A resumed or redone round
  and a paired evaluation draw in the same batches, and stay exact. A token whose
  logit is -inf (filtered, suppressed) has no cumulative mass and is never drawn. The draw counts probabilities
  in units of 2**-30 (``draw_from_probabilities``): each step's distribution is the softmax's to within a total
  variation of V * 2**-30 (5e-5 at V = 49,152; about 2e-5 measured on random logits), and a whole response's
  to within the sum over its steps (a 512-token one: 2.3% by the bound); the recorded log-probs are the
  softmax's own.
* **One prefill per prompt**: a prompt's K samples share its KV cache, computed once.
* **Finished rows leave the batch**: once a quarter of the rows have emitted EOS they are dropped from the
  KV cache, so short samples stop paying for long ones; and the cache grows into preallocated room instead
  of being concatenated every step (together with the shared prefill, the speed-up over ``model.generate``).
  The host looks for finished rows every ``finished_check_every`` steps; the sampler's own bookkeeping in
  between does not wait for the device.
* **Guidance** (optional): every step's distribution contrasts the prompt with a negative prompt (the same
  prompt behind another response prefix, e.g. the bad-return token of a return-conditioned policy) as in
  classifier-free guidance, ``log p_neg + scale * (log p - log p_neg)`` over log-softmaxes: the formula of
  Hugging Face's ``guidance_scale`` with ``negative_prompt_ids``. The negative rows run beside the sampled
  ones through the same forward passes and receive the same tokens.
* **Static decoding** (optional, ``decoding``): the KV cache and every per-row tensor preallocated, finished
  rows compacted into batch buckets, and on a GPU each bucket's step captured once as a CUDA graph
  (``static_decoding``); the same samples as the dynamic cache's.
* **Distributed**: with ``synced=True`` every rank keeps running forward passes (on a placeholder row once
  its own rows are done) until all ranks are done, as sharded models (FSDP) need every rank in every
  forward.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, get_args

import torch
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer

from lit_reason.cached_forward import CausalLMWithCache
from lit_reason.conditioning import Conditioning
from lit_reason.distributed import is_distributed, rank_and_world_size, reduce_int
from lit_reason.static_decoding import (
    GraphedSteps,
    SlotCache,
    bucket_for,
    columns_for,
    move_to_front,
    supports_static_cache,
)
from lit_reason.tensors import position_ids_from_mask, without_tokens

Decoding = Literal["dynamic", "static", "cuda_graph"]
MIN_TEMPERATURE = 1e-6  # of a sampled (not greedy) decoding

_HASH_MULTIPLIER = 0x45D9F3B  # small enough that 32-bit products never overflow int64
_MASK32 = 0xFFFFFFFF


@dataclass
class SamplingConfig:
    """How responses are sampled.

    Args:
        num_samples: responses per prompt (K).
        temperature: softmax temperature; 0 means greedy decoding (a sampled one needs at least 1e-6).
        top_k: sample only among the k most likely tokens (0: no limit).
        top_p: sample only from the smallest set of tokens whose probability reaches top_p (1: no limit).
        max_new_tokens: longest response; a response that reaches it without EOS is marked truncated.
        batch_size: sequences per forward pass (prompts are never split across two batches).
        seed: with the question id (and the round, in training), fixes every sample. Unset: rollouts follow
            the run's ``seed_everything``, evaluation uses a fixed seed (runs stay paired on its noise).
        finished_check_every: decoding steps between checks for finished rows, each of which waits for the
            device (and, distributed, for every rank) and may drop finished rows from the batch; rows that
            finish in between keep stepping, their tokens not kept. The draws do not depend on it (the logits
            can, in their last bits: see the module's notes). Unset: every step on a CPU (waiting costs nothing
            there), every 8 on an accelerator.
        decoding: how the decoding steps run; the draws do not depend on it, the logits only in their last bits
            (the paths' kernels round differently, more in bf16), so a sample can part at a near-tie.
            ``dynamic``: a KV cache that grows with the steps and is copied smaller once a quarter of the rows
            are done (fastest on a CPU). ``static``: a KV cache preallocated once per call, the live rows
            compacted into batch buckets (the largest chunk's row count, then powers of two), attention over
            the columns written so far in blocks of 64. ``cuda_graph``: ``static`` with the step of each bucket
            and block (forward, draw, bookkeeping) captured once as a CUDA graph and replayed, which removes the
            host from the steps (CUDA only, sdpa attention; not for FSDP2-sharded models, whose forward gathers
            weights).
    """

    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 256
    seed: int | None = None
    finished_check_every: int | None = None
    decoding: Decoding = "dynamic"

    def __post_init__(self) -> None:
        refused = [
            f"{name} {value} (must be {rule})"
            for name, value, rule, ok in (
                ("num_samples", self.num_samples, "at least 1", self.num_samples >= 1),
                ("max_new_tokens", self.max_new_tokens, "at least 1", self.max_new_tokens >= 1),
                ("batch_size", self.batch_size, "at least 1", self.batch_size >= 1),
                ("finished_check_every", self.finished_check_every, "at least 1, or unset",
                 self.finished_check_every is None or self.finished_check_every >= 1),
                ("temperature", self.temperature, ">= 0", self.temperature >= 0),
                ("top_k", self.top_k, ">= 0", self.top_k >= 0),
                ("top_p", self.top_p, "in (0, 1]", 0 < self.top_p <= 1),
            )
            if not ok
        ]  # fmt: skip
        if refused:
            raise ValueError(f"sampling settings (rollout or evaluation): {'; '.join(refused)}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / T overflow float32 as T nears 1e-37: NaN log-probs
            raise ValueError(
                f"temperature {self.temperature:g} draws the greedy token in all but name (below {MIN_TEMPERATURE:g}), "
                "and as it nears 1e-37 the scaled logits overflow: use temperature 0 (greedy decoding)"
            )
        if self.decoding not in get_args(Decoding):
            raise ValueError(f"decoding must be one of {', '.join(get_args(Decoding))}, not {self.decoding!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def guided_logits(logits: torch.Tensor, negative_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(R, V), (R, V) -> (R, V): ``log p_neg + scale * (log p - log p_neg)``, over log-softmaxes; -inf where
    the policy's own logit is -inf. Where only the negative's is, the formula gives NaN: there a scale below 1
    (nearer the negative) keeps the token out, and one of 1 or more gives it ``log p`` (not the formula's +inf,
    which would force it)."""
    positive, negative = logits.log_softmax(-1), negative_logits.log_softmax(-1)
    ruled_out_by_negative = positive if scale >= 1 else float("-inf")
    guided = torch.where(negative == float("-inf"), ruled_out_by_negative, negative + scale * (positive - negative))
    return guided.masked_fill(positive == float("-inf"), float("-inf"))


@dataclass
class SampleBatch:
    """Sampled responses, R = prompts x num_samples rows (row ``p * K + k`` is sample k of prompt p).

    Each row is ``[left-padded prompt | response | right padding]`` over L = P + T columns, where P is the
    longest prompt (with the response prefix) and T the longest response. A training forward uses
    ``position_ids = attention_mask.cumsum(-1) - 1``.

    Attributes:
        input_ids: (R, L) long. Prompt, response prefix, sampled tokens; pad id elsewhere.
        attention_mask: (R, L) long. 1 on prompt, prefix and sampled tokens (EOS included).
        response_mask: (R, L) bool. True on sampled tokens (EOS included; not the prefix).
        logprobs: (R, L) float32. Log-prob of each sampled token under the temperature-scaled, unfiltered
            softmax (unscaled when greedy) of the logits it was drawn from (the guided ones under guidance);
            0 elsewhere.
        truncated: (R,) bool. The response reached ``max_new_tokens`` without EOS or a stop string.
        prompt_index: (R,) long. Index of the row's prompt in the list given to ``sample``.
        texts: R decoded responses, without prefix and special tokens, cut at a stop string.
        prompt_length: P, the column where responses start.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    truncated: torch.Tensor
    prompt_index: torch.Tensor
    texts: list[str]
    prompt_length: int

    @property
    def response_lengths(self) -> torch.Tensor:
        """(R,) long: sampled tokens per row (EOS included)."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return len(self.texts)

    def at_last_token(self, values: torch.Tensor) -> torch.Tensor:
        """(R, L) values laid out like this batch -> (R,) each row's value at its last sampled token (at the
        last prompt column for an empty response)."""
        last = self.prompt_length + self.response_lengths - 1
        return values.gather(1, last[:, None].to(values.device))[:, 0]

    def without_prompt_end(self, columns: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) without the prompt's last ``columns`` columns (a response prefix), as
        many padding columns put in front instead: every response keeps its columns, and column P - 1 holds the
        token before the removed ones, as if the prompt had ended there. (R, L) each."""
        start = self.prompt_length - columns

        def cut(values: torch.Tensor, fill: int) -> torch.Tensor:
            padding = torch.full_like(values[:, :columns], fill)
            return torch.cat([padding, values[:, :start], values[:, self.prompt_length :]], dim=1)

        return cut(self.input_ids, pad_token_id), cut(self.attention_mask, 0)

    @classmethod
    def from_token_lists(
        cls,
        prompt_ids: Sequence[list[int]],
        response_ids: Sequence[list[int]],
        texts: Sequence[str],
        *,
        pad_token_id: int,
        response_logprobs: Sequence[list[float]] | None = None,
        truncated: Sequence[bool] | None = None,
        prompt_index: Sequence[int] | None = None,
    ) -> SampleBatch:
        """Lay rows of (prompt ids, response ids) out as a batch: prompts left-padded to the longest, responses
        after them. Log-probs default to 0, ``truncated`` to False and ``prompt_index`` to the row number."""
        rows = len(prompt_ids)
        prompt_width = max((len(ids) for ids in prompt_ids), default=0)
        width = prompt_width + max((len(ids) for ids in response_ids), default=0)
        input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        response_mask = torch.zeros((rows, width), dtype=torch.bool)
        logprobs = torch.zeros((rows, width), dtype=torch.float32)
        for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
            start, end = prompt_width - len(prompt), prompt_width + len(response)
            input_ids[row, start:end] = torch.tensor(prompt + response, dtype=torch.long)
            attention_mask[row, start:end] = 1
            response_mask[row, prompt_width:end] = True
            if response_logprobs is not None:
                logprobs[row, prompt_width:end] = torch.tensor(response_logprobs[row], dtype=torch.float32)
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            response_mask=response_mask,
            logprobs=logprobs,
            truncated=torch.tensor(list(truncated) if truncated is not None else [False] * rows, dtype=torch.bool),
            prompt_index=torch.tensor(
                list(prompt_index) if prompt_index is not None else range(rows), dtype=torch.long
            ),
            texts=list(texts),
            prompt_length=prompt_width,
        )


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt exactly as training and sampling both see it: with the tokenizer's special
    tokens (a BOS), unless the text already starts with BOS (chat templates write it themselves)."""
    has_bos = tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token)
    return tokenizer(text, add_special_tokens=not has_bos).input_ids


def encode_continuation(tokenizer, context: str, context_ids: list[int], text: str) -> list[int]:
    """Token ids of ``text`` as they follow ``context`` (encoded as ``context_ids``): what a model continuing
    that context produces for it.

    They are the tail of the tokenization of ``context + text``, not the tokenization of ``text`` alone: a
    SentencePiece-style tokenizer starts a lone text with a word-start marker ("▁") that a model continuing a
    prompt does not produce. Where the joint tokenization merges tokens across the boundary (its head differs
    from ``context_ids``), ``text`` is tokenized as it would be mid-text, behind a special token (which
    tokenizers split off first), if that decodes after ``context_ids`` to what the joint tokenization decodes
    to (a normalizer may still prepend "▁" there); else by itself. A text that spells a special token out (a
    response that writes "[GOOD]" or "<|im_end|>") is read as the characters it is, as a model writing it
    sampled them, not as that token.
    """
    ids = _continuation_ids(tokenizer, context, context_ids, text)
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    # Unknown characters are text, though they encode as the unknown token; that token written out is not (SmolLM2's
    # is <|endoftext|>).
    written_out = bool(tokenizer.unk_token) and tokenizer.unk_token in text
    special = (special | set(tokenizer.all_special_ids)) - (set() if written_out else {tokenizer.unk_token_id})
    if set(ids) & special:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
    return ids


def _continuation_ids(tokenizer, context: str, context_ids: list[int], text: str) -> list[int]:
    joint = encode_prompt(tokenizer, context + text)
    if joint[: len(context_ids)] == context_ids:
        return joint[len(context_ids) :]
    alone = tokenizer(text, add_special_tokens=False).input_ids
    anchor = tokenizer.bos_token or tokenizer.eos_token
    if anchor is None:
        return alone
    anchored = tokenizer(anchor + text, add_special_tokens=False).input_ids
    if anchored[:1] == [tokenizer.convert_tokens_to_ids(anchor)] and tokenizer.decode(
        context_ids + anchored[1:]
    ) == tokenizer.decode(joint):
        return anchored[1:]
    return alone


def encode_example(
    tokenizer, prompt: str, response_prefix: str, target: str, end_id: int | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids + ``end_id``) to fine-tune on ``target`` as the response to ``prompt`` behind
    ``response_prefix``: the prompt and prefix as the sampler encodes them, and the target as the tokens that
    continue them, ended by ``end_id`` (default: the EOS; after a chat prompt, ``policy.response_end_id``'s)."""
    prompt_ids = encode_prompt(tokenizer, prompt) + encode_response_prefix(tokenizer, response_prefix)
    target_ids = encode_continuation(tokenizer, prompt + response_prefix, prompt_ids, target)
    return prompt_ids, target_ids + [tokenizer.eos_token_id if end_id is None else end_id]


def row_seed(*parts: int | str) -> int:
    """A 62-bit seed from any integers or strings (seed, round, question id, sample index, ...); an integer of any
    type (NumPy's, a 0-d integer tensor) gives the Python int's seed."""
    canonical = tuple(part if isinstance(part, str) else operator.index(part) for part in parts)
    digest = hashlib.blake2b(repr(canonical).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def counter_uniform(seeds: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """One uniform number per row, strictly inside (0, 1), that depends only on (row seed, step).

    Counter-based: a 32-bit integer hash of the two, so the same row gets the same number whatever batch,
    device or process it is computed in.

    Args:
        seeds: (R,) long, non-negative row seeds.
        step: decoding step, an int or a 0-d long tensor on the seeds' device (which a captured step advances).

    Returns:
        (R,) float64.
    """
    low, high = seeds & _MASK32, (seeds >> 32) & _MASK32
    steps = torch.full_like(low, step & _MASK32) if isinstance(step, int) else (step & _MASK32).expand_as(low)
    value = _hash32(low ^ _hash32(steps))
    value = _hash32(value ^ _hash32(high ^ 0x5BD1E995))
    return uniform_from_hash(value)


def uniform_from_hash(value: torch.Tensor) -> torch.Tensor:
    """Map 32-bit hash values (long, 0 <= value < 2**32) to the centres of 2**32 equal cells of (0, 1):
    ``(value + 0.5) / 2**32``, exact in float64, so never 0 or 1."""
    return (value.to(torch.float64) + 0.5) / float(1 << 32)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MULTIPLIER) & _MASK32
    return (x >> 16) ^ x


_PROBABILITY_SCALE = 2.0**30  # probabilities in integer units of 2**-30: a row's counts sum to about 2**30, in int32
_CDF_BLOCK = 256  # the cumulative distribution is searched block by block: a cumsum over V / 256 block sums


def inverse_cdf_draw(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """A draw from ``softmax(logits)`` per row by inverting its cumulative distribution at ``uniforms``.

    Args:
        logits: (R, V) float logits, -inf for tokens that may not be drawn.
        uniforms: (R,) float64 numbers in (0, 1), e.g. from ``counter_uniform``.

    Returns:
        (R,) long token ids, as ``draw_from_probabilities`` picks them.
    """
    return draw_from_probabilities(logits.float().softmax(-1), uniforms)


def draw_from_probabilities(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """A draw from each row's distribution by inverting its cumulative distribution at ``uniforms``.

    Probabilities are counted in integer units of 2**-30 (``floor(p * 2**30)``) and summed exactly (a float
    cumulative sum rounds differently by device and, on a GPU, by batch shape, and can give a token of
    probability 0 a step of one ulp). The chosen token is the first whose cumulative count exceeds ``floor(u *
    total)``, a number in [0, total): a token of probability 0 counts 0, so it never exceeds what its
    predecessor did and is never drawn; nor are probabilities below 2**-30 (about 1e-9); any other token is
    drawn with its probability to within 2**-30 plus V * 2**-30 of itself (5e-5 of it at V = 49,152). The
    cumulative counts of a large vocabulary are never built whole: the search runs over the sums of blocks of
    256 tokens, then inside the chosen block; being integer sums, they pick exactly the token the full
    cumulative sum would, and 32-bit counts summed by block cost a fraction of a 64-bit cumulative sum over
    every token.

    Args:
        probabilities: (R, V) float32, each row summing to 1 (NaN counts as 0).
        uniforms: (R,) float64 numbers in (0, 1).

    Returns:
        (R,) long token ids. A row with no mass (which callers must not pass) gets token V - 1 rather than an
        index out of range.
    """
    rows, vocab = probabilities.shape
    counts = (probabilities * _PROBABILITY_SCALE).nan_to_num_(0.0).to(torch.int32)  # floor: never negative
    if vocab <= 4 * _CDF_BLOCK:  # small vocabularies: one cumulative sum takes fewer (per-call costly) ops
        cumulative = counts.long().cumsum(-1)
        targets = (uniforms.double() * cumulative[:, -1].double()).long()
        return torch.searchsorted(cumulative, targets[:, None], side="right")[:, 0].clamp(max=vocab - 1)
    whole = vocab // _CDF_BLOCK * _CDF_BLOCK
    block_sums = counts[:, :whole].view(rows, -1, _CDF_BLOCK).sum(-1, dtype=torch.int32)  # <= total < 2**31
    if whole < vocab:
        block_sums = torch.cat([block_sums, counts[:, whole:].sum(-1, keepdim=True, dtype=torch.int32)], dim=1)
    block_cumulative = block_sums.long().cumsum(-1)
    targets = (uniforms.double() * block_cumulative[:, -1].double()).long()
    block = torch.searchsorted(block_cumulative, targets[:, None], side="right").clamp(max=block_sums.shape[1] - 1)
    before = block_cumulative.gather(1, block) - block_sums.gather(1, block).long()
    columns = block * _CDF_BLOCK + torch.arange(_CDF_BLOCK, device=counts.device)
    inside = counts.gather(1, columns.clamp(max=vocab - 1)).masked_fill(columns >= vocab, 0).long().cumsum(-1)
    offset = torch.searchsorted(inside, targets[:, None] - before, side="right")
    return (block * _CDF_BLOCK + offset)[:, 0].clamp(max=vocab - 1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with every token outside the top-k / top-p (nucleus) set at -inf. (R, V) -> (R, V).

    The most likely token always survives; top-p keeps the smallest prefix of the sorted distribution whose
    mass reaches ``top_p``. Both keep every token tied with the last one kept: which of equal logits a sort puts
    first can change with the batch's shape or the device, and the set kept must not.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits = torch.sort(logits, dim=-1, descending=True).values
        probabilities = sorted_logits.softmax(-1)
        kept = (probabilities.cumsum(-1) - probabilities < top_p).sum(-1, keepdim=True)  # mass before < top_p
        last_kept = sorted_logits.gather(-1, kept - 1)
        logits = logits.masked_fill(logits < last_kept, float("-inf"))
    return logits


def draw_tokens(logits: torch.Tensor, config: SamplingConfig, seeds: torch.Tensor, step: int | torch.Tensor):
    """Pick the next token of every row and its log-prob.

    Args:
        logits: (R, V) float32 logits of the next token.
        config: temperature, top-k, top-p.
        seeds: (R,) long row seeds.
        step: decoding step (feeds the noise): an int, or a 0-d long tensor.

    Returns:
        tokens (R,) long and logprobs (R,) float32 under the temperature-scaled unfiltered softmax.
    """
    if config.greedy:
        probabilities = logits.softmax(-1)
        tokens = logits.argmax(-1)
    else:
        scaled = logits / config.temperature
        probabilities = scaled.softmax(-1)
        filtered = config.top_k > 0 or config.top_p < 1
        allowed = filter_logits(scaled, config.top_k, config.top_p).softmax(-1) if filtered else probabilities
        tokens = draw_from_probabilities(allowed, counter_uniform(seeds, step))
    # log(softmax) of the drawn token (positive: drawn tokens have counts) rather than a log_softmax pass.
    return tokens, probabilities.gather(-1, tokens[:, None])[:, 0].log()


class GrowingLayer(DynamicLayer):
    """A KV-cache layer that writes new keys and values into preallocated room (doubled when full) and
    hands out views, instead of concatenating the whole cache at every step as ``DynamicLayer`` does."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new_length = self.length + key_states.shape[-2]
        if self.key_buffer is None or new_length > self.key_buffer.shape[-2]:
            self.key_buffer = self._grow(self.key_buffer, key_states, new_length)
            self.value_buffer = self._grow(self.value_buffer, value_states, new_length)
        self.key_buffer[..., self.length : new_length, :] = key_states
        self.value_buffer[..., self.length : new_length, :] = value_states
        self.length = new_length
        self._expose()
        return self.keys, self.values

    def _grow(self, buffer: torch.Tensor | None, states: torch.Tensor, needed: int) -> torch.Tensor:
        grown = states.new_empty((*states.shape[:-2], max(2 * needed, 64), states.shape[-1]))
        if buffer is not None and self.length:
            grown[..., : self.length, :] = buffer[..., : self.length, :]
        return grown

    def _expose(self) -> None:
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self.length:
            self.key_buffer = self.key_buffer.index_select(0, indices)
            self.value_buffer = self.value_buffer.index_select(0, indices)
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized and self.length:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._expose()


def _new_cache(model: torch.nn.Module) -> DynamicCache:
    """A dynamic cache whose full-attention layers grow in place (other layer kinds, e.g. sliding windows,
    stay as the model defines them)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = GrowingLayer
    return cache


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    config: SamplingConfig,
    seeds: Sequence[int],
    *,
    eos_token_ids: Sequence[int],
    conditioning: Conditioning = Conditioning(),
    stop_strings: Sequence[str] = (),
    synced: bool | None = None,
    progress: bool = False,
    description: str = "sampling",
) -> SampleBatch:
    """Sample ``config.num_samples`` responses to each prompt.

    Args:
        model: a Hugging Face causal LM (used as is: call inside ``eval_mode``).
        tokenizer: its tokenizer.
        prompts: P prompt texts.
        config: sampling settings.
        seeds: P integers, one per prompt (e.g. ``row_seed(seed, round, question_id)``); sample k of prompt p
            uses ``row_seed(seeds[p], k)``.
        eos_token_ids: tokens that end a response.
        conditioning: the response prefix placed after every prompt (part of the prompt for masks and
            log-probs, not of ``texts``), the tokens never generated (their logits are -inf, so log-probs are
            over the other tokens) and the guidance (a negative prompt's rows run beside the sampled ones:
            ``config.batch_size`` counts them all).
        stop_strings: text that also ends a response (checked on the decoded tail of each row).
        synced: keep stepping until every rank is done; default: when torch.distributed is initialised.
        progress: show a progress bar (on rank 0).
        description: the progress bar's label.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    eos_token_ids = _special_stops_as_end_tokens(tokenizer, eos_token_ids, stop_strings)
    decoder = _ChunkDecoder(
        runner=CausalLMWithCache(model),
        tokenizer=tokenizer,
        config=config,
        eos_token_ids=eos_token_ids,
        stop_strings=stop_strings,
        suppressed_token_ids=conditioning.suppressed_token_ids,
        guidance_scale=conditioning.guidance.scale if conditioning.guided else None,
        synced=is_distributed() if synced is None else synced,
        device=next(model.parameters()).device,
    )
    encoded, negative = _encode_prompts(tokenizer, prompts, conditioning)
    longest = max(map(len, [*encoded, *(negative or [])]), default=0)
    # Every rank decides alike: one that stopped alone would leave the others waiting in their synced steps.
    _check_context(model, reduce_int(longest, "max", decoder.device) if decoder.synced else longest, config)
    show = progress and rank_and_world_size()[0] == 0
    with tqdm(
        total=len(prompts) * config.num_samples, desc=description, unit="sample", disable=not show, leave=False
    ) as bar:
        results = decoder.run_all(encoded, negative, seeds, on_chunk=bar.update)
    return _assemble(results, tokenizer)


def encode_response_prefix(tokenizer, prefix: str) -> list[int]:
    """Token ids of a response prefix (a return token), the same after every prompt."""
    return tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []


def _special_stops_as_end_tokens(tokenizer, eos_token_ids: Sequence[int], stop_strings: Sequence[str]) -> list[int]:
    """The end tokens of a response: ``eos_token_ids`` and each stop string that is a special token
    (``<|eot_id|>``), which decoding drops, so that the text check never sees it drawn (it still sees the string
    spelled out in ordinary pieces)."""
    ends = list(eos_token_ids)
    if stop_strings:  # what decoding with skip_special_tokens drops: the added tokens marked special
        special = {token.content: index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
        ends += [special[stop] for stop in dict.fromkeys(stop_strings) if stop in special and special[stop] not in ends]
    return ends


def _encode_prompts(
    tokenizer, prompts: Sequence[str], conditioning: Conditioning
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Every prompt's ids behind the response prefix, and behind the guidance's negative prefix (None
    unguided)."""
    plain = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    prefix_ids = encode_response_prefix(tokenizer, conditioning.response_prefix)
    if not conditioning.guided:
        return [ids + prefix_ids for ids in plain], None
    negative_ids = encode_response_prefix(tokenizer, conditioning.guidance.negative_prefix)
    return [ids + prefix_ids for ids in plain], [ids + negative_ids for ids in plain]


def _check_context(model: torch.nn.Module, longest_prompt: int, config: SamplingConfig) -> None:
    """Stop where the longest prompt and ``max_new_tokens`` overrun the model's positions: rotary models do not
    fail there, they silently decode from positions they were never trained on. Scaled RoPE (dynamic, YaRN,
    linear, ...) reaches past ``max_position_embeddings`` by design and is not checked."""
    text_config = model.config.get_text_config()
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    scaled = isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) != "default"
    context = getattr(text_config, "max_position_embeddings", None)
    if context is not None and not scaled and longest_prompt + config.max_new_tokens > context:
        raise ValueError(
            f"a prompt of {longest_prompt} tokens plus max_new_tokens={config.max_new_tokens} exceeds the model's "
            f"context of {context} positions (max_position_embeddings): lower max_new_tokens, shorten the prompts "
            "(fewer num_shots), or for a tiny preset raise policy.max_length"
        )


def _assemble(results: list[_ChunkResult], tokenizer) -> SampleBatch:
    """All chunks' rows, in order, as one batch."""
    return SampleBatch.from_token_lists(
        [ids for result in results for ids in result.prompt_ids],
        [ids for result in results for ids in result.response_ids],
        [text for result in results for text in result.texts],
        pad_token_id=_pad_id(tokenizer),
        response_logprobs=[values for result in results for values in result.response_logprobs],
        truncated=[flag for result in results for flag in result.truncated],
        prompt_index=[index for result in results for index in result.prompt_index],
    )


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@dataclass
class _ChunkResult:
    """A chunk's rows (prompt-major): token lists, not yet laid out."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_logprobs: list[list[float]]
    truncated: list[bool]
    prompt_index: list[int]
    texts: list[str]


@dataclass
class _DecodeRows:
    """Every row's tokens so far, on the device and indexed by the row's place in the chunk (rows that leave
    the model's batch keep their place here); the host reads them only at the checks for finished rows."""

    responses: torch.Tensor  # (N, T) long; a row's tokens are those before its length
    logprobs: torch.Tensor  # (N, T) float32
    lengths: torch.Tensor  # (N,) long
    finished: torch.Tensor  # (N,) bool: EOS or a stop string

    @classmethod
    def empty(cls, rows: int, max_new_tokens: int, pad_id: int, device: torch.device) -> _DecodeRows:
        return cls(
            responses=torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device),
            logprobs=torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device),
            lengths=torch.zeros(rows, dtype=torch.long, device=device),
            finished=torch.zeros(rows, dtype=torch.bool, device=device),
        )

    def record(
        self, step: int | torch.Tensor, active: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor, eos
    ) -> None:
        """Store step ``step``'s tokens of the rows in the model's batch (``active``: their places); a finished
        row's tokens land beyond its length, which is what is kept. Without boolean indexing, so nothing waits
        for the device; a step given as a 0-d tensor is indexed as one column per row (indexing by a 0-d tensor
        reads its value on the host)."""
        column = step.expand_as(active) if isinstance(step, torch.Tensor) else step
        live = ~self.finished[active]
        self.responses[active, column] = tokens
        self.logprobs[active, column] = logprobs.float()
        self.lengths[active] += live.long()
        # Not torch.isin: past a few EOS ids it sorts, which waits for the device.
        self.finished[active] = self.finished[active] | (live & (tokens[:, None] == eos).any(-1))

    def finish_at(self, row: int, step: int) -> None:
        """End ``row`` after its token of step ``step`` (a stop string found late)."""
        self.lengths[row] = step + 1
        self.finished[row] = True


@dataclass
class _ModelBatch:
    """The rows in the model's batch: their KV cache, attention mask (rows, width) and next positions (rows,),
    and per sampled row its place in the chunk (``active``) and seed. Under guidance (``halves`` 2) every
    sampled row has a negative twin, in the same order after all of them."""

    cache: DynamicCache
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    active: torch.Tensor
    row_seeds: torch.Tensor
    halves: int

    def live_places(self) -> torch.Tensor:
        """The places in the chunk of the rows in the model's batch."""
        return self.active

    def shrink(self, unfinished: torch.Tensor, remaining: int, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the finished rows (``unfinished``: (rows,) bool, ``remaining`` of them True) once a quarter of
        the rows are done, worth the cache copy then; a synced rank with none left keeps one row in step.
        Returns the tokens (rows,) of the rows kept."""
        rows = len(self.active)
        if 4 * (rows - remaining) >= rows and (remaining or rows > 1):
            index = torch.nonzero(unfinished)[:, 0] if remaining else self.active.new_zeros(1)
            self.keep(index)
            tokens = tokens[index]
        return tokens

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the sampled rows at ``index`` (and their twins): copies the cache, so short samples stop
        paying for long ones (finished rows that stay compute tokens that are thrown away)."""
        model_index = torch.cat([index + half * len(self.active) for half in range(self.halves)])
        self.cache.batch_select_indices(model_index)
        self.attention_mask, self.next_position = self.attention_mask[model_index], self.next_position[model_index]
        self.active, self.row_seeds = self.active[index], self.row_seeds[index]

    def forward(self, runner: CausalLMWithCache, tokens: torch.Tensor) -> torch.Tensor:
        """Feed every sampled row its token (its twin the same one): the next logits, (rows, V) float32."""
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones((len(self.attention_mask), 1))], dim=-1
        )
        self.next_position = self.next_position + 1
        logits, self.cache = runner(
            tokens.repeat(self.halves)[:, None], self.attention_mask, self.next_position[:, None], self.cache, True
        )
        return logits[:, -1].float()


@dataclass
class _StaticRoom:
    """The model's batch in preallocated room (``static_decoding``), the same tensors for every chunk of a
    ``sample`` call: ``capacity`` slots (the largest chunk's rows), of which the current ``bucket`` run, the first
    ``live`` of them holding rows of the chunk and the others recording into the ``sink`` place of ``rows``.
    Under guidance (``halves`` 2) bucket n runs the n sampled rows and then their n twins.

    Per model row (halves * capacity): ``attention_mask`` (rows, width + max new tokens), ``positions`` (the
    position of the token fed next) and ``feed`` (that token); per slot: ``slot_places`` and ``slot_seeds``;
    ``step`` (0-d long) is the decoding step drawn next; ``rows`` the chunk's tokens (capacity + 1 rows).
    """

    slots: SlotCache
    rows: _DecodeRows
    steps: GraphedSteps
    attention_mask: torch.Tensor
    positions: torch.Tensor
    feed: torch.Tensor
    slot_places: torch.Tensor
    slot_seeds: torch.Tensor
    step: torch.Tensor
    halves: int
    bucket: int = 0
    live: int = 0

    @classmethod
    def allocate(
        cls, prefill: DynamicCache, capacity: int, halves: int, width: int, config: SamplingConfig, pad_id: int
    ) -> _StaticRoom:
        """Room for chunks of at most ``capacity`` rows of prompts at most ``width`` tokens long, with a
        (halves * P)-prompt ``prefill`` as the template of the KV cache's shapes and type."""
        device, rows = prefill.layers[0].keys.device, halves * capacity
        long = dict(dtype=torch.long, device=device)
        return cls(
            slots=SlotCache(prefill, capacity, halves, width, width + config.max_new_tokens),
            rows=_DecodeRows.empty(capacity + 1, config.max_new_tokens, pad_id, device),
            steps=GraphedSteps(use_graphs=config.decoding == "cuda_graph", device=device),
            attention_mask=torch.ones((rows, width + config.max_new_tokens), **long),
            positions=torch.zeros(rows, **long),
            feed=torch.zeros(rows, **long),
            slot_places=torch.zeros(capacity, **long),
            slot_seeds=torch.zeros(capacity, **long),
            step=torch.zeros((), **long),
            halves=halves,
        )

    @property
    def sink(self) -> int:
        return len(self.slot_places)

    def load(
        self,
        prefill: DynamicCache,
        attention_mask: torch.Tensor,
        last_position: torch.Tensor,
        repeats: int,
        row_seeds: torch.Tensor,
        pad_id: int,
    ) -> None:
        """Lay out a chunk from a prefill of halves * P prompts (``prefill``, ``attention_mask`` (halves * P,
        width), ``last_position`` (halves * P,)) whose rows repeat each prompt ``repeats`` times (``row_seeds``:
        one per row), in the smallest bucket that holds them, and start counting steps at 0."""
        num_rows, width = len(row_seeds), attention_mask.shape[1]
        self.bucket, self.live = bucket_for(num_rows, len(self.slot_places)), num_rows
        self.slots.load(prefill, repeats, self.bucket)
        start, per_half = self.slots.width - width, len(attention_mask) // self.halves
        # Spare slots: their prompt columns seen (the stale states are finite), positions from the prompt's end,
        # so that a model with learned position embeddings never looks one up past the room.
        self.attention_mask.zero_()
        self.attention_mask[:, start : self.slots.width] = 1
        self.positions.fill_(self.slots.width)
        for half in range(self.halves):
            taken = slice(half * per_half, (half + 1) * per_half)
            rows = slice(half * self.bucket, half * self.bucket + num_rows)
            self.attention_mask[rows, start : self.slots.width] = attention_mask[taken].repeat_interleave(repeats, 0)
            self.positions[rows] = last_position[taken].repeat_interleave(repeats, dim=0) + 1
        self.slot_places.fill_(self.sink)
        self.slot_places[:num_rows] = torch.arange(num_rows, device=self.slot_places.device)
        self.slot_seeds.zero_()
        self.slot_seeds[:num_rows] = row_seeds
        self.step.zero_()
        self.rows.responses.fill_(pad_id)
        self.rows.logprobs.zero_()
        self.rows.lengths.zero_()
        self.rows.finished.zero_()
        self.rows.finished[num_rows:] = True  # the sink and spare slots' places are never kept

    @property
    def active(self) -> torch.Tensor:
        """(bucket,) long: the place each slot of the bucket records into (the sink for spare slots)."""
        return self.slot_places[: self.bucket]

    @property
    def row_seeds(self) -> torch.Tensor:
        return self.slot_seeds[: self.bucket]

    def live_places(self) -> torch.Tensor:
        return self.slot_places[: self.live]

    def columns(self, step: int) -> int:
        """The room's first columns that decoding step ``step`` reads: those holding the prompts and the tokens
        fed so far, the one it feeds included, rounded up to a block."""
        return columns_for(self.slots.width + step, self.slots.length)

    def forward(self, runner: CausalLMWithCache, columns: int) -> torch.Tensor:
        """Feed the bucket's model rows their tokens (marking their column as seen), attending over the room's
        first ``columns`` columns: the next logits, (halves * bucket, V) float32."""
        rows = self.halves * self.bucket
        self.attention_mask.index_fill_(1, self.slots.position.view(1), 1)
        logits, _ = runner(
            self.feed[:rows, None],
            self.attention_mask[:rows, :columns],
            self.positions[:rows, None],
            self.slots.cache(self.bucket, columns),
            last_logits_only=True,
        )
        self.positions.add_(1)
        self.slots.position.add_(1)
        return logits[:, -1].float()

    def advance(self, tokens: torch.Tensor) -> None:
        """Feed the bucket's first ``len(tokens)`` sampled rows (and their twins) ``tokens`` next (the spare
        slots of a chunk's first step keep a stale token), and count the step."""
        for half in range(self.halves):
            self.feed[half * self.bucket : half * self.bucket + len(tokens)] = tokens
        self.step.add_(1)

    def shrink(self, unfinished: torch.Tensor, remaining: int, tokens: torch.Tensor) -> torch.Tensor:
        """Move the ``remaining`` unfinished slots (``unfinished``: (bucket,) bool) to the front of the room and
        run the smallest bucket that holds them, if smaller than this one (a synced rank with none left runs
        one spare slot in step with the others). Returns ``tokens`` as is: the room holds what is fed next."""
        bucket = bucket_for(remaining, len(self.slot_places))
        if bucket >= self.bucket:
            return tokens
        kept = torch.nonzero(unfinished)[:, 0]
        slots = torch.cat([kept, kept.new_zeros(bucket - remaining)])  # spare slots: any row's state
        model_rows = torch.cat([slots + half * self.bucket for half in range(self.halves)])
        self.slots.compact(model_rows)
        move_to_front((self.attention_mask, self.positions, self.feed), model_rows)
        places = self.slot_places.index_select(0, slots)
        places[remaining:] = self.sink
        self.slot_places[:bucket], self.slot_seeds[:bucket] = places, self.slot_seeds.index_select(0, slots)
        self.bucket, self.live = bucket, remaining
        return tokens


@dataclass
class _ChunkDecoder:
    """Decodes chunks of prompts with the settings of one ``sample`` call (``guidance_scale`` None: plain)."""

    runner: CausalLMWithCache
    tokenizer: Any
    config: SamplingConfig
    eos_token_ids: Sequence[int]
    stop_strings: Sequence[str]
    suppressed_token_ids: Sequence[int]
    guidance_scale: float | None
    synced: bool
    device: torch.device
    eos: torch.Tensor = field(init=False)
    suppressed: torch.Tensor = field(init=False)
    room: _StaticRoom | None = field(init=False, default=None)
    room_capacity: int = field(init=False, default=1)
    room_width: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        self.eos = torch.tensor(list(self.eos_token_ids), dtype=torch.long, device=self.device)
        self.suppressed = torch.tensor(list(self.suppressed_token_ids), dtype=torch.long, device=self.device)
        decoding = self.config.decoding
        if decoding != "dynamic" and not supports_static_cache(self.runner.model):
            raise ValueError(
                f"decoding: {decoding} lays out full-attention KV caches with positions of their own: this model has "
                "other cache layers (sliding windows, recurrent or linear attention) or RoPE scaled per call: use "
                "decoding: dynamic"
            )
        if decoding == "cuda_graph":
            attention = getattr(self.runner.model.config, "_attn_implementation", None)
            if attention != "sdpa":
                # eager's mask is built around a host value in transformers 5.17 (torch.tensor(0.0, device=...)), a
                # copy a capture refuses; flash attention's padding handling reads lengths on the host.
                raise ValueError(
                    f"decoding: cuda_graph captures sdpa attention, not {attention} (whose masking copies or reads "
                    "values on the host): load the model with attn_implementation='sdpa', or use static"
                )
            if any(isinstance(p, DTensor) for p in self.runner.model.parameters()):
                raise ValueError(
                    "decoding: cuda_graph cannot capture a sharded (FSDP2) model's forward, which gathers its "
                    "weights: use static or dynamic"
                )
            if self.device.type != "cuda":
                raise ValueError(f"decoding: cuda_graph needs a CUDA device, not {self.device}: use static or dynamic")

    def run_all(
        self, prompt_ids: list[list[int]], negative_prompt_ids: list[list[int]] | None, seeds: Sequence[int], on_chunk
    ) -> list[_ChunkResult]:
        """Sample every prompt (``seeds``: one per prompt), as many prompts at a time as ``batch_size`` rows
        hold (a prompt's samples never split); ``on_chunk(rows)`` after each chunk. Synced, a rank out of
        prompts keeps running placeholder chunks while another rank still has some."""
        k = self.config.num_samples
        per_chunk = max(1, self.config.batch_size // (k * (2 if negative_prompt_ids is not None else 1)))
        chunks = [list(range(i, min(i + per_chunk, len(prompt_ids)))) for i in range(0, len(prompt_ids), per_chunk)]
        # Static decoding: room for the largest chunk (or a placeholder) of the longest prompts of the call.
        self.room_capacity = max((len(chunk) * k for chunk in chunks), default=1)
        self.room_width = max(len(ids) for ids in prompt_ids + (negative_prompt_ids or []) + [[0]])
        num_chunks = reduce_int(len(chunks), "max", self.device) if self.synced else len(chunks)
        results = []
        for index in range(num_chunks):
            chunk = chunks[index] if index < len(chunks) else []
            result = self.run(
                prompt_ids=[prompt_ids[p] for p in chunk],
                negative_prompt_ids=[negative_prompt_ids[p] for p in chunk]
                if negative_prompt_ids is not None
                else None,
                seeds=[row_seed(seeds[p], sample) for p in chunk for sample in range(k)],
                prompt_index=[p for p in chunk for _ in range(k)],
            )
            if chunk:
                results.append(result)
                on_chunk(len(result.texts))
        return results

    def run(
        self,
        *,
        prompt_ids: list[list[int]],
        negative_prompt_ids: list[list[int]] | None,
        seeds: list[int],
        prompt_index: list[int],
    ) -> _ChunkResult:
        """Sample ``num_samples`` responses to each prompt (rows prompt-major; ``seeds`` and ``prompt_index``
        per row). Each prompt is run through the model once and its KV cache copied to its rows. Under guidance
        the model's batch holds the sampled rows, then as many negative rows (``negative_prompt_ids``, same
        order), which receive the same tokens. An empty chunk runs one placeholder row that only keeps this rank
        in step with the others."""
        config, placeholder = self.config, not prompt_ids
        repeats = config.num_samples
        if placeholder:
            prompt_ids, seeds, repeats = [[self._placeholder_token()]], [0], 1
            negative_prompt_ids = prompt_ids if negative_prompt_ids is not None else None
        halves, num_rows = 1 if negative_prompt_ids is None else 2, len(prompt_ids) * repeats
        batch, rows, tokens = self._first_step(
            prompt_ids + (negative_prompt_ids or []), seeds, repeats, halves, placeholder
        )
        static = isinstance(batch, _StaticRoom)
        check_every = config.finished_check_every or (1 if self.device.type == "cpu" else 8)
        steps_taken, checked = 1, 0
        while steps_taken < config.max_new_tokens:
            if steps_taken % check_every == 0:  # in between, finished rows keep stepping, their tokens not kept
                if self.stop_strings:
                    self._apply_stop_strings(rows, batch.live_places(), checked, steps_taken)
                checked = steps_taken
                unfinished = ~rows.finished[batch.active]
                remaining = int(unfinished.sum())
                if not self._any_rank_sampling(remaining):
                    break
                tokens = batch.shrink(unfinished, remaining, tokens)
            if static:
                columns = batch.columns(steps_taken)
                batch.steps.run((batch.bucket, columns), partial(self._static_step, batch, rows, columns))
            else:
                logits = batch.forward(self.runner, tokens)
                tokens = self._draw_and_record(logits, rows, batch.active, batch.row_seeds, steps_taken, halves)
            steps_taken += 1
        if self.stop_strings and checked < steps_taken:
            self._apply_stop_strings(rows, batch.live_places(), checked, steps_taken)
        if placeholder:
            return _ChunkResult([], [], [], [], [], [])
        prompt_rows = [ids for ids in prompt_ids for _ in range(repeats)]
        return self._result(rows, num_rows, steps_taken, prompt_rows, prompt_index)

    def _first_step(
        self, prompt_ids: list[list[int]], seeds: list[int], repeats: int, halves: int, placeholder: bool
    ) -> tuple[_ModelBatch | _StaticRoom, _DecodeRows, torch.Tensor]:
        """Prefill the ``halves * P`` prompts (the sampled rows', then the negative ones) into the model's batch
        (dynamic, or the call's static room), ``repeats`` rows each, and draw every row's first token: the
        batch, the rows and the first tokens. A ``placeholder``'s rows start finished (never kept)."""
        config, pad_id = self.config, _pad_id(self.tokenizer)
        static, num_rows = config.decoding != "dynamic", len(seeds)
        logits, cache, attention_mask, next_position = self._prefill(prompt_ids, 1 if static else repeats)
        row_seeds = torch.tensor(seeds, dtype=torch.long, device=self.device)
        if static:
            logits = logits.repeat_interleave(repeats, dim=0)
            batch = self._static_room(cache, halves)
            batch.load(cache, attention_mask, next_position, repeats, row_seeds, pad_id)
            rows = batch.rows
        else:
            rows = _DecodeRows.empty(num_rows, config.max_new_tokens, pad_id, self.device)
            batch = _ModelBatch(
                cache, attention_mask, next_position, active=torch.arange(num_rows, device=self.device),
                row_seeds=row_seeds, halves=halves,
            )  # fmt: skip
        rows.finished[:num_rows] = placeholder
        live = batch.live_places()  # the static room's spare slots have no logits yet
        tokens = self._draw_and_record(logits, rows, live, batch.row_seeds[: len(live)], 0, halves)
        if static:
            batch.advance(tokens)  # (the prefill's (rows, V) logits and cache are freed on return)
        return batch, rows, tokens

    def _draw_and_record(
        self,
        logits: torch.Tensor,
        rows: _DecodeRows,
        active: torch.Tensor,
        row_seeds: torch.Tensor,
        step: int | torch.Tensor,
        halves: int,
    ) -> torch.Tensor:
        """Draw step ``step``'s token of every sampled row from the model's (halves * rows, V) float32 ``logits``
        (a sampled row's guided by its twin's) and record it at the row's place in ``active``: the tokens."""
        if halves == 2:
            logits = guided_logits(*logits.chunk(2), self.guidance_scale)
        if len(self.suppressed):
            logits = without_tokens(logits, self.suppressed)
        tokens, chosen_logprobs = draw_tokens(logits, self.config, row_seeds, step)
        rows.record(step, active, tokens, chosen_logprobs, self.eos)
        return tokens

    def _static_room(self, prefill: DynamicCache, halves: int) -> _StaticRoom:
        """The call's static room, allocated at its first chunk (whose prefill shows the cache's shapes)."""
        if self.room is None:
            self.room = _StaticRoom.allocate(
                prefill, self.room_capacity, halves, self.room_width, self.config, _pad_id(self.tokenizer)
            )
        return self.room

    def _static_step(self, batch: _StaticRoom, rows: _DecodeRows, columns: int) -> None:
        """One step of a static batch's current bucket over the room's first ``columns`` columns, reading and
        writing only preallocated tensors (so that it can be captured as a CUDA graph): feed the tokens, draw the
        next ones, record them."""
        logits = batch.forward(self.runner, columns)
        tokens = self._draw_and_record(logits, rows, batch.active, batch.row_seeds, batch.step, batch.halves)
        batch.advance(tokens)

    def _placeholder_token(self) -> int:
        bos = self.tokenizer.bos_token_id
        return self.eos_token_ids[0] if bos is None else bos

    def _prefill(self, prompt_ids: list[list[int]], repeats: int):
        """Run the left-padded prompts through the model once and repeat each ``repeats`` times: the last
        logits (rows, V), the KV cache, the attention mask (rows, width) and each row's last position (rows,)."""
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), _pad_id(self.tokenizer), dtype=torch.long)
        attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = position_ids_from_mask(attention_mask)
        logits, cache = self.runner(
            input_ids, attention_mask, position_ids, _new_cache(self.runner.model), last_logits_only=True
        )
        logits = logits[:, -1].float()
        if repeats > 1:
            logits = logits.repeat_interleave(repeats, dim=0)
            cache.batch_repeat_interleave(repeats)
            attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
            position_ids = position_ids.repeat_interleave(repeats, dim=0)
        return logits, cache, attention_mask, position_ids[:, -1]

    def _any_rank_sampling(self, remaining: int) -> bool:
        """Whether to take another step: this rank has unfinished rows or (synced) another rank has."""
        if self.synced:
            return bool(reduce_int(int(remaining > 0), "max", self.device))
        return remaining > 0

    def _apply_stop_strings(self, rows: _DecodeRows, active: torch.Tensor, first_step: int, steps_taken: int) -> None:
        """End each row at the first of steps ``first_step`` .. ``steps_taken - 1`` after which its decoded
        tail contains a stop string (text checks need the host), dropping what it sampled after it. A row that
        ended with EOS at one of these steps keeps it unless a stop string came earlier."""
        # In tokens: a character can take one per UTF-8 byte (byte-level BPE, byte fallback), and a window must
        # also reach back past the token that held the stop string's first byte.
        tail_length = max(len(s.encode("utf-8")) for s in self.stop_strings) + 8
        start = max(0, first_step + 1 - tail_length)  # the first column any of these tails reads
        places = active.tolist()
        lengths = rows.lengths[places].tolist()
        windows = rows.responses[places, start:steps_taken].tolist()
        for row, length, window in zip(places, lengths, windows, strict=True):
            for step in range(first_step, min(length, steps_taken)):
                tail = window[max(0, step + 1 - tail_length) - start : step + 1 - start]
                if any(stop in self.tokenizer.decode(tail, skip_special_tokens=True) for stop in self.stop_strings):
                    if step + 1 < length or not rows.finished[row]:
                        rows.finish_at(row, step)
                    break

    def _result(
        self,
        rows: _DecodeRows,
        num_rows: int,
        steps_taken: int,
        prompt_rows: list[list[int]],
        prompt_index: list[int],
    ) -> _ChunkResult:
        """The first ``num_rows`` rows (not the sink) as token lists and texts."""
        lengths = rows.lengths[:num_rows].tolist()
        responses = rows.responses[:num_rows, :steps_taken].tolist()
        logprobs = rows.logprobs[:num_rows, :steps_taken].tolist()
        token_lists = [tokens[:length] for tokens, length in zip(responses, lengths, strict=True)]
        logprob_lists = [values[:length] for values, length in zip(logprobs, lengths, strict=True)]
        texts = [self._cut_at_stop(text) for text in self.tokenizer.batch_decode(token_lists, skip_special_tokens=True)]
        truncated = [not done for done in rows.finished[:num_rows].tolist()]
        return _ChunkResult(prompt_rows, token_lists, logprob_lists, truncated, prompt_index, texts)

    def _cut_at_stop(self, text: str) -> str:
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        return text
