"""Running a study: the shared warm start, the ORM and the warm start's evaluation, then every run once per seed.

Each step is one ``lit-reason`` command logging to ``<study>/runs/<run>/seed<S>/`` (a TensorBoard run with its
``metrics.json``, predictions, checkpoints and exported policy). A step records its declaration (its command,
each config by its content, the warm start and ORM it starts from by the runs that trained them) in
``study-started.json`` when it starts; one that finished leaves ``study.json`` there (that declaration and its
wall time) and is skipped when the study runs again; one that was interrupted resumes from its
``checkpoints/last.ckpt`` if the study still declares it so (or starts afresh when it never saved one).
``--print-commands`` prints the commands instead, in order, for a cluster launcher: each depends on the warm
start (and ORM) above it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lit_reason.files import RunLock
from lit_reason.study.spec import SHARED_STEPS, StageSpec, StudySpec
from lit_reason.warm_start import single_process_environment

DONE_FILE = "study.json"
STARTED_FILE = "study-started.json"
POLICY_OPTION = "--model.init_args.policy.name_or_path="
ORM_OPTION = "--model.init_args.orm="
LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"


@dataclass(frozen=True)
class Step:
    """One command of a study.

    Attributes:
        run: the run's name (``warm_start``, ``orm``, ``warm_start_eval`` or a row of the grid).
        seed: its ``seed_everything``.
        log_dir: where it logs (``<study>/runs/<run>/seed<seed>``).
        command: the ``lit-reason`` arguments (after the program name).
    """

    run: str
    seed: int
    log_dir: Path
    command: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return (self.log_dir / DONE_FILE).is_file()

    @property
    def checkpoint(self) -> Path:
        return self.log_dir / "checkpoints" / "last.ckpt"


def warm_start_policy(study: StudySpec) -> Path:
    """The policy every run starts from: the warm start run's best-validation export."""
    return run_dir(study, "warm_start", study.shared_seed) / "policy"


def orm_policy(study: StudySpec) -> Path | None:
    """The study's ORM export, or None without one."""
    return run_dir(study, "orm", study.shared_seed) / "policy" if study.orm is not None else None


def run_dir(study: StudySpec, run: str, seed: int) -> Path:
    """Where a run logs: ``<study>/runs/<run>/seed<seed>``, in the other study for a reused stage."""
    reused = reused_stages(study).get(run)
    owner = reused.from_study if reused is not None else study.name
    return study.output_dir / owner / "runs" / run / f"seed{seed}"


def reused_stages(study: StudySpec) -> dict[str, StageSpec]:
    """The shared stages this study takes from another study, by run name."""
    stages = {"warm_start": study.warm_start, "orm": study.orm}
    return {run: stage for run, stage in stages.items() if stage is not None and stage.from_study}


def plan(study: StudySpec) -> list[Step]:
    """Every command of the study, in the order they must run."""
    shared = study.shared_seed
    policy = f"{POLICY_OPTION}{warm_start_policy(study)}"
    orm = orm_policy(study)
    with_orm = (f"{ORM_OPTION}{orm}",) if orm is not None else ()
    reused = reused_stages(study)
    steps = [step for run, step in _stage_steps(study).items() if run not in reused]
    # The warm start evaluated like every run (with the ORM for rerank@K): the baseline each run is paired with.
    steps.append(_step(study, "validate", "warm_start_eval", shared, study.warm_start.config, (policy, *with_orm)))
    for run in study.runs:
        for seed in study.seeds:
            args = (*run.args, policy, *with_orm, "--validate_before_fit=false")
            steps.append(_step(study, "fit", run.name, seed, run.config, args))
    return steps


def _stage_steps(study: StudySpec) -> dict[str, Step]:
    """The warm start's and the ORM's training as this study declares them, by run name (a reused stage's in the
    study that ran it)."""
    shared = study.shared_seed
    stages = {"warm_start": _step(study, "fit", "warm_start", shared, study.warm_start.config, study.warm_start.args)}
    if study.orm is not None:
        policy = f"{POLICY_OPTION}{warm_start_policy(study)}"
        stages["orm"] = _step(study, "fit", "orm", shared, study.orm.config, (*study.orm.args, policy))
    return stages


