"""The evaluation every algorithm shares, and what it leaves beside a run.

For every validation / test question: one greedy response (maj@1) and K sampled ones under the shared
``evaluation`` sampling settings (maj@K, pass@K, pass@1, distinct correct solutions, and rerank@K where a
reward model scores them), so numbers mean the same whichever algorithm produced the policy. Each question
also leaves a record (its responses and their grades): TensorBoard text samples and length histograms, and
per-question predictions (``<log_dir>/predictions/<stage>-step<N>.jsonl``) that two runs can be paired on.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_reason.distributed import gather_objects, rank_and_world_size
from lit_reason.files import jsonl_records, write_text_atomically
from lit_reason.metrics import DistinctCorrect, MajorityAtK, PassAtK, RerankAtK
from lit_reason.rewards import grade
from lit_reason.run_logs import RunLog, run_directory, run_log
from lit_reason.sampling import SampleBatch
from lit_reason.tasks import Problem
from lit_reason.tasks.answers import normalize_text_answer, operation_signature

# What a prediction file keeps of each question's record (answers: parsed, null where a text states none;
# scores: the reward model's, null without one; outcomes: the question's value of each metric, what paired
# comparisons of two evaluations resample).
PREDICTION_FIELDS = (
    "id", "question", "greedy", "greedy_answer", "greedy_correct", "samples", "sample_answers", "samples_correct",
    "sample_scores", "outcomes",
)  # fmt: skip


@dataclass
class GradedQuestions:
    """One evaluation batch of Q questions with K samples each, graded (on the metrics' device).

    Attributes:
        question_ids: (Q,) long.
        correct: (Q, K) bool. Whether each sample's final answer is right.
        answered: (Q, K) bool. Whether each sample states an answer at all.
        scores: (Q, K) float. The reward model's score of each sample, or None without one.
    """

    question_ids: torch.Tensor
    correct: torch.Tensor
    answered: torch.Tensor
    scores: torch.Tensor | None


class Evaluator(torch.nn.Module):
    """The shared evaluation metrics and the per-question records of one evaluation pass.

    Args:
        num_samples: K of maj@K, pass@K and rerank@K.
        rerank: also compute rerank@K (needs reward-model scores).
    """

    def __init__(self, num_samples: int, rerank: bool) -> None:
        super().__init__()
        k = self.num_samples = num_samples
        # maj@1 is the greedy answer's; at K = 1 the one sample's majority is pass@1, not a second maj@1.
        of_k = {f"maj@{k}": MajorityAtK(k=k), f"pass@{k}": PassAtK(k=k)} if k > 1 else {}
        self.metrics = torch.nn.ModuleDict(
            {"maj@1": MajorityAtK(k=1), **of_k, "pass@1": PassAtK(k=1), f"distinct_correct@{k}": DistinctCorrect(k=k)}
        )
        if rerank:
            self.metrics[f"rerank@{k}"] = RerankAtK(k=k)
        self.records: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def start_batch(self) -> None:
        """Call before a batch's responses are generated: the pass's clock starts at its first batch."""
        if not self.records:
            self._started = time.perf_counter()

    def seconds_since_start(self) -> float:
        """Seconds since this evaluation pass's first batch started (``start_batch``)."""
        return time.perf_counter() - self._started

    def update(
        self, problems: list[Problem], greedy: SampleBatch, sampled: SampleBatch, scores: torch.Tensor | None
    ) -> GradedQuestions:
        """Grade one greedy and K sampled responses per problem (``scores``: (Q * K,) reward-model scores of
        the sampled ones, or None), update the metrics and keep the questions' records."""
        k, device = self.num_samples, self.metrics["maj@1"].device
        ids = torch.tensor([p.id for p in problems], device=device)
        greedy_stated = [[p.stated_answer(text)] for p, text in zip(problems, greedy.texts, strict=True)]
        stated = [
            [p.stated_answer(text) for text in sampled.texts[i * k : (i + 1) * k]] for i, p in enumerate(problems)
        ]
        greedy_correct = grade(problems, greedy)
        greedy_answers, targets = answer_values(problems, greedy_stated, 1)
        answers, _ = answer_values(problems, stated, k)
        graded = GradedQuestions(
            question_ids=ids,
            correct=grade(problems, sampled).view(-1, k).to(device),
            answered=torch.isfinite(answers).to(device),
            scores=scores.view(-1, k).to(device) if scores is not None else None,
        )
        signatures = torch.tensor([operation_signature(t) for t in sampled.texts], device=device).view(-1, k)
        self.metrics["maj@1"].update(greedy_answers.to(device), targets.to(device), ids)
        if k > 1:
            self.metrics[f"maj@{k}"].update(answers.to(device), targets.to(device), ids)
            self.metrics[f"pass@{k}"].update(graded.correct, ids)
        self.metrics["pass@1"].update(graded.correct, ids)
        self.metrics[f"distinct_correct@{k}"].update(graded.correct, signatures, ids)
        if graded.scores is not None:
            self.metrics[f"rerank@{k}"].update(graded.correct, graded.scores, ids)
        outcomes = {name: metric.last_update().tolist() for name, metric in self.metrics.items()}
        self.records.extend(
            {
                "id": problem.id,
                "question": problem.question,
                "greedy": greedy.texts[i],
                "greedy_answer": greedy_stated[i][0],
                "greedy_correct": bool(greedy_correct[i]),
                "answered": float(graded.answered[i].float().mean()),
                "truncated": float(sampled.truncated[i * k : (i + 1) * k].float().mean()),
                "lengths": sampled.response_lengths[i * k : (i + 1) * k].tolist(),
                "samples": sampled.texts[i * k : (i + 1) * k],
                "sample_answers": stated[i],
                "samples_correct": graded.correct[i].tolist(),
                "sample_scores": graded.scores[i].tolist() if graded.scores is not None else None,
                "outcomes": {name: values[i] for name, values in outcomes.items()},
            }
            for i, problem in enumerate(problems)
        )
        return graded

    def compute(self) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, Any]]]:
        """Every metric (by name), the shares of samples answered and truncated, and all ranks' records by
        question id (a question padded onto two ranks counts once); then starts afresh (a collective)."""
        values = {name: metric.compute() for name, metric in self.metrics.items()}
        records: dict[int, dict[str, Any]] = {}
        for record in gather_objects(self.records):  # the first of a padded question, as the metrics keep
            records.setdefault(record["id"], record)
        self.reset()
        if records:
            values["answered"] = torch.tensor(sum(r["answered"] for r in records.values()) / len(records))
            values["truncated"] = torch.tensor(sum(r["truncated"] for r in records.values()) / len(records))
        return values, records

    def reset(self) -> None:
        """Forget this pass's metric states and records (on this rank alone)."""
        for metric in self.metrics.values():
            metric.reset()
        self.records.clear()


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def answer_values(problems: Sequence[Problem], stated: Sequence[Sequence[float | str | None]], samples: int):
    """Answers as numbers the majority-vote metrics compare (strings never cross ranks): ((Q, samples) float64 with
    NaN where a response states no answer, (Q,) float64 targets). A numeric problem's answers are themselves;
    a text problem's are codes of its normalized answers: 0 for the target's, 1, 2, ... for the others in order
    of appearance (so answers that normalize alike vote together; one that normalizes to nothing is none), and
    its target is 0."""
    values, targets = [], []
    for problem, answers in zip(problems, stated, strict=True):
        if not isinstance(problem.answer, str):
            values.append([float("nan") if answer is None else answer for answer in answers])
            targets.append(problem.answer)
            continue
        codes = {normalize_text_answer(problem.answer, problem.normalization): 0}
        normalized = [None if a is None else normalize_text_answer(a, problem.normalization) for a in answers]
        values.append([codes.setdefault(a, len(codes)) if a else float("nan") for a in normalized])
        targets.append(0.0)
    return (
        torch.tensor(values, dtype=torch.float64).reshape(len(problems), samples),
        torch.tensor(targets, dtype=torch.float64),
    )


