"""A study's results read back from its runs' ``metrics.json`` and prediction files.

Every run (and the warm start) is evaluated on the same validation questions with the same sampling noise, so
any two are compared question by question: a difference between two runs is the mean over questions of their
per-question outcomes (each a mean over the run's seeds), with the paired interval of ``paired_interval``.
Only finished runs (those the runner marked so) count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_reason.evaluation import question_outcomes as record_outcomes
from lit_reason.evaluation import read_predictions
from lit_reason.statistics import paired_interval, seed_interval
from lit_reason.study.runner import DONE_FILE, read_training_end, run_dir
from lit_reason.study.spec import RunSpec, StudySpec


@dataclass(frozen=True)
class Evaluation:
    """One validation of one run with one seed.

    Attributes:
        step: optimizer steps taken before it.
        samples_drawn: training samples drawn before it (all ranks).
        metrics: metric name (``maj@1``, ``pass@8``, ...) -> value.
        predictions: its per-question prediction file.
        seconds: how long it took (None where its run did not record it: runs of an earlier lit-reason).
    """

    step: int
    samples_drawn: int
    metrics: dict[str, float]
    predictions: Path
    seconds: float | None = None


@dataclass
class RunResult:
    """A run's evaluations with each seed, each finished seed's wall time (None where unknown: run by a
    launcher; unfinished seeds have none), the settings its evaluations used (None where no run recorded
    them) and the optimizer step each seed's training ended at and the samples it had drawn (where its fit
    recorded them; earlier versions did not)."""

    name: str
    spec: RunSpec | None
    evaluations: dict[int, list[Evaluation]] = field(default_factory=dict)
    wall_seconds: dict[int, float | None] = field(default_factory=dict)
    resumed: set[int] = field(default_factory=set)
    evaluation_settings: dict[int, str | None] = field(default_factory=dict)
    training_end: dict[int, int] = field(default_factory=dict)
    samples_at_end: dict[int, int] = field(default_factory=dict)

    @property
    def finished(self) -> set[int]:
        """The seeds whose run finished (marked so by the study or ``--record``)."""
        return set(self.wall_seconds)

    @property
    def seeds(self) -> list[int]:
        """The seeds whose run finished and evaluated (an interrupted one's last evaluation is not its final)."""
        return sorted(
            seed for seed, evaluations in self.evaluations.items() if evaluations and seed in self.wall_seconds
        )

    def final(self, seed: int) -> Evaluation:
        return self.evaluations[seed][-1]

    def samples_drawn(self, seed: int) -> int:
        """The training samples a seed's run drew: by the end of its training where recorded, else by its last
        evaluation."""
        return self.samples_at_end.get(seed, self.final(seed).samples_drawn)

    def final_values(self, metric: str) -> list[float]:
        """The last evaluation's value of ``metric`` with every seed that has one."""
        return [self.final(s).metrics[metric] for s in self.seeds if self.final(s).metrics.get(metric) is not None]

    def summary(self, metric: str) -> tuple[float, float, float] | None:
        """Mean over seeds of the final ``metric`` and its 95% t-interval, or None without a value."""
        values = self.final_values(metric)
        return seed_interval(values) if values else None

    def outcomes(self) -> dict[str, dict[int, list[float]]]:
        """metric -> question id -> the final evaluation's outcome with each seed, in ``seeds`` order. Every
        seed must have answered the same questions."""
        outcomes: dict[str, dict[int, list[float]]] = {}
        questions = None
        for seed in self.seeds:
            predictions = read_predictions(self.final(seed).predictions)
            if questions is not None and predictions.keys() != questions:
                raise ValueError(
                    f"{self.name}: seed {seed}'s final evaluation answered other questions than seed {self.seeds[0]}'s "
                    f"({self.final(seed).predictions}): its seeds cannot be averaged question by question"
                )
            questions = predictions.keys()
            for question, record in predictions.items():
                for metric, value in record_outcomes(record).items():
                    outcomes.setdefault(metric, {}).setdefault(question, []).append(value)
        return outcomes


@dataclass(frozen=True)
class Difference:
    """``candidate - baseline`` of a metric over the questions both answered, with its paired interval
    (``paired_interval``) of ``confidence``."""

    mean: float
    low: float
    high: float
    confidence: float = 0.95

    def __str__(self) -> str:
        interval = f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"
        return interval if self.confidence == 0.95 else f"{interval} ({self.confidence:.1%})"


@dataclass
class StudyResults:
    """Everything the report and the claims read.

    Attributes:
        study: the declaration.
        baseline: the warm start's evaluation (the shared starting point).
        warm_start: the warm start's training run (its evaluation after every epoch).
        runs: the grid's runs by name, in declaration order.
        k: K of maj@K / pass@K / rerank@K.
    """

    study: StudySpec
    baseline: RunResult
    warm_start: RunResult
    runs: dict[str, RunResult]
    k: int
    _outcomes: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict, repr=False)

    def metric_names(self) -> list[str]:
        """The table's metrics, those the evaluations recorded."""
        names = dict.fromkeys(["maj@1", f"maj@{self.k}", f"rerank@{self.k}", f"pass@{self.k}", "pass@1"])  # K = 1
        recorded = {m for run in [self.baseline, *self.runs.values()] for s in run.seeds for m in run.final(s).metrics}
        return [name for name in names if name in recorded]

    def result(self, name: str) -> RunResult:
        return self.baseline if name == "warm_start" else self.runs[name]

    def difference(
        self, candidate: str, metric: str, baseline: str = "warm_start", comparisons: int = 1
    ) -> Difference | None:
        """Paired difference of two finished runs (``warm_start``: the warm start's evaluation) on ``metric``, with
        its 95% interval, or, as one of ``comparisons`` that hold jointly, its Bonferroni interval (of confidence
        1 - 0.05 / ``comparisons``). None where either lacks the metric or the two were evaluated on other
        questions (the evaluation check names such runs): a difference on the questions they share could disagree
        with the table in sign, and a claim would be decided on it."""
        first, second = self._run_outcomes(baseline).get(metric), self._run_outcomes(candidate).get(metric)
        if not first or not second or first.keys() != second.keys():
            return None
        questions = sorted(first)
        confidence = 1 - 0.05 / comparisons
        mean, low, high = paired_interval(
            torch.tensor([first[q] for q in questions]).T,  # (seeds, questions)
            torch.tensor([second[q] for q in questions]).T,
            confidence=confidence,
        )
        return Difference(mean, low, high, confidence)

    def _run_outcomes(self, name: str) -> dict[str, dict[int, list[float]]]:
        if name not in self._outcomes:
            result = self.result(name)
            self._outcomes[name] = result.outcomes() if result.seeds else {}
        return self._outcomes[name]