def _step(study: StudySpec, subcommand: str, run: str, seed: int, config: str, args: tuple[str, ...]) -> Step:
    log_dir = run_dir(study, run, seed)
    logger = {"class_path": LOGGER, "init_args": {"save_dir": str(log_dir.parent.parent), "name": run}}
    logger["init_args"]["version"] = log_dir.name
    command = (
        subcommand,
        "--config",
        config,
        *study.common_args,
        *args,
        f"--seed_everything={seed}",
        f"--trainer.logger={json.dumps(logger)}",
    )
    return Step(run=run, seed=seed, log_dir=log_dir, command=command)


def shell_command(step: Step) -> str:
    return shlex.join(["lit-reason", *step.command])


def run_study(study: StudySpec, only: set[str] | None = None) -> None:
    """Run every step not finished yet, one after another (``only``: just these runs; the warm start, ORM and
    baseline are run first when missing). A failing step stops the study with its command."""
    for run, stage in reused_stages(study).items():
        if not (run_dir(study, run, study.shared_seed) / DONE_FILE).is_file():
            raise RuntimeError(
                f"study {study.name} reuses the {run} of study {stage.from_study}, which has not finished it "
                f"({run_dir(study, run, study.shared_seed)}): run that study first"
            )
    check_finished_steps(study)
    steps = plan(study)
    for index, step in enumerate(steps, start=1):
        if only is not None and step.run not in only | SHARED_STEPS:
            continue
        label = f"[study {study.name} {index}/{len(steps)}] {step.run} seed {step.seed}"
        if step.finished:
            print(f"{label}: finished before, skipped", flush=True)
            continue
        RunLock(step.log_dir).check_free()  # a launcher or another study runs it: resuming or deleting it loses it
        command = list(step.command)
        resumed = _complete_checkpoint(step.checkpoint) and step.command[0] == "fit"
        if resumed:
            command.append(f"--ckpt_path={step.checkpoint}")
            print(f"{label}: resuming from {step.checkpoint}", flush=True)
        else:
            if step.log_dir.exists():
                shutil.rmtree(step.log_dir)  # an attempt that saved no checkpoint: start it afresh
            step.log_dir.mkdir(parents=True)
            (step.log_dir / STARTED_FILE).write_text(json.dumps(declaration(study, step)))
        print(f"{label}: {shell_command(step)}", flush=True)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "lit_reason", *command], env=single_process_environment())
        if result.returncode != 0:
            raise RuntimeError(
                f"{label} failed (exit code {result.returncode}); its output is above. Fix the cause and run the "
                f"study again: finished runs are kept. The command was:\n  {shell_command(step)}"
            )
        record = {"wall_seconds": round(time.perf_counter() - started, 1)}
        if resumed:
            record["resumed"] = True  # wall_seconds counts this last attempt only
        record_finished(study, step, record, label)


def record_finished(study: StudySpec, step: Step, record: dict[str, Any], label: str) -> None:
    """Mark ``step`` finished (its ``study.json``: the command, its declaration and ``record``), once it
    recorded a validation (the warm start and ORM need none): the results count its last evaluation."""
    if step.run not in ("warm_start", "orm") and not _recorded_a_validation(step.log_dir):
        raise RuntimeError(
            f"{label} exited without an error but recorded no validation in {step.log_dir / 'metrics.json'}, "
            f"so it has no result to report and is not marked finished. The command was:\n  {shell_command(step)}"
        )
    started = step.log_dir / STARTED_FILE  # what it ran: the study file may have changed while it did
    declared = json.loads(started.read_text()) if started.is_file() else declaration(study, step)
    finished_at = datetime.now(timezone.utc).isoformat()  # a warm start trained again is new
    record = {"command": shell_command(step), "declaration": declared, "finished_at": finished_at, **record}
    step.log_dir.mkdir(parents=True, exist_ok=True)
    (step.log_dir / DONE_FILE).write_text(json.dumps(record, indent=1))