def write_outputs(
    trainer,
    stage: str,
    values: dict[str, torch.Tensor],
    records: dict[int, dict[str, Any]],
    *,
    seconds: float | None = None,
    text_samples: int,
) -> None:
    """What an evaluation leaves beside a run with a logger (call on every rank; rank 0 writes): its metrics
    (and the ``seconds`` it took: what a study takes off a run's wall time to compare training times) appended
    to ``<log_dir>/metrics.json``, the per-question predictions ``<log_dir>/predictions/<stage>-step<N>.jsonl``
    and text samples, a histogram and curves against the samples drawn (``run_logs``)."""
    if not trainer.loggers or not records:
        return
    log_dir = run_directory(trainer)  # a broadcast from rank 0: every rank asks
    if rank_and_world_size()[0] != 0:
        return
    (epoch, step), samples_drawn = trained_to(trainer), int(getattr(trainer.datamodule, "samples_drawn", 0))
    write_predictions(log_dir / "predictions" / f"{stage}-step{step}.jsonl", records)
    metrics = {name.split("/", 1)[-1]: _finite_or_none(float(value)) for name, value in values.items()}
    entry = {"stage": stage, "step": step, "epoch": epoch, "samples_drawn": samples_drawn}
    entry |= {"seconds": round(seconds, 1)} if seconds is not None else {}
    entry["metrics"] = metrics
    append_json(log_dir / "metrics.json", entry)
    log = run_log(trainer)
    if log is not None:
        log_samples_and_curves(
            log, stage, values, records, step=step, samples_drawn=samples_drawn, text_samples=text_samples
        )