def read_evaluations(log_dir: Path) -> list[Evaluation]:
    """A run's validations in order of round and step: one per round's validation, a round that trained nothing
    included (its policy is the last round's, validated again after more samples drawn). A round's validation
    recorded twice, by a run resumed from an earlier checkpoint, counts once: the later one."""
    path = log_dir / "metrics.json"
    if not path.is_file():
        return []
    by_round: dict[tuple[int, int], Evaluation] = {}
    for entry in json.loads(path.read_text()):
        if entry["stage"] != "val":
            continue
        step = int(entry["step"])
        predictions = log_dir / "predictions" / f"val-step{step}.jsonl"
        by_round[int(entry.get("epoch", 0)), step] = Evaluation(  # older runs recorded no epoch: by step alone
            step, int(entry["samples_drawn"]), entry["metrics"], predictions, seconds=entry.get("seconds")
        )
    return [by_round[key] for key in sorted(by_round)]


# The options of a run's saved config that decide what its evaluations measure.
EVALUATION_OPTIONS = (("model", "init_args", "evaluation"), ("data", "task"), ("data", "validation_questions"))


def read_evaluation_settings(log_dir: Path) -> str | None:
    """The sampling settings, task and validation questions of a run's evaluations (as sorted JSON, to compare
    runs by), from the configs its fits saved: ``config.yaml`` and each resumed attempt's
    ``config-resume-<n>.yaml`` (a resume may change them for the rest of the run; one whose settings differ
    makes the run's a list of each). A resume that was refused wrote one too: the check errs toward reporting a
    difference. None without a config."""
    paths = [log_dir / "config.yaml", *sorted(log_dir.glob("config-resume-*.yaml"))]
    found = sorted({_evaluation_options(yaml.safe_load(path.read_text())) for path in paths if path.is_file()})
    if not found:
        return None
    return found[0] if len(found) == 1 else json.dumps(found)


def _evaluation_options(config: dict[str, Any]) -> str:
    settings = {}
    for keys in EVALUATION_OPTIONS:
        node = config
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        settings[".".join(keys)] = node
    return json.dumps(settings, sort_keys=True)


def read_run(study: StudySpec, name: str, spec: RunSpec | None, seeds: tuple[int, ...]) -> RunResult:
    result = RunResult(name, spec)
    for seed in seeds:
        log_dir = run_dir(study, name, seed)
        result.evaluations[seed] = read_evaluations(log_dir)
        result.evaluation_settings[seed] = read_evaluation_settings(log_dir)
        if (end := read_training_end(log_dir)) is not None:
            result.training_end[seed] = end[0]
            if end[1] is not None:
                result.samples_at_end[seed] = end[1]
        done = log_dir / DONE_FILE
        if not done.is_file():
            continue
        record = json.loads(done.read_text())
        result.wall_seconds[seed] = record.get("wall_seconds")
        if record.get("resumed"):
            result.resumed.add(seed)
    return result


def read_results(study: StudySpec) -> StudyResults:
    """The study's results as far as its runs have got (unfinished runs have fewer or no evaluations)."""
    shared = (study.shared_seed,)
    baseline = read_run(study, "warm_start_eval", None, shared)
    if not baseline.seeds:
        raise FileNotFoundError(
            f"study {study.name}: the warm start has not been evaluated yet (no "
            f"{run_dir(study, 'warm_start_eval', study.shared_seed) / 'metrics.json'}); run the study first"
        )
    names = baseline.final(study.shared_seed).metrics
    k = max(int(match.group(1)) for name in names if (match := re.fullmatch(r"maj@(\d+)", name)))
    return StudyResults(
        study=study,
        baseline=baseline,
        warm_start=read_run(study, "warm_start", None, shared),
        runs={run.name: read_run(study, run.name, run, study.seeds) for run in study.runs},
        k=k,
    )
