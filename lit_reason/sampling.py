"""Batched sampling with a KV cache, shared by rollouts and evaluation.

The sampler returns everything a trainer needs from a rollout in one ``SampleBatch``: token ids, masks, the
log-probability of every sampled token under the distribution it was sampled from, and the decoded text.

Design points:

* **Log-probs** are those of the temperature-scaled, *unfiltered* softmax (top-k / top-p only decide which
  tokens may be drawn), so a training forward at the same temperature reproduces them exactly and PPO's first
  ratio is 1.
* **Reproducible per question**: every row draws each token by inverting the cumulative distribution at one
  uniform number, a counter-based hash of (row seed, step), so a question's samples do not depend on the
  batch it lands in, the rank, the batch size or the device; and the noise costs one number per row, not
  one per vocabulary entry. A token whose logit is -inf (filtered, suppressed) has no cumulative mass and is
  never drawn.
* **One prefill per prompt**: a prompt's K samples share its KV cache, computed once.
* **Finished rows leave the batch**: once a quarter of the rows have emitted EOS they are dropped from the
  KV cache, so short samples stop paying for long ones; and the cache grows into preallocated room instead
  of being concatenated every step (together with the shared prefill, the speed-up over ``model.generate``).
* **Guidance** (optional): every step's distribution contrasts the prompt with a negative prompt (the same
  prompt behind another response prefix, e.g. the bad-return token of a return-conditioned policy) as in
  classifier-free guidance, ``log p_neg + scale * (log p - log p_neg)`` over log-softmaxes: the formula of
  Hugging Face's ``guidance_scale`` with ``negative_prompt_ids``. The negative rows run beside the sampled
  ones through the same forward passes and receive the same tokens.
* **Distributed**: with ``synced=True`` every rank keeps running forward passes (on a placeholder row once
  its own rows are done) until all ranks are done, as sharded models (FSDP) need every rank in every
  forward.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer

from lit_reason.distributed import is_distributed, rank_and_world_size, reduce_int

_HASH_MULTIPLIER = 0x45D9F3B  # small enough that 32-bit products never overflow int64
_MASK32 = 0xFFFFFFFF


@dataclass
class SamplingConfig:
    """How responses are sampled.

    Args:
        num_samples: responses per prompt (K).
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: sample only among the k most likely tokens (0: no limit).
        top_p: sample only from the smallest set of tokens whose probability reaches top_p (1: no limit).
        max_new_tokens: longest response; a response that reaches it without EOS is marked truncated.
        batch_size: sequences per forward pass (prompts are never split across two batches).
        seed: with the question id (and the round, in training), fixes every sample.
    """

    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("num_samples, max_new_tokens and batch_size must be at least 1")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Guidance:
    """Contrast every step's distribution with the same prompt behind another response prefix.

    Args:
        negative_prefix: text placed after the prompt instead of the response prefix in the negative rows
            ("" for the bare prompt, i.e. classic unconditional guidance).
        scale: ``log p_neg + scale * (log p - log p_neg)``: 1 samples the conditioned policy as it is, larger
            values push away from the negative prefix (Hugging Face's ``guidance_scale``).
    """

    negative_prefix: str
    scale: float

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ValueError(f"the guidance scale must be >= 0, got {self.scale}")


def guided_logits(logits: torch.Tensor, negative_logits: torch.Tensor, scale: float) -> torch.Tensor:
    """(R, V), (R, V) -> (R, V): ``log p_neg + scale * (log p - log p_neg)``, over log-softmaxes; -inf where
    the policy's own logit is -inf (the formula would give NaN where both are)."""
    positive, negative = logits.log_softmax(-1), negative_logits.log_softmax(-1)
    guided = negative + scale * (positive - negative)
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
    to (a normalizer may still prepend "▁" there); else by itself.
    """
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


def row_seed(*parts: int | str) -> int:
    """A 62-bit seed from any integers or strings (seed, round, question id, sample index, ...)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def counter_uniform(seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform number per row, strictly inside (0, 1), that depends only on (row seed, step).

    Counter-based: a 32-bit integer hash of the two, so the same row gets the same number whatever batch,
    device or process it is computed in.

    Args:
        seeds: (R,) long, non-negative row seeds.
        step: decoding step.

    Returns:
        (R,) float64.
    """
    low, high = seeds & _MASK32, (seeds >> 32) & _MASK32
    value = _hash32(low ^ _hash32(torch.full_like(low, step & _MASK32)))
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


_PROBABILITY_SCALE = 2.0**40  # probabilities as integers in units of 2**-40: their sum, about 2**40, fits int64


def inverse_cdf_draw(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """A draw from ``softmax(logits)`` per row by inverting its cumulative distribution at ``uniforms``.

    Probabilities are counted in integer units of 2**-40 and summed exactly (a float cumulative sum rounds
    differently by device and, on a GPU, by batch shape, and can give a token of probability 0 a step of
    one ulp). The chosen token is the first whose cumulative count exceeds ``floor(u * total)``, a number in
    [0, total): a token at -inf counts 0, so it never exceeds what its predecessor did and is never drawn.
    Probabilities below 2**-40 are never drawn.

    Args:
        logits: (R, V) float logits, -inf for tokens that may not be drawn.
        uniforms: (R,) float64 numbers in (0, 1), e.g. from ``counter_uniform``.

    Returns:
        (R,) long token ids. A row with no finite logit (which callers must not pass) gets token V - 1 rather
        than an index out of range.
    """
    probabilities = logits.float().softmax(-1).nan_to_num(0.0)
    cumulative = (probabilities * _PROBABILITY_SCALE).long().cumsum(-1)  # scaling by 2**40 is exact in float32
    targets = (uniforms.double() * cumulative[:, -1].double()).long()
    tokens = torch.searchsorted(cumulative, targets[:, None], side="right")[:, 0]
    return tokens.clamp(max=logits.shape[-1] - 1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with every token outside the top-k / top-p (nucleus) set at -inf. (R, V) -> (R, V).

    The most likely token always survives; top-p keeps the smallest prefix of the sorted distribution whose
    mass reaches ``top_p``.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_tokens(logits: torch.Tensor, config: SamplingConfig, seeds: torch.Tensor, step: int):
    """Pick the next token of every row and its log-prob.

    Args:
        logits: (R, V) float32 logits of the next token.
        config: temperature, top-k, top-p.
        seeds: (R,) long row seeds.
        step: decoding step (feeds the noise).

    Returns:
        tokens (R,) long and logprobs (R,) float32 under the temperature-scaled unfiltered softmax.
    """
    if config.greedy:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    scaled = logits / config.temperature
    logprobs = scaled.log_softmax(-1)
    allowed = filter_logits(scaled, config.top_k, config.top_p)
    tokens = inverse_cdf_draw(allowed, counter_uniform(seeds, step))
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


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


class _CausalLM:
    """Calls a Hugging Face causal LM with a KV cache across transformers versions (the cache argument was
    renamed from ``past_key_values`` to ``cache``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        parameters = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self.keep_arg = next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), None)

    def __call__(self, input_ids, attention_mask, position_ids, cache):
        cache = cache if cache is not None else _new_cache(self.model)
        kwargs = {self.cache_arg: cache, "use_cache": True}
        if self.keep_arg:
            kwargs[self.keep_arg] = 1
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        new_cache = output.cache if self.cache_arg == "cache" else output.past_key_values
        return output.logits[:, -1].float(), new_cache


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    config: SamplingConfig,
    seeds: Sequence[int],
    *,
    eos_token_ids: Sequence[int],
    response_prefix: str = "",
    stop_strings: Sequence[str] = (),
    suppress_token_ids: Sequence[int] = (),
    guidance: Guidance | None = None,
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
        response_prefix: fixed text placed after every prompt and before the sampled tokens (e.g. a return
            token); part of the prompt for masks and log-probs, not of ``texts``.
        stop_strings: text that also ends a response (checked on the decoded tail of each row).
        suppress_token_ids: tokens never generated (e.g. return tokens, which only condition): their logits
            are -inf, so log-probs are over the other tokens.
        guidance: contrast each step with the prompt behind ``guidance.negative_prefix`` (none: plain
            sampling). Doubles the rows each forward pass computes; ``config.batch_size`` counts them all.
        synced: keep stepping until every rank is done; default: when torch.distributed is initialised.
        progress: show a progress bar (on rank 0).
        description: the progress bar's label.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    if synced is None:
        synced = is_distributed()
    device = next(model.parameters()).device
    guided = guidance is not None and guidance.scale != 1
    plain = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    prefix_ids = encode_response_prefix(tokenizer, response_prefix)
    encoded = [ids + prefix_ids for ids in plain]
    negative = None
    if guided:
        negative_ids = encode_response_prefix(tokenizer, guidance.negative_prefix)
        negative = [ids + negative_ids for ids in plain]
    k = config.num_samples
    prompts_per_chunk = max(1, config.batch_size // (k * (2 if guided else 1)))
    chunks = [
        list(range(i, min(i + prompts_per_chunk, len(prompts)))) for i in range(0, len(prompts), prompts_per_chunk)
    ]
    num_chunks = reduce_int(len(chunks), "max", device) if synced else len(chunks)
    runner = _CausalLM(model)
    show = progress and rank_and_world_size()[0] == 0
    results = []
    with tqdm(total=len(prompts) * k, desc=description, unit="sample", disable=not show, leave=False) as bar:
        for index in range(num_chunks):
            # A rank out of prompts while others are not still takes part in their forward passes (empty chunk).
            chunk = chunks[index] if index < len(chunks) else []
            seeds_of_rows = [row_seed(seeds[p], s) for p in chunk for s in range(k)]
            result = _generate_chunk(
                runner,
                [encoded[p] for p in chunk],
                [negative[p] for p in chunk] if guided else None,
                guidance.scale if guided else 1.0,
                k if chunk else 1,
                seeds_of_rows,
                [p for p in chunk for _ in range(k)],
                config,
                eos_token_ids,
                tokenizer,
                stop_strings,
                suppress_token_ids,
                synced,
                device,
            )
            if chunk:
                results.append(result)
                bar.update(len(seeds_of_rows))
    return _assemble(results, tokenizer)


def encode_response_prefix(tokenizer, prefix: str) -> list[int]:
    """Token ids of a response prefix (a return token), the same after every prompt."""
    return tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []


@dataclass
class _ChunkResult:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_logprobs: list[list[float]]
    truncated: list[bool]
    prompt_index: list[int]
    texts: list[str]


def _generate_chunk(
    runner: _CausalLM,
    prompt_ids: list[list[int]],
    negative_prompt_ids: list[list[int]] | None,
    guidance_scale: float,
    repeats: int,
    seeds: list[int],
    prompt_index: list[int],
    config: SamplingConfig,
    eos_token_ids: Sequence[int],
    tokenizer,
    stop_strings: Sequence[str],
    suppress_token_ids: Sequence[int],
    synced: bool,
    device: torch.device,
) -> _ChunkResult:
    """Sample ``repeats`` responses to each prompt; rows are prompt-major. Each prompt is run through the
    model once and its KV cache copied to its rows. Under guidance the model's batch holds the sampled rows,
    then as many negative rows (``negative_prompt_ids``, same order), which receive the same tokens."""
    placeholder = not prompt_ids  # only keeps a rank in step with the others
    if placeholder:
        prompt_ids, seeds = [[eos_token_ids[0] if tokenizer.bos_token_id is None else tokenizer.bos_token_id]], [0]
        negative_prompt_ids = prompt_ids if negative_prompt_ids is not None else None
    halves = 1 if negative_prompt_ids is None else 2
    model_prompts = prompt_ids + (negative_prompt_ids or [])
    width = max(len(ids) for ids in model_prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(model_prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(model_prompts), width), dtype=torch.long)
    for row, ids in enumerate(model_prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = position_ids_from_mask(attention_mask)
    logits, cache = runner(input_ids, attention_mask, position_ids, None)
    if repeats > 1:
        logits = logits.repeat_interleave(repeats, dim=0)
        cache.batch_repeat_interleave(repeats)
        attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
        position_ids = position_ids.repeat_interleave(repeats, dim=0)
        prompt_ids = [ids for ids in prompt_ids for _ in range(repeats)]
    num_rows = len(prompt_ids)
    row_seeds = torch.tensor(seeds, dtype=torch.long, device=device)
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)

    # Bookkeeping stays on the device, indexed by original row: one host sync per step.
    responses = torch.full((num_rows, config.max_new_tokens), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros((num_rows, config.max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.zeros(num_rows, dtype=torch.long, device=device)
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)
    if placeholder:
        finished[:] = True  # its tokens are never kept
    active = torch.arange(num_rows, device=device)  # original row of each row still in the batch
    next_position = position_ids[:, -1]
    stop_tail = max((len(s) for s in stop_strings), default=0) + 8
    steps_taken = 0
    suppressed = torch.tensor(list(suppress_token_ids), dtype=torch.long, device=device)
    for step in range(config.max_new_tokens):
        if halves == 2:
            logits = guided_logits(*logits.chunk(2), guidance_scale)
        if len(suppressed):
            logits[:, suppressed] = float("-inf")
        tokens, chosen_logprobs = draw_tokens(logits, config, row_seeds, step)
        live = ~finished[active]  # rows still sampling (finished rows wait in the batch for compaction)
        rows = active[live]
        responses[rows, step] = tokens[live]
        logprobs[rows, step] = chosen_logprobs[live].float()
        lengths[rows] += 1
        finished[rows] = torch.isin(tokens[live], eos)
        steps_taken = step + 1
        if stop_strings:
            _apply_stop_strings(tokenizer, responses[:, :steps_taken], finished, rows, stop_strings, stop_tail)
        remaining = int((~finished[active]).sum())
        if synced:
            if not reduce_int(int(remaining > 0), "max", device):
                break
        elif remaining == 0:
            break
        if steps_taken == config.max_new_tokens:
            break
        # Dropping rows copies the cache: worth it once a quarter of the rows are done (finished rows that
        # stay just compute tokens that are thrown away). A synced rank keeps one row to stay in step.
        if 4 * (len(active) - remaining) >= len(active) and (remaining or len(active) > 1):
            index = torch.nonzero(~finished[active])[:, 0] if remaining else active.new_zeros(1)
            model_index = torch.cat([index + half * len(active) for half in range(halves)])
            cache.batch_select_indices(model_index)
            attention_mask, next_position = attention_mask[model_index], next_position[model_index]
            active, row_seeds, tokens = active[index], row_seeds[index], tokens[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(attention_mask), 1))], dim=-1)
        next_position = next_position + 1
        logits, cache = runner(tokens.repeat(halves)[:, None], attention_mask, next_position[:, None], cache)

    if placeholder:
        return _ChunkResult([], [], [], [], [], [])
    ended, lengths = finished.tolist(), lengths.tolist()
    responses, logprobs = responses[:, :steps_taken].tolist(), logprobs[:, :steps_taken].tolist()
    token_lists = [tokens[:length] for tokens, length in zip(responses, lengths, strict=True)]
    logprob_lists = [values[:length] for values, length in zip(logprobs, lengths, strict=True)]
    texts = tokenizer.batch_decode(token_lists, skip_special_tokens=True)
    for row, text in enumerate(texts):
        for stop in stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
        texts[row] = text
    truncated = [not done for done in ended]
    return _ChunkResult(prompt_ids, token_lists, logprob_lists, truncated, prompt_index, texts)


def _apply_stop_strings(tokenizer, responses, finished, rows, stop_strings, tail_length) -> None:
    """Mark ``rows`` finished whose decoded tail contains a stop string (text checks need the host)."""
    for row in rows.tolist():
        if not finished[row]:
            tail = tokenizer.decode(responses[row, -tail_length:].tolist(), skip_special_tokens=True)
            if any(stop in tail for stop in stop_strings):
                finished[row] = True


def _assemble(results: list[_ChunkResult], tokenizer) -> SampleBatch:
    rows = [row for result in results for row in zip(*vars(result).values(), strict=True)]
    prompt_width = max((len(r[0]) for r in rows), default=0)
    response_width = max((len(r[1]) for r in rows), default=0)
    num_rows, width = len(rows), prompt_width + response_width
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((num_rows, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, width), dtype=torch.long)
    response_mask = torch.zeros((num_rows, width), dtype=torch.bool)
    logprobs = torch.zeros((num_rows, width), dtype=torch.float32)
    for row, (prompt, response, response_logprobs, *_) in enumerate(rows):
        start = prompt_width - len(prompt)
        end = prompt_width + len(response)
        input_ids[row, start:end] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[row, start:end] = 1
        response_mask[row, prompt_width:end] = True
        logprobs[row, prompt_width:end] = torch.tensor(response_logprobs, dtype=torch.float32)
    return SampleBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        logprobs=logprobs,
        truncated=torch.tensor([r[3] for r in rows], dtype=torch.bool),
        prompt_index=torch.tensor([r[4] for r in rows], dtype=torch.long),
        texts=[r[5] for r in rows],
        prompt_length=prompt_width,
    )
