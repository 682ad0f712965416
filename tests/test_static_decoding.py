"""The static decoding path: buckets, the preallocated KV cache's bookkeeping, and samples identical to the
dynamic path's (what a GPU runs, less the CUDA graph capture itself)."""

from dataclasses import replace

import pytest
import torch
from transformers import (
    AttentionInterface,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import AttentionMaskInterface

from lit_reason import static_decoding
from lit_reason.conditioning import Conditioning, Guidance
from lit_reason.sampling import SamplingConfig, draw_tokens, sample
from lit_reason.static_decoding import SlotCache, bucket_for, supports_static_cache
from tests.helpers.graph_replay import Recording, emulate_graphs
from tests.helpers.host_reads import HostReads

PROMPTS = ["Ann has 3 apples.\n", "A much longer prompt that needs left padding here.\n", "Hi\n"]


@pytest.mark.parametrize(
    ("rows", "capacity", "bucket"),
    [(24, 24, 24), (17, 24, 24), (16, 24, 16), (9, 24, 16), (5, 24, 8), (2, 24, 2), (1, 24, 1), (0, 24, 1), (3, 3, 3)],
)
def test_buckets_are_the_chunk_then_powers_of_two(rows, capacity, bucket):
    assert bucket_for(rows, capacity) == bucket


def _prefill_cache(rows: int, width: int) -> DynamicCache:
    """A one-layer cache whose key at (row, head, column) is 100 * row + column (values: the negative)."""
    cache = DynamicCache()
    keys = (100 * torch.arange(rows)[:, None, None, None] + torch.arange(width)[None, None, :, None]).float()
    keys = keys.expand(rows, 2, width, 3).contiguous()
    cache.update(keys, -keys, 0)
    return cache


def test_the_room_repeats_each_prompt_keeps_twins_apart_and_compacts_in_order():
    # Two prompts of width 4 and their negative twins (halves 2), 3 samples each: 6 rows in a bucket of 8 slots
    # of 2 model rows, in room for prompts of width 5 (so one more column of left padding) and 2 new tokens.
    prefill = _prefill_cache(rows=4, width=4)
    slots = SlotCache(prefill, capacity=8, halves=2, width=5, length=7)
    slots.load(prefill, repeats=3, bucket=8)
    keys = slots.keys[0]
    assert keys.shape == (16, 2, 7, 3)
    assert keys[:, 0, 1, 0].tolist() == [0, 0, 0, 100, 100, 100, 0, 0] + [200, 200, 200, 300, 300, 300, 0, 0]
    assert keys[0, 0, :, 0].tolist() == [0, 0, 1, 2, 3, 0, 0]  # the prompt's columns end at the room's width
    assert int(slots.position) == 5
    # A step writes every model row's new key at the shared position; the bucket's views share the room.
    cache = slots.cache(8, 7)
    new = torch.full((16, 2, 1, 3), 7.0)
    cache.update(new, -new, 0)
    assert (keys[:, :, 5] == 7).all() and (slots.values[0][:, :, 5] == -7).all()
    assert int(slots.position) == 5, "the decoder advances the position once per step, not every layer"
    # Slots 4 and 1 stay, as a bucket of 2: sampled rows 4, 1 then their twins 12, 9.
    slots.compact(torch.tensor([4, 1, 12, 9]))
    assert keys[:4, 0, 1, 0].tolist() == [100, 0, 300, 200]
    bucket = slots.cache(2, 7)
    assert bucket.layers[0].keys.shape[0] == 4 and bucket.layers[0].keys.data_ptr() == keys.data_ptr()
    assert slots.cache(2, 7) is bucket, "a bucket's cache is built once (a captured graph holds its tensors)"
    # The next chunk: one prompt of width 2 (twins right after its 2 rows, in a bucket of 2), the same tensors.
    slots.load(_prefill_cache(rows=2, width=2), repeats=2, bucket=2)
    assert keys[:4, 0, 3:5, 0].tolist() == [[0, 1], [0, 1], [100, 101], [100, 101]] and int(slots.position) == 5
    # Attention over the first 6 columns: views of the room, which a step writes through, and masks that wide.
    narrow = slots.cache(2, 6)
    assert narrow.layers[0].keys.shape == (4, 2, 6, 3) and narrow.layers[0].keys.data_ptr() == keys.data_ptr()
    assert narrow.get_mask_sizes(torch.tensor([5]), 0)[0] == 6
    narrow.update(torch.full((4, 2, 1, 3), 9.0), torch.zeros(4, 2, 1, 3), 0)
    assert (keys[:4, :, 5] == 9).all()


@pytest.mark.parametrize(
    ("written", "length", "columns"), [(1, 300, 64), (64, 300, 64), (65, 300, 128), (290, 300, 300)]
)
def test_steps_read_the_columns_written_in_whole_blocks(written, length, columns):
    assert static_decoding.COLUMN_BLOCK == 64
    assert static_decoding.columns_for(written, length) == columns


GUIDED = Conditioning("[G]", guidance=Guidance(negative_prefix="[B]", scale=1.5), suppressed_token_ids=(5,))
SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
TINY_LLAMA = LlamaConfig(**SMALL)
DYNAMIC_ROPE = {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}


def _sample(model, tokenizer, decoding, conditioning, temperature, every, batch_size=16, max_new_tokens=20):
    eos = [tokenizer.convert_tokens_to_ids(character) for character in "e "] + [tokenizer.eos_token_id]
    config = SamplingConfig(
        num_samples=4,
        temperature=temperature,
        top_k=20 if temperature else 0,
        top_p=0.9 if temperature else 1.0,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        finished_check_every=every,
        decoding=decoding,
    )
    return sample(
        model, tokenizer, PROMPTS, config, [4, 5, 6], eos_token_ids=eos, stop_strings=["o"], conditioning=conditioning
    )


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize(
    "conditioning",
    [Conditioning(), GUIDED],
    ids=["plain", "guided-suppressed"],
)
def test_static_decoding_samples_what_dynamic_decoding_does(
    micro_model, char_tokenizer, monkeypatch, conditioning, temperature
):
    compactions = []
    compact = static_decoding.SlotCache.compact
    monkeypatch.setattr(
        static_decoding.SlotCache, "compact", lambda self, rows: compactions.append(len(rows)) or compact(self, rows)
    )
    for every in (1, 3):
        dynamic = _sample(micro_model, char_tokenizer, "dynamic", conditioning, temperature, every)
        static = _sample(micro_model, char_tokenizer, "static", conditioning, temperature, every)
        assert static.texts == dynamic.texts
        for field in ("input_ids", "response_mask", "truncated", "prompt_index"):
            assert torch.equal(getattr(static, field), getattr(dynamic, field)), field
        # Finished rows leave the batch at other steps, so the matmuls have other shapes: rounding differs.
        assert torch.allclose(static.logprobs, dynamic.logprobs, atol=1e-5, rtol=0)
        if temperature:  # (greedy, this random model repeats one character: every row runs to the limit)
            assert static.truncated.any() and not static.truncated.all(), "the test needs rows that end and don't"
    if temperature:
        assert compactions, "the test needs rows that finish and leave for a smaller bucket"


def test_a_captured_step_never_waits_for_the_device(micro_model, char_tokenizer, monkeypatch):
    """What a CUDA graph needs of a step, checked on the CPU: no operation of it (the model's forward included)
    reads a value on the host or makes a shape of values. Guided, suppressed, top-k and top-p, rows leaving for
    smaller buckets: every op."""
    waits, buckets = [], set()

    def run_watched(self, bucket, step):
        buckets.add(bucket)
        with HostReads() as reads:
            step()
        waits.extend(reads.seen)

    monkeypatch.setattr(static_decoding.GraphedSteps, "run", run_watched)
    _sample(micro_model, char_tokenizer, "static", GUIDED, 0.8, every=2)
    assert len(buckets) > 2 and waits == []
    # The watch sees what it must.
    with HostReads() as reads:
        tokens = torch.tensor([3, 0, 5])
        int(tokens.sum()), tokens[tokens > 1], torch.nonzero(tokens), tokens.repeat_interleave(tokens)
    assert len(reads.seen) == 4


@pytest.mark.parametrize("conditioning", [Conditioning(), GUIDED], ids=["plain", "guided-suppressed"])
def test_steps_replayed_as_captured_sample_what_dynamic_decoding_does(
    micro_model, char_tokenizer, monkeypatch, conditioning
):
    """A captured graph replays its step with every value the host gave it frozen: emulated on the CPU, each
    bucket's step recorded once and replayed for every later step of every chunk."""
    dynamic = _sample(micro_model, char_tokenizer, "dynamic", conditioning, 0.8, every=2)
    replayed = emulate_graphs(monkeypatch)
    monkeypatch.setattr(static_decoding, "COLUMN_BLOCK", 4)  # steps read more columns as they go: several graphs
    static = _sample(micro_model, char_tokenizer, "static", conditioning, 0.8, every=2)
    buckets, columns = ({shape[i] for shape in replayed} for i in (0, 1))
    assert len(buckets) > 1 and len(columns) > 2, "the test needs several buckets and column blocks replayed"
    assert all(c % 4 == 0 or c == max(columns) for c in columns)
    assert static.texts == dynamic.texts and torch.equal(static.input_ids, dynamic.input_ids)
    assert torch.allclose(static.logprobs, dynamic.logprobs, atol=1e-5, rtol=0)


def test_spare_slots_stay_within_a_model_with_learned_positions(char_tokenizer):
    """A chunk's spare slots (a last chunk of 3 rows runs in a bucket of 4) start at the prompts' end, not where
    an earlier chunk's rows left off: GPT-2 looks positions up in a table as long as its context."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(char_tokenizer), n_positions=40, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    prompts = ["abcdef", "ghijkl", "mnopqr", "stuvwx", "yz0123"]
    batches = {
        decoding: sample(
            model,
            char_tokenizer,
            prompts,
            SamplingConfig(num_samples=3, temperature=0.0, max_new_tokens=24, batch_size=6, decoding=decoding),
            list(range(5)),
            eos_token_ids=[char_tokenizer.eos_token_id],
        )
        for decoding in ("dynamic", "static")
    }
    assert batches["static"].texts == batches["dynamic"].texts


def test_models_the_static_cache_cannot_lay_out():
    assert supports_static_cache(LlamaForCausalLM(TINY_LLAMA))
    assert not supports_static_cache(LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA.to_dict(), **DYNAMIC_ROPE})))
    assert not supports_static_cache(MistralForCausalLM(MistralConfig(**SMALL, sliding_window=4)))


def test_what_static_decoding_cannot_do_is_refused(micro_model, char_tokenizer):
    with pytest.raises(ValueError, match="decoding must be one of dynamic, static, cuda_graph"):
        SamplingConfig(decoding="graph")
    config = SamplingConfig(max_new_tokens=2, decoding="cuda_graph")
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device, not cpu"):
        sample(micro_model, char_tokenizer, PROMPTS[:1], config, [0], eos_token_ids=[0])
    for attention in ("flash_attention_2", "eager"):  # (set, not loaded: refused before any forward)
        micro_model.config._attn_implementation = attention
        with pytest.raises(ValueError, match=f"cuda_graph captures sdpa attention, not {attention}"):
            sample(micro_model, char_tokenizer, PROMPTS[:1], config, [0], eos_token_ids=[0])
    sliding = MistralForCausalLM(MistralConfig(**{**SMALL, "vocab_size": len(char_tokenizer)}, sliding_window=4))
    with pytest.raises(ValueError, match="other cache layers .sliding windows"):
        sample(sliding, char_tokenizer, PROMPTS[:1], replace(config, decoding="static"), [0], eos_token_ids=[0])


def _attention_reading_a_padding_mask(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention that applies a 2D padding mask as flash attention does: a one-token query sees exactly the
    columns the mask marks (no causality applies to it); a longer query is causal, aligned to the last key."""
    queries, keys = query.shape[2], key.shape[2]
    seen = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)[None, None]
    if attention_mask is not None:
        seen = seen & attention_mask[:, None, None, :].bool()
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    output = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=seen, scale=scaling)
    return output.transpose(1, 2).contiguous(), None


