"""A study's report: ``<study>/results.md`` with the results table, the differences from the warm start, the
claims' verdicts, the checks that make the comparison fair, and two plots (``curves.png``: maj@1 and pass@K
against training samples drawn; ``sft.png``: the warm start's SFT curve)."""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path

import torch

from lit_reason.evaluation import markdown_table
from lit_reason.study.claims import assess_claims, converged_warm_start
from lit_reason.study.results import RunResult, StudyResults


def write_report(results: StudyResults, command: list[str] | None = None) -> Path:
    """Write ``results.md`` and its plots into the study's directory; returns the report's path."""
    directory = results.study.directory
    directory.mkdir(parents=True, exist_ok=True)
    plot_curves(results, directory / "curves.png")
    plot_sft(results, directory / "sft.png")
    command = command or ["lit-reason", "study", "--config", str(results.study.source)]
    sections = [
        f"# Study `{results.study.name}`",
        f"Made by `{shlex.join(command)}` on {machine()}; seeds {list(results.study.seeds)}. Every row starts "
        f"from the same warm start and is evaluated on the same {_question_count(results)} validation questions "
        f"with the same sampling noise (the checks below say whether each was): greedy maj@1, and "
        f"maj@{results.k} / rerank@{results.k} / pass@{results.k} from {results.k} samples.",
        "## Results",
        "Means over seeds of each run's last evaluation, with their 95% t-interval when there are several seeds. "
        "Minutes marked * are those of the last attempt of a run resumed after an interruption.",
        results_table(results),
        "## Against the warm start",
        "Each run minus the warm start, per question (means over seeds), with the paired 95% interval: with one "
        "seed, Newcombe's score interval for 0/1 outcomes and the paired bootstrap over questions for pass@1, a "
        "fraction of samples; with several, a t-interval over the seeds' spread and the questions' (widened to "
        "hold Newcombe's on the seed pairs' mean table for 0/1 outcomes).",
        differences_table(results),
        "## The paper's claims",
        claims_scope(results),
        "\n".join(f"- **{v.claim}**: {v.verdict.upper()}. {v.evidence}." for v in assess_claims(results)),
        "## Checks",
        "\n".join(f"- {line}" for line in checks(results)),
        "## Plots",
        "![maj@1 and pass@K against training samples drawn](curves.png)\n\n![the warm start's SFT curve](sft.png)",
    ]
    path = directory / "results.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.machine()} with {_cpu_count()} CPU cores{gpu}, torch {torch.__version__}"


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _question_count(results: StudyResults) -> int:
    return len(results.baseline.outcomes().get("maj@1", {}))


def _cell(summary: tuple[float, float, float] | None) -> str:
    if summary is None:
        return "-"
    mean, low, high = summary
    return f"{mean:.3f}" if low == high else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _minutes(run: RunResult) -> str:
    if not run.finished:
        return "unfinished"
    times = [t for t in run.wall_seconds.values() if t is not None]
    mark = "*" if run.resumed else ""  # the last attempt's time only
    return f"{sum(times) / len(times) / 60:.1f}{mark}" if times else "unknown (launched)"


def results_table(results: StudyResults) -> str:
    metrics = results.metric_names()
    header = ["run", "algorithm", "reward", *metrics, "samples drawn", "seeds", "minutes per seed"]
    rows = [["warm_start", "SFT (the warm start)", "-", *(_cell(results.baseline.summary(m)) for m in metrics)]]
    rows[0] += ["-", "1", _minutes(results.warm_start)]
    for run in results.runs.values():
        samples = [run.samples_drawn(s) for s in run.seeds]
        drawn = f"{sum(samples) / len(samples):,.0f}" if samples else "-"
        rows.append(
            [run.name, run.spec.algorithm, run.spec.reward, *(_cell(run.summary(m)) for m in metrics)]
            + [drawn, str(len(run.seeds)), _minutes(run)]
        )
    return markdown_table(header, rows)


def differences_table(results: StudyResults) -> str:
    metrics = results.metric_names()
    rows = []
    for run in results.runs.values():
        differences = [results.difference(run.name, m) if run.seeds else None for m in metrics]
        rows.append([run.name, *(str(d) if d is not None else "-" for d in differences)])
    return markdown_table(["run", *(f"Δ {m}" for m in metrics)], rows)


def claims_scope(results: StudyResults) -> str:
    """What the claims' intervals hold: the spread between training seeds only where a run has several."""
    evaluated = [run for run in results.runs.values() if run.seeds]
    one_seed = [run.name for run in evaluated if len(run.seeds) == 1]
    if not evaluated:
        return "No run has finished yet."
    if not one_seed:
        return "The intervals hold the spread between each run's training seeds and between questions."
    runs = "Every run" if len(one_seed) == len(evaluated) else f"These runs: {', '.join(one_seed)}"
    return (
        f"{runs} finished with one seed, so an interval holds no spread between its training runs: a verdict "
        "that reads them is about these runs, not yet about their algorithms, and another seed can change it. "
        "More finished seeds per run test the algorithms."
    )


def _final_evaluations_check(results: StudyResults) -> str | None:
    """Whether each run's last evaluation is at the step its training ended (None where no fit recorded it)."""
    ended = [(run, seed) for run in results.runs.values() for seed in run.seeds if seed in run.training_end]
    unknown = [f"{run.name} seed {s}" for run in results.runs.values() for s in run.seeds if s not in run.training_end]
    elsewhere = [
        f"{run.name} seed {seed} (evaluated at step {run.final(seed).step}, trained to {run.training_end[seed]})"
        for run, seed in ended
        if run.final(seed).step != run.training_end[seed]
    ]
    if not ended:
        return None
    if not elsewhere:
        unverified = f" (not recorded, so not checked, for: {', '.join(unknown)})" if unknown else ""
        return f"Final evaluations are of the trained policies: each at the step its training ended{unverified}"
    return (
        f"Final evaluation NOT at the end of training in: {', '.join(elsewhere)}: the table reports another policy "
        "than the trained one (make check_val_every_n_epoch divide max_epochs)"
    )


