"""Rollout throughput: lit-reason's sampler against ``model.generate`` on the same model, prompts and settings.

Both generate K samples for each of N prompts of the built-in task, in batches of the same number of rows.
Generated tokens are counted up to and including EOS (tokens a finished row keeps producing in a padded
batch are not work anyone wanted). Each side runs once to warm up, then ``--repeats`` times; the median is
reported. In float32, greedy decoding of both must give identical text (for 99% of the prompts: a near-tie
may round either way in matmuls of other shapes). ``--decoding`` measures each of the sampler's decoding paths
(``dynamic``, ``static``, ``cuda_graph``; comma-separated) against the same ``generate`` run; in float32 their
samples must be the same (99% of them), and ``cuda_graph``'s must be ``static``'s in any dtype. A path that
fails prints its error and the others still run.

    python tools/bench_rollout.py                               # tiny preset, random weights
    python tools/bench_rollout.py --policy runs/sft/version_0/policy --device cuda

A real architecture with random weights (speed does not depend on the weights): ``--random-weights`` builds
the model from the policy directory's config, with ``--config-overrides`` applied, and keeps its tokenizer.
SmolLM2-135M's architecture and tokenizer from the GGUF file ``tools/fetch_smollm2.py`` fetches, and a
1.7B-parameter model of SmolLM2-1.7B's shape with the same tokenizer::

    S=$(python tools/fetch_smollm2.py)
    G='{"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}'
    python tools/bench_rollout.py --policy $S --load-kwargs "$G" --random-weights --dtype bfloat16
    python tools/bench_rollout.py --policy $S --load-kwargs "$G" --random-weights --dtype bfloat16 \
        --config-overrides '{"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
        "num_attention_heads": 32, "num_key_value_heads": 32}'
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from dataclasses import replace
from typing import get_args

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_reason import static_decoding
from lit_reason.policy import PolicySpec, eos_token_ids, load_model, load_tokenizer
from lit_reason.sampling import Decoding, SamplingConfig, encode_prompt, sample
from lit_reason.tasks import Arithmetic
from lit_reason.tensors import eval_mode, position_ids_from_mask, token_logprobs


def hf_generate(model, tokenizer, prompts, config: SamplingConfig, eos_ids, device) -> tuple[list[str], int]:
    """``model.generate`` over the prompts in batches of ``config.batch_size`` rows; (texts, tokens up to EOS)."""
    per_batch = max(1, config.batch_size // config.num_samples)
    texts, tokens = [], 0
    for start in range(0, len(prompts), per_batch):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + per_batch]]
        width = max(map(len, encoded))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded], device=device)
        attention_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        sampling = (
            {"do_sample": False}
            if config.greedy
            else {
                "do_sample": True,
                "temperature": config.temperature,
                "top_k": config.top_k,
                "top_p": config.top_p,
            }
        )
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=config.max_new_tokens,
            num_return_sequences=config.num_samples,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
        kept = []
        for row in output[:, width:].tolist():
            ends = [i for i, token in enumerate(row) if token in eos_ids]
            kept.append(row[: ends[0] + 1] if ends else row)
            tokens += len(kept[-1])
        texts += tokenizer.batch_decode(kept, skip_special_tokens=True)  # as the sampler decodes its rows
    return texts, tokens


def ours(model, tokenizer, prompts, config: SamplingConfig, eos_ids) -> tuple[list[str], int]:
    batch = sample(model, tokenizer, prompts, config, list(range(len(prompts))), eos_token_ids=eos_ids)
    return batch.texts, int(batch.response_lengths.sum())


LOGPROB_CHECK_ROWS = 32


@torch.no_grad()
def logprob_gap(model, tokenizer, prompts, config: SamplingConfig, eos_ids) -> float:
    """Largest difference between the sampler's log-probs of its tokens and a training forward's (one batch,
    at the sampling temperature)."""
    batch = sample(model, tokenizer, prompts, config, list(range(len(prompts))), eos_token_ids=eos_ids)
    device = next(model.parameters()).device
    input_ids, attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).logits
    forward = token_logprobs(logits, input_ids, config.temperature).cpu()
    mask = batch.response_mask
    return float((batch.logprobs[mask] - forward[mask]).abs().max())


def timed(fn, repeats: int) -> tuple[float, list[str]]:
    """Median tokens/s over ``repeats`` runs after one warm-up, and the last run's texts."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        texts, tokens = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="tiny", help="tiny preset or exported policy directory")
    parser.add_argument(
        "--preset-overrides",
        default="{}",
        help="JSON LlamaConfig fields for a preset, e.g. '{\"num_hidden_layers\": 12}'",
    )
    parser.add_argument(
        "--load-kwargs",
        default="{}",
        help='JSON from_pretrained options, e.g. \'{"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}\'',
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the policy's architecture (its config, with --config-overrides) with random weights",
    )
    parser.add_argument("--config-overrides", default="{}", help="JSON config fields for --random-weights")
    parser.add_argument("--seed", type=int, default=0, help="random weights' seed")
    parser.add_argument("--prompts", type=int, default=64, help="prompts from the arithmetic validation split")
    parser.add_argument("--num-samples", type=int, default=8, help="samples per prompt (K)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256, help="rows per forward pass, both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--decoding",
        default="dynamic",
        help="the sampler's decoding paths to measure, comma-separated: " + ", ".join(get_args(Decoding)),
    )
    parser.add_argument(
        "--column-block",
        type=int,
        default=static_decoding.COLUMN_BLOCK,
        help="columns the static paths' attention reads at a time (a number past prompt + max new tokens: the "
        "whole KV room at every step)",
    )
    args = parser.parse_args()
    if args.column_block < 1:
        parser.error("--column-block: at least 1")
    static_decoding.COLUMN_BLOCK = args.column_block
    decodings = args.decoding.split(",")
    if unknown := set(decodings) - set(get_args(Decoding)):
        parser.error(f"--decoding: unknown {', '.join(sorted(unknown))}; choose from {', '.join(get_args(Decoding))}")

    spec = PolicySpec(
        name_or_path=args.policy,
        preset_overrides=json.loads(args.preset_overrides),
        load_kwargs=json.loads(args.load_kwargs),
    )
    tokenizer = load_tokenizer(spec)
    if args.random_weights:
        if spec.is_preset:
            raise SystemExit("--random-weights builds a policy directory's architecture; presets are random already")
        config = AutoConfig.from_pretrained(spec.resolved(), **spec.load_kwargs)
        for name, value in json.loads(args.config_overrides).items():
            setattr(config, name, value)
        torch.manual_seed(args.seed)
        with torch.device(args.device):  # initialised where it runs: a 1.7B model's init on the host takes long
            model = AutoModelForCausalLM.from_config(config)
        model.resize_token_embeddings(max(len(tokenizer), config.vocab_size))
    else:
        model = load_model(spec, tokenizer)
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    eos_ids = eos_token_ids(model, tokenizer)
    task = Arithmetic()
    prompts = [task.prompt(p, tokenizer) for p in task.problems("validation")[: args.prompts]]
    config = SamplingConfig(
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    greedy = SamplingConfig(
        num_samples=1, temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model={args.policy}{' (random weights)' if args.random_weights else ''} ({parameters:.1f}M parameters) "
        f"device={args.device} dtype={args.dtype} "
        f"prompts={args.prompts} K={args.num_samples} T={args.temperature} top_p={args.top_p} "
        f"max_new_tokens={args.max_new_tokens} rows/batch={args.batch_size} column_block={args.column_block}"
    )

    with eval_mode(model):
        generate_greedy, _ = hf_generate(model, tokenizer, prompts, greedy, eos_ids, args.device)
        hf_rate, hf_texts = timed(
            lambda: hf_generate(model, tokenizer, prompts, config, eos_ids, args.device), args.repeats
        )
    print(f"model.generate: {hf_rate:,.0f} tokens/s, mean response {mean_length(hf_texts):.1f} chars")
    failures, samples = [], {}
    for decoding in decodings:
        try:
            rate, texts, mismatches, gap = measure_ours(
                model, tokenizer, prompts, replace(config, decoding=decoding), replace(greedy, decoding=decoding),
                eos_ids, generate_greedy, args.repeats,
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - one path's failure must not cost the others' figures
            print(f"lit-reason sampler ({decoding}): Error {type(error).__name__}: {error}")
            failures.append(f"{decoding}: {type(error).__name__}")
            continue
        samples[decoding] = texts
        first = next(iter(samples))
        same = identical(texts, samples[first])
        print(
            f"lit-reason sampler ({decoding}): {rate:,.0f} tokens/s, ratio {rate / hf_rate:.2f}x, "
            f"mean response {mean_length(texts):.1f} chars, "
            f"greedy outputs identical {len(prompts) - mismatches}/{len(prompts)}, "
            f"samples identical to {first}'s {same}/{len(texts)}, "
            f"sampled log-probs vs a training forward's: largest difference {gap:.2e} ({args.dtype})"
        )
        if args.dtype == "float32":  # in half precision near-ties may round either way
            if mismatches > 0.01 * len(prompts):
                failures.append(f"{decoding}: {mismatches} greedy outputs differ from model.generate")
            if same < 0.99 * len(texts):  # (other matmul shapes may round a draw at a boundary otherwise)
                failures.append(f"{decoding}: only {same}/{len(texts)} samples equal {first}'s")
    # A replayed graph runs the static step's kernels at its shapes: in any dtype its samples are static's. A
    # value frozen at capture (the step counter, the seeds) would draw others, though greedy outputs and
    # log-probs would still agree.
    if "cuda_graph" in samples and "static" in samples:
        same = identical(samples["cuda_graph"], samples["static"])
        print(f"cuda_graph samples identical to static's: {same}/{len(samples['static'])}")
        if same < 0.99 * len(samples["static"]):
            failures.append(f"cuda_graph: only {same}/{len(samples['static'])} samples equal static's")
    if failures:
        raise SystemExit("; ".join(failures))


def measure_ours(model, tokenizer, prompts, config, greedy, eos_ids, generate_greedy, repeats: int):
    """One decoding path (``config.decoding``): its median tokens/s, its last sampled texts, how many of its
    greedy outputs differ from ``model.generate``'s (``generate_greedy``) and the largest gap between its
    sampled log-probs and a training forward's."""
    with eval_mode(model):
        texts, _ = ours(model, tokenizer, prompts, greedy, eos_ids)
        mismatches = len(texts) - identical(texts, generate_greedy)
        rate, sampled_texts = timed(functools.partial(ours, model, tokenizer, prompts, config, eos_ids), repeats)
        # A few prompts: a forward's logits over the whole vocabulary are large.
        check = prompts[: max(1, LOGPROB_CHECK_ROWS // config.num_samples)]
        gap = logprob_gap(model, tokenizer, check, config, eos_ids)
    return rate, sampled_texts, mismatches, gap


def identical(texts: list[str], others: list[str]) -> int:
    """How many of two runs' texts, row by row, are the same."""
    return sum(a == b for a, b in zip(texts, others, strict=True))


def mean_length(texts: list[str]) -> float:
    return sum(map(len, texts)) / len(texts)


if __name__ == "__main__":
    main()
