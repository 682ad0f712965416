"""Paired comparison of two policies on the same held-out questions: maj@1 (greedy) of each, the difference,
and its paired 95% interval (`lit_reason.statistics.paired_interval`).

Both policies answer the same questions, so the interval pairs them question by question (pairing removes the
between-question variance): Newcombe's score interval for 0/1 outcomes, a paired bootstrap for shares.

    python tools/compare_policies.py --baseline ~/.cache/lit-reason/warm_start/sft-XXXX \\
        --candidate runs/ei/version_0/policy --split validation --questions 1000

The questions are the built-in task's unless ``--config`` names a lit-reason config (a run's ``config.yaml``, or
one of ``configs/``): then its ``data.task``, the first ``data.validation_questions`` / ``data.test_questions`` of
the split (where ``--questions`` is not given) and its evaluation's ``max_new_tokens`` (where
``--max-new-tokens`` is not given), as the run's own evaluations had them.

Or, for any task and without sampling again, pair two evaluations' per-question files (every validate / test
writes ``<log_dir>/predictions/<stage>-step<N>.jsonl``): every metric both recorded, with its interval.

    python tools/compare_policies.py --baseline-predictions runs/svamp_ei/version_0/predictions/val-step0.jsonl \\
        --candidate-predictions runs/svamp_ei/version_0/predictions/val-step9.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser

from lit_reason.conditioning import Conditioning, Guidance
from lit_reason.evaluation import paired_outcomes, read_predictions
from lit_reason.policy import PolicySpec, eos_token_ids, load_model, load_tokenizer
from lit_reason.sampling import SamplingConfig, row_seed, sample
from lit_reason.statistics import paired_interval
from lit_reason.tasks import Arithmetic, Problem, Task
from lit_reason.tensors import eval_mode


def greedy_correct(
    policy: str,
    problems: list[Problem],
    task,
    max_new_tokens: int,
    response_prefix: str | None = None,
    guidance_scale: float | None = None,
    negative_prefix: str | None = None,
) -> torch.Tensor:
    """(N,) bool: whether the policy's greedy response to each problem is correct.

    Each option left None is what the policy's export records: ``response_prefix``, text placed before every
    response (a return-conditioned policy's good token; its ``suppress_tokens`` are never generated);
    ``guidance_scale`` (1: none); ``negative_prefix``, the guidance's negative prompt after the question (the
    recorded one, or the recorded response prefix when ``response_prefix`` is that negative: a
    return-conditioned policy asked for its bad return is guided away from its good one)."""
    spec = PolicySpec(name_or_path=policy)
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, tokenizer)
    recorded_conditioning = Conditioning.load(spec.resolved(), model)
    recorded_prefix, recorded = recorded_conditioning.response_prefix, recorded_conditioning.guidance
    if response_prefix is None:
        response_prefix = recorded_prefix
    if negative_prefix is None and recorded is not None:
        swapped = response_prefix == recorded.negative_prefix
        negative_prefix = recorded_prefix if swapped else recorded.negative_prefix
    if guidance_scale is None:
        guidance_scale = recorded.scale if recorded is not None else 1.0
    if guidance_scale != 1 and negative_prefix is None:
        raise SystemExit(f"{policy} records no guidance: give its negative prompt (--candidate-negative-prefix)")
    guidance = Guidance(negative_prefix, guidance_scale) if guidance_scale != 1 else None
    config = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, batch_size=512)
    with eval_mode(model):
        batch = sample(
            model,
            tokenizer,
            [task.prompt(p, tokenizer) for p in problems],
            config,
            [row_seed(p.id) for p in problems],
            eos_token_ids=eos_token_ids(model, tokenizer),
            conditioning=Conditioning(response_prefix, recorded_conditioning.suppressed_token_ids, guidance),
            stop_strings=task.stop_strings,
            progress=True,
            description=policy,
        )
    return torch.tensor([p.is_correct(t) for p, t in zip(problems, batch.texts, strict=True)])


def run_settings(path: str) -> tuple[Task, dict[str, int | None]]:
    """The task a lit-reason config names (``data.task``; the built-in task where it names none) and the settings
    of its evaluations that it sets: ``validation`` and ``test`` (its question counts; None: all), and
    ``max_new_tokens``."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"--config {path}: {error}") from error
    data = config.get("data") or {}
    evaluation = ((config.get("model") or {}).get("init_args") or {}).get("evaluation") or {}
    # A question count set to null is the whole split, as the data module reads it.
    settings = {split: data[f"{split}_questions"] for split in ("validation", "test") if f"{split}_questions" in data}
    if evaluation.get("max_new_tokens") is not None:
        settings["max_new_tokens"] = evaluation["max_new_tokens"]
    if data.get("task") is None:
        return Arithmetic(), settings
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--task", type=Task)
    try:
        return parser.instantiate_classes(parser.parse_object({"task": data["task"]})).task, settings
    except (ArgumentError, OSError, TypeError, ValueError) as error:  # a class or its file: the option named
        raise SystemExit(f"--config {path}: data.task: {error}") from error