def record_training_end(trainer) -> None:
    """Append where a fit ended (``{"stage": "fit_end", "step", "epoch", "samples_drawn"}``) to the run's
    ``metrics.json`` (call on every rank; rank 0 writes), and warn when its last validation is of an earlier
    policy: a ``check_val_every_n_epoch`` that does not divide ``max_epochs``, or a ``max_steps`` that ends a
    round before its validation, leaves the final policy unevaluated (a study names such runs)."""
    if not trainer.loggers:
        return
    log_dir = run_directory(trainer)  # a broadcast from rank 0: every rank asks
    if rank_and_world_size()[0] != 0:
        return
    path, step = log_dir / "metrics.json", trainer.global_step
    validated = [e["step"] for e in json.loads(path.read_text()) if e["stage"] == "val"] if path.is_file() else []
    if validated and validated[-1] != step:
        warnings.warn(
            f"training ended at step {step}, its last validation was at step {validated[-1]}: the final policy "
            "is not evaluated (the export and a study's tables are of an earlier one). Validation follows every "
            "check_val_every_n_epoch-th round: pick one that divides max_epochs, and a max_steps that ends a "
            "round; `lit-reason validate --ckpt_path` of the last checkpoint, logged elsewhere, evaluates it",
            stacklevel=2,
        )
    samples_drawn = int(getattr(trainer.datamodule, "samples_drawn", 0))
    entry = {"stage": "fit_end", "step": step, "epoch": trainer.current_epoch, "samples_drawn": samples_drawn}
    append_json(path, entry)


def trained_to(trainer) -> tuple[int, int]:
    """(round, optimizer step) of the policy a ``trainer`` evaluates: the trainer's own while it fits; for a
    validate or test of a checkpoint, the checkpoint's (its ``RolloutDataModule`` restores them; Lightning restores
    no loop state there, so the trainer's counters read 0)."""
    restored = getattr(trainer.datamodule, "restored_progress", None)
    if trainer.state.fn == "fit" or restored is None:
        return trainer.current_epoch, trainer.global_step
    return restored


def drop_outputs_after(trainer, epoch: int, step: int) -> None:
    """Forget what evaluations wrote beside the run after ``epoch`` (at optimizer step ``step``; call on every
    rank; rank 0 writes): a fit resumed from a checkpoint of that epoch evaluates the later ones again, and each
    must be recorded once. Drops later entries of ``metrics.json`` (by epoch, then step: a round with nothing to
    train on validates at the step of the one before, and a checkpoint taken mid-round comes before the round's
    later validations) and prediction files of later steps. TensorBoard keeps the
    interrupted attempt's later points: its restart marker (``purge_step``) hides every point past a step,
    which would also hide the curves whose x-axis is the samples drawn."""
    if not trainer.loggers:
        return
    log_dir = run_directory(trainer)  # a broadcast from rank 0: every rank asks
    if rank_and_world_size()[0] != 0:
        return
    metrics = log_dir / "metrics.json"
    if metrics.is_file():
        entries = json.loads(metrics.read_text())
        kept = [e for e in entries if ((e["epoch"], e["step"]) <= (epoch, step) if "epoch" in e else e["step"] <= step)]
        write_json(metrics, kept)
    for predictions in (log_dir / "predictions").glob("*-step*.jsonl"):
        written_at = re.fullmatch(r".*-step(\d+)\.jsonl", predictions.name)
        if written_at and int(written_at[1]) > step:
            predictions.unlink()