def test_the_mask_shows_exactly_the_columns_written(micro_model, char_tokenizer):
    """Attention that trusts the 2D mask alone for a one-token query (flash attention's way) sees no column of
    the room before its step writes it: no zeros of a fresh room, no states of an earlier chunk."""
    AttentionInterface.register("padding_mask_only", _attention_reading_a_padding_mask)
    AttentionMaskInterface.register("padding_mask_only", lambda *_, attention_mask, kv_length, **__: attention_mask)
    micro_model.config._attn_implementation = "padding_mask_only"
    dynamic = _sample(micro_model, char_tokenizer, "dynamic", Conditioning(), 0.8, every=1, batch_size=8)
    static = _sample(micro_model, char_tokenizer, "static", Conditioning(), 0.8, every=1, batch_size=8)
    assert static.texts == dynamic.texts
    assert torch.allclose(static.logprobs, dynamic.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config",
    [SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.8), SamplingConfig(top_k=50, top_p=0.9)],
    ids=["greedy", "plain", "top-k-top-p"],
)
def test_a_large_vocabulary_draw_waits_for_nothing_and_replays_with_the_step_it_is_given(config):
    """The draw's block search (vocabularies over 1,024 tokens, as every real model has) under the host-reads
    watch and replayed as captured: a replay at the next step draws what an eager draw at that step does."""
    generator = torch.Generator().manual_seed(0)
    logits, seeds = torch.randn(6, 5_003, generator=generator) * 3, torch.arange(6) * 7919
    step, tokens, logprobs = torch.tensor(3), torch.zeros(6, dtype=torch.long), torch.zeros(6)

    def draw_into_place():
        drawn, drawn_logprobs = draw_tokens(logits, config, seeds, step)
        tokens.copy_(drawn), logprobs.copy_(drawn_logprobs)

    with HostReads() as reads, Recording() as recording:
        draw_into_place()
    assert reads.seen == []
    step.fill_(4)
    recording.replay()
    expected_tokens, expected_logprobs = draw_tokens(logits, config, seeds, 4)
    assert torch.equal(tokens, expected_tokens) and torch.equal(logprobs, expected_logprobs)
    if not config.greedy:
        assert not torch.equal(expected_tokens, draw_tokens(logits, config, seeds, 3)[0]), "steps must matter here"