def record_launched(study: StudySpec, run_and_seed: str) -> None:
    """Mark a step that a launcher ran (``RUN:SEED`` from ``--print-commands``) finished; its wall time is
    unknown (the launcher's queueing and nodes are not the study's)."""
    run, _, seed = run_and_seed.rpartition(":")
    steps = {f"{step.run}:{step.seed}": step for step in plan(study)}
    if run_and_seed not in steps:
        raise ValueError(f"--record {run_and_seed}: study {study.name} has no such step (steps: {sorted(steps)})")
    step = steps[run_and_seed]
    if step.finished:
        raise ValueError(f"--record {run_and_seed}: finished before ({step.log_dir / DONE_FILE}); nothing to record")
    RunLock(step.log_dir).check_free()  # still running: its results are not all written yet
    metrics = step.log_dir / "metrics.json"
    if step.command[0] == "fit" and not metrics.is_file():
        raise ValueError(f"--record {run_and_seed}: {metrics} does not exist: the command did not run here; run it")
    if step.command[0] == "fit" and read_training_end(step.log_dir) is None:
        raise ValueError(
            f"--record {run_and_seed}: {metrics} records no end of training (a fit_end entry), as a crash leaves it: "
            "its fit did not finish (resume it: its command plus --ckpt_path of its checkpoints/last.ckpt), or it "
            "ran with a lit-reason that recorded none (run it again)"
        )
    record_finished(study, step, {"wall_seconds": None, "launched": True}, f"{run} seed {seed}")


def declaration(study: StudySpec, step: Step) -> list[str]:
    """A step's command as compared with the one a finished step ran: each ``--config`` file by its content, the
    study's output directory by a placeholder, so that one file named from another directory (or installed
    elsewhere) and one study named by another path are the same declaration; and the warm start and ORM it
    starts from followed by the record of the run that trained them (``_trained_by``), so that a step started
    from a warm start trained again is not taken for one of the new warm start."""
    tokens = [_without_output_dir(study, token) for token in step.command]
    for index, token in enumerate(step.command):
        if token.startswith("--config="):
            tokens[index] = f"--config={_content_digest(token.split('=', 1)[1])}"
        elif token == "--config" and index + 1 < len(tokens):
            tokens[index + 1] = _content_digest(step.command[index + 1])
    orm = orm_policy(study)
    exports = {f"{POLICY_OPTION}{warm_start_policy(study)}", *([f"{ORM_OPTION}{orm}"] if orm else [])}
    return [
        f"{token} {_trained_by(Path(original.split('=', 1)[1]))}" if original in exports else token
        for token, original in zip(tokens, step.command, strict=True)
    ]