def append_json(path: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the JSON list in ``path`` (created if missing)."""
    write_json(path, [*(json.loads(path.read_text()) if path.is_file() else []), entry])


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` as JSON, replacing the file atomically (``write_text_atomically``)."""
    write_text_atomically(path, json.dumps(value, indent=1, allow_nan=False))


def write_predictions(path: Path, records: dict[int, dict[str, Any]]) -> None:
    """One JSON line per question, in id order: its id, question, greedy response and whether it is correct,
    the K samples and theirs (what ``tools/compare_policies.py --baseline-predictions`` pairs); written
    atomically (a crash mid-write leaves no half file for a study to pair on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {field: record[field] for field in PREDICTION_FIELDS}
        for record in sorted(records.values(), key=lambda r: r["id"])
    ]
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_predictions(path: str | Path) -> dict[int, dict[str, Any]]:
    """Question id -> record of a predictions file; a malformed line is an error naming the file and line."""
    records = {}
    for where, record in jsonl_records(path):
        try:
            records[int(record["id"])] = record
            _check_outcome_fields(record)
        except (ValueError, KeyError, TypeError, OverflowError) as error:
            raise ValueError(f"{where}: not a lit-reason prediction record ({error})") from None
    return records


def _check_outcome_fields(record: dict[str, Any]) -> None:
    """A ``TypeError`` naming the field of a prediction record that ``question_outcomes`` could not read."""
    if not isinstance(record["greedy_correct"], bool):
        raise TypeError(f"greedy_correct must be true or false, not {record['greedy_correct']!r:.40}")
    samples = record["samples_correct"]
    if not isinstance(samples, list) or not all(isinstance(flag, bool) for flag in samples):
        raise TypeError(f"samples_correct must be a list of true / false, not {samples!r:.40}")
    outcomes = record.get("outcomes") or {}
    if not isinstance(outcomes, dict) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in outcomes.values()
    ):
        raise TypeError(f"outcomes must map each metric to a number, not {outcomes!r:.40}")


def question_outcomes(record: dict[str, Any]) -> dict[str, float]:
    """A prediction record's value of each metric: what its evaluation recorded (``outcomes``), or for files
    written before lit-reason recorded them, maj@1, pass@1 and pass@K worked out from the correctness flags."""
    if record.get("outcomes"):
        return {name: float(value) for name, value in record["outcomes"].items()}
    correct = record["samples_correct"]
    k = len(correct)
    return {
        "maj@1": float(record["greedy_correct"]),
        "pass@1": sum(correct) / max(1, k),
        f"pass@{k}": float(any(correct)),
    }


def paired_outcomes(
    baseline: dict[int, dict[str, Any]], candidate: dict[int, dict[str, Any]]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-question outcomes of two evaluations on the questions both answered: metric -> (baseline,
    candidate), each (Q,) float, for every metric both recorded. Ids are positions in a task's split, so a
    shared id must hold the same question in both: files of two tasks (or task settings) are refused."""
    shared = sorted(baseline.keys() & candidate.keys())
    if not shared:
        raise ValueError("the two prediction files share no question id: were they made on the same task?")
    different = [i for i in shared if baseline[i].get("question") != candidate[i].get("question")]
    if different:
        raise ValueError(
            f"{len(different)} of the {len(shared)} question ids the two prediction files share hold different "
            f"questions (id {different[0]}: {baseline[different[0]].get('question')!r} against "
            f"{candidate[different[0]].get('question')!r}): they were made on different tasks or task settings"
        )
    first = [question_outcomes(baseline[i]) for i in shared]
    second = [question_outcomes(candidate[i]) for i in shared]
    names = [name for name in first[0] if name in second[0]]
    return {name: (torch.tensor([o[name] for o in first]), torch.tensor([o[name] for o in second])) for name in names}


def log_samples_and_curves(
    log: RunLog,
    stage: str,
    values: dict[str, torch.Tensor],
    records: dict[int, dict[str, Any]],
    *,
    step: int,
    samples_drawn: int,
    text_samples: int,
) -> None:
    """Accuracy metrics against training samples drawn, the response-length histogram and a table of the
    first ``text_samples`` questions' greedy responses."""
    for name, value in values.items():
        if "maj@" in name or "pass@" in name:
            log.curve_point(f"by_samples_drawn/{name}", value.item(), samples_drawn)
    lengths = torch.tensor([n for r in records.values() for n in r["lengths"]], dtype=torch.float32)
    log.histogram(f"{stage}/response_length", lengths, step)
    shown = list(records.values())[:text_samples]
    table = markdown_table(
        ["id", "question", "greedy response", "correct"],
        [[r["id"], r["question"], r["greedy"], r["greedy_correct"]] for r in shown],
    )
    log.text(f"{stage}/greedy_samples", table, step)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (TensorBoard's text tab renders it); cells may hold any text."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_markdown_cell(str(cell)) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