@pytest.mark.parametrize("decoding", ["dynamic", "static"])
def test_a_row_can_end_at_its_first_token(micro_model, char_tokenizer, decoding):
    config = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=8, decoding=decoding)
    every_token = list(range(len(char_tokenizer)))
    batch = sample(micro_model, char_tokenizer, PROMPTS, config, [1, 2, 3], eos_token_ids=every_token)
    assert batch.response_lengths.tolist() == [1] * 6 and not batch.truncated.any()


def test_a_step_a_capture_refuses_names_its_first_error_and_gives_the_stream_back(monkeypatch):
    """On a GPU, a step the capture refuses voids it; ending the capture then fails too, inside
    ``torch.cuda.graph``'s exit, which never gives the current stream back. Emulated on the CPU: the stream is
    restored and the error names the refused operation and what to use instead."""
    current = {"stream": "default"}

    class Capture:  # torch.cuda.graph: capture on its stream; on exit, ending the voided capture raises
        def __init__(self, graph, pool, stream, capture_error_mode):
            self.stream = stream

        def __enter__(self):
            current["stream"] = self.stream

        def __exit__(self, *error):
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", Capture)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: current["stream"])
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: current.update(stream=stream))
    steps = static_decoding.GraphedSteps(use_graphs=False, device=torch.device("cpu"))
    steps.pool, steps.capture_stream = None, "capture"

    def refused_step():
        raise RuntimeError("operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match=r"could not capture the step of 8 rows reading 64 columns .*not permitted"):
        steps._capture((8, 64), refused_step)
    assert current["stream"] == "default"