def _content_digest(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _trained_by(export: Path) -> str:
    """Which training run an exported policy is: the digest of its run's ``study.json`` (its declaration, wall
    time and when it finished), or ``(not trained)``. A run trained again records another time, so its export is
    another policy even when it trained with the same declaration."""
    done = export.parent / DONE_FILE
    if not done.is_file():
        return "(not trained)"
    return f"(trained by run sha256:{hashlib.sha256(done.read_bytes()).hexdigest()[:16]})"


def check_finished_steps(study: StudySpec) -> None:
    """Stop where a finished step ran another command than the study now declares (its config's content, its
    arguments, the study's common arguments or the warm start or ORM it started from changed): its results
    would be reported as the new declaration's. So for an interrupted step the study would resume: it would go
    on under the new declaration from a checkpoint of the old. A reused warm start or ORM is checked too: the
    other study must have trained it with this study's common arguments, config and arguments, or this study's
    runs would start from a model of another task or setup. Steps finished by an earlier lit-reason, which
    recorded the command alone, are compared by it."""
    reused = reused_stages(study)
    reused_steps = [step for run, step in _stage_steps(study).items() if run in reused]
    for step in [*reused_steps, *plan(study)]:
        recorded, now = _recorded_and_declared(study, step)
        if recorded is None:
            continue
        if step.run in reused:  # trained from its own study's warm start, which need not be this study's
            recorded, now = _without_policy(recorded), _without_policy(now)
        if recorded != now:
            changed = "; ".join(f"{a} -> {b}" for a, b in zip(recorded, now, strict=False) if a != b)
            if step.run in reused:
                raise RuntimeError(
                    f"study {study.name}: reuses the {step.run} of study {reused[step.run].from_study}, which trained "
                    f"it with another command than this study declares for it ({changed or 'other arguments'}): give "
                    f"this study the same common_args and {step.run} config and args as that one"
                )
            state = "finished before" if step.finished else "was interrupted after it started"
            raise RuntimeError(
                f"study {study.name}: {step.run} seed {step.seed} {state} with another command than the study now "
                f"declares ({changed or 'other arguments'}): restore the study file or its configs, or delete "
                f"{step.log_dir} to run it again (a warm start or ORM trained again is new: every step after it, "
                "warm_start_eval included, must run again)."
            )


def _recorded_and_declared(study: StudySpec, step: Step) -> tuple[list[str] | None, list[str]]:
    """What ``step`` recorded that it ran (finished, or started and resumable; None otherwise), and its
    declaration now, in the form of the record (an earlier lit-reason's: the command alone; or a declaration
    without the runs that trained the warm start and ORM)."""
    now = declaration(study, step)
    if step.finished:
        record = json.loads((step.log_dir / DONE_FILE).read_text())
        if "declaration" in record:
            recorded = record["declaration"]
        elif "command" in record:
            recorded = shlex.split(_without_output_dir(study, record["command"]))
            now = [_without_output_dir(study, token) for token in ["lit-reason", *step.command]]
        else:
            return None, now
    elif (step.log_dir / STARTED_FILE).is_file() and _complete_checkpoint(step.checkpoint):
        recorded = json.loads((step.log_dir / STARTED_FILE).read_text())
    else:
        return None, now
    if not any(" (trained by run " in token or token.endswith(" (not trained)") for token in recorded):
        now = [token.split(" (trained by run ")[0].removesuffix(" (not trained)") for token in now]
    return recorded, now


def _without_policy(tokens: list[str]) -> list[str]:
    return [token for token in tokens if not token.startswith(POLICY_OPTION)]


def _without_output_dir(study: StudySpec, text: str) -> str:
    """``text`` with the runs directories of this study (and of the studies it reuses stages from) spelled
    ``<output_dir>/<study>/runs``, however ``output_dir`` is written."""
    for owner in {study.name, *(stage.from_study for stage in reused_stages(study).values())}:
        text = text.replace(str(study.output_dir / owner / "runs"), f"<output_dir>/{owner}/runs")
    return text


def read_training_end(log_dir: Path) -> tuple[int, int | None] | None:
    """The optimizer step a run's fit ended at and the training samples it had drawn (its last ``fit_end`` entry
    in ``metrics.json``; None where not recorded), or None where its fit recorded no end (unfinished, or run by an
    earlier lit-reason)."""
    path = log_dir / "metrics.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    ends = [(int(e["step"]), e.get("samples_drawn")) for e in entries if e["stage"] == "fit_end"]
    return ends[-1] if ends else None


def _recorded_a_validation(log_dir: Path) -> bool:
    metrics = log_dir / "metrics.json"
    return metrics.is_file() and any(entry.get("stage") == "val" for entry in json.loads(metrics.read_text()))


def print_commands(study: StudySpec) -> None:
    """The study's commands, in order, for a cluster launcher (finished ones commented out), each followed by
    the ``lit-reason study --record`` that marks it finished once it succeeded."""
    print(f"# study {study.name}: run in order; every command after the first needs the warm start's export")
    for step in plan(study):
        record = shlex.join(
            ["lit-reason", "study", "--config", str(study.source), "--record", f"{step.run}:{step.seed}"]
        )
        print(f"# finished: {shell_command(step)}" if step.finished else f"{shell_command(step)} && {record}")


def _complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint to resume from: a file, or a sharded checkpoint's directory (FSDP2)
    whose ``meta.pt``, written last, is there (a first save cut short leaves a directory without it; a later
    one overwrites the directory in place, which only Lightning's loading can catch)."""
    return (path / "meta.pt").is_file() if path.is_dir() else path.is_file()