def compare_predictions(baseline_path: str, candidate_path: str) -> None:
    outcomes = paired_outcomes(read_predictions(baseline_path), read_predictions(candidate_path))
    print(f"{len(next(iter(outcomes.values()))[0])} questions in both files")
    for name, (baseline, candidate) in outcomes.items():
        mean, low, high = paired_interval(baseline.float(), candidate.float())
        print(
            f"{name}: baseline {baseline.mean():.4f}  candidate {candidate.mean():.4f}  "
            f"difference {mean:+.4f}, paired 95% interval [{low:+.4f}, {high:+.4f}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--baseline", help="policy directory (or preset) to compare against")
    parser.add_argument("--candidate", help="policy directory to compare")
    parser.add_argument("--baseline-predictions", help="a predictions .jsonl of an evaluation (instead of --baseline)")
    parser.add_argument("--candidate-predictions", help="a predictions .jsonl to compare with it")
    parser.add_argument(
        "--config",
        help="a lit-reason config (a run's config.yaml): its task, question counts and max_new_tokens "
        "(default: the built-in task)",
    )
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument(
        "--questions",
        type=int,
        default=None,
        help="the first N questions of the split (default: the config's, or 1000)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="(default: the config's evaluation's, or 80)")
    parser.add_argument(
        "--candidate-prefix",
        default=None,
        help="response prefix for the candidate (default: the one its export records in lit_reason.json, e.g. an "
        "RCRL policy's [GOOD]; pass [BAD] to condition on the bad return)",
    )
    parser.add_argument(
        "--candidate-guidance-scale",
        type=float,
        default=None,
        help="guidance scale for the candidate (default: what its export records; 1 turns guidance off)",
    )
    parser.add_argument(
        "--candidate-negative-prefix",
        default=None,
        help="the candidate's guidance negative prompt after the question (default: what its export records)",
    )
    args = parser.parse_args()
    if args.baseline_predictions or args.candidate_predictions:
        if not (args.baseline_predictions and args.candidate_predictions):
            parser.error("give both --baseline-predictions and --candidate-predictions")
        compare_predictions(args.baseline_predictions, args.candidate_predictions)
        return
    if not (args.baseline and args.candidate):
        parser.error("give --baseline and --candidate policies, or two prediction files")

    task, settings = run_settings(args.config) if args.config else (Arithmetic(), {})
    questions = args.questions if args.questions is not None else settings.get(args.split, 1000)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else settings.get("max_new_tokens", 80)
    problems = task.problems(args.split)[:questions]
    baseline = greedy_correct(args.baseline, problems, task, max_new_tokens)
    candidate = greedy_correct(
        args.candidate,
        problems,
        task,
        max_new_tokens,
        args.candidate_prefix,
        args.candidate_guidance_scale,
        args.candidate_negative_prefix,
    )
    mean, low, high = paired_interval(baseline.float(), candidate.float())
    print(
        f"{len(problems)} {args.split} questions of {type(task).__name__}"
        + (f" ({args.config})" if args.config else "")
    )
    print(f"maj@1 baseline {baseline.float().mean():.4f}  candidate {candidate.float().mean():.4f}")
    print(f"difference {mean:+.4f}, paired 95% interval [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main()