def checks(results: StudyResults) -> list[str]:
    """What makes the comparison fair, measured: the same evaluation everywhere, of each run's trained policy, a
    converged warm start, equal sample budgets, seeds that change the runs."""
    lines = []
    reference = results.baseline.evaluation_settings.get(results.study.shared_seed)
    differing = sorted(
        {run.name for run in results.runs.values() for s in run.seeds if run.evaluation_settings.get(s) != reference}
    )
    if reference is not None:
        lines.append(
            "Evaluation identical for every run (sampling settings, task, validation questions)"
            if not differing
            else f"Evaluation DIFFERS from the warm start's in: {', '.join(differing)}"
        )
    final_evaluations = _final_evaluations_check(results)
    if final_evaluations:
        lines.append(final_evaluations)
    convergence, margin = converged_warm_start(results), results.study.equivalence_margin
    if convergence is not None:
        gain, outcome = convergence
        state = {"supported": "converged", "refuted": "NOT converged", "inconclusive": "convergence UNDECIDED"}
        lines.append(
            f"Warm start {state[outcome]}: more SFT changes maj@1 by {gain} (converged: the interval at most "
            f"+{margin}; not converged: the interval above 0)"
        )
    selection = _warm_start_selection(results)
    if selection:
        lines.append(selection)
    rl_runs = [run for run in results.runs.values() if run.spec.family == "rl"]
    budgets = [run.samples_drawn(seed) for run in rl_runs for seed in run.seeds]
    if budgets:
        low, high = min(budgets), max(budgets)
        state = "equal" if high <= 1.05 * low else "UNEQUAL"
        lines.append(f"Sample budgets {state}: the RL runs drew {low:,} to {high:,} training samples")
    for run in results.runs.values():
        if len(run.seeds) > 1:
            finals = {tuple(sorted(run.final(s).metrics.items())) for s in run.seeds}
            differ = "differ" if len(finals) == len(run.seeds) else "DO NOT differ"
            lines.append(f"{run.name}: its {len(run.seeds)} seeds' final evaluations {differ}")
    unfinished = [f"{r.name} seed {s}" for r in results.runs.values() for s in r.evaluations if s not in r.finished]
    if unfinished:
        lines.append(
            "Unfinished (left out of the tables, claims and plots until they finish): " + ", ".join(unfinished)
        )
    return lines


def _warm_start_selection(results: StudyResults) -> str | None:
    """Where the warm start's export is its best evaluation by maj@1 rather than its last: chosen on these same
    questions, which favours it against the runs, each compared at its last evaluation."""
    evaluations = [e for e in results.warm_start.evaluations.get(results.study.shared_seed, []) if "maj@1" in e.metrics]
    exported = results.baseline.final(results.study.shared_seed).metrics.get("maj@1")
    if not evaluations or exported is None:
        return None
    best, last = max(evaluations, key=lambda e: e.metrics["maj@1"]), evaluations[-1]
    # The baseline is evaluated in a process of its own: it matches the epoch it exports, within rounding.
    if best is last or abs(exported - best.metrics["maj@1"]) >= abs(exported - last.metrics["maj@1"]):
        return None
    return (
        f"Warm start SELECTED on these questions: its export (maj@1 {exported:.3f}) is its best of {len(evaluations)} "
        f"evaluations ({best.step} steps), its last ({last.step} steps) scored {last.metrics['maj@1']:.3f}; every "
        "run is compared at its last evaluation, so the differences from the warm start lean against the runs"
    )


def plot_curves(results: StudyResults, path: Path) -> None:
    """maj@1 and pass@K against training samples drawn, one line per RL run (means over seeds), all starting
    at the warm start's evaluation."""
    plt = _pyplot()
    metrics = ["maj@1", f"pass@{results.k}"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    start = results.baseline.final(results.study.shared_seed).metrics
    for axis, metric in zip(axes[0], metrics, strict=True):
        for run in results.runs.values():
            evaluations = [e for s in run.seeds for e in run.evaluations[s]]
            if run.spec.family != "rl" or not run.seeds or any(metric not in e.metrics for e in evaluations):
                continue  # an RL run evaluated with another K has no pass@K of the study's K
            rounds = min(len(run.evaluations[s]) for s in run.seeds)
            xs = [0.0] + [_seed_mean(run, i, lambda e: e.samples_drawn) for i in range(rounds)]
            ys = [start[metric]] + [_seed_mean(run, i, lambda e, m=metric: e.metrics[m]) for i in range(rounds)]
            axis.plot(xs, ys, marker="o", label=run.name)
        axis.set_xlabel("training samples drawn")
        axis.set_ylabel(f"validation {metric}")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(f"study {results.study.name}: from the warm start")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sft(results: StudyResults, path: Path) -> None:
    """The warm start's validation maj@1 and pass@K at each of its validations, against its optimizer steps
    (the paper: more SFT trades pass@K for maj@1)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    evaluations = results.warm_start.evaluations.get(results.study.shared_seed, [])
    for metric in ["maj@1", f"pass@{results.k}"]:
        points = [(e.step, e.metrics[metric]) for e in evaluations if e.metrics.get(metric) is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=metric)
    axis.set_xlabel("SFT optimizer steps")
    axis.set_ylabel("validation accuracy")
    axis.set_title("the warm start's SFT")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _seed_mean(run: RunResult, index: int, value) -> float:
    return sum(value(run.evaluations[s][index]) for s in run.seeds) / len(run.seeds)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    return plt
