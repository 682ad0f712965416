"""The study's commands (order, shared models, seeds, log directories) and how a study runs them."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lit_reason.files import RunDirectoryInUse, RunLock
from lit_reason.study.runner import (
    check_finished_steps,
    declaration,
    plan,
    print_commands,
    record_launched,
    run_study,
)
from lit_reason.study.spec import StudySpec, load_study


def make_study(tmp_path, runs: dict[str, list[str]], config_name: str = "", **options) -> tuple[StudySpec, str]:
    """A study named ``s`` in ``tmp_path`` whose runs (name -> arguments) all use one trivial config (named
    ``config_name`` in the study file, by default its absolute path)."""
    config = tmp_path / "fit.yaml"
    if not config.exists():
        config.write_text("seed_everything: 0\n")
    named = config_name or str(config)
    rows = [
        {"name": name, "algorithm": "A", "family": "rl", "config": named, "args": args} for name, args in runs.items()
    ]
    study = {"name": "s", "output_dir": str(tmp_path), "warm_start": {"config": named}, "runs": rows} | options
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    return load_study(tmp_path / "study.yaml"), str(config)


def validated(command: list[str], returncode: int = 0) -> subprocess.CompletedProcess:
    """What a ``lit-reason`` command that validated leaves: a ``val`` entry in its run's ``metrics.json``."""
    logger = json.loads(next(a for a in command if a.startswith("--trainer.logger=")).split("=", 1)[1])["init_args"]
    log_dir = Path(logger["save_dir"]) / logger["name"] / logger["version"]
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "metrics.json").write_text(json.dumps([{"stage": "val", "step": 0}]))
    return subprocess.CompletedProcess(command, returncode)


def with_shared_steps_finished(study: StudySpec):
    """Mark the warm start and its evaluation finished; the study's one run's step."""
    warm_start, baseline, run = plan(study)
    for step in (warm_start, baseline):
        step.log_dir.mkdir(parents=True)
        (step.log_dir / "study.json").write_text("{}")
    return run


def test_the_plan_trains_the_shared_models_first_and_every_run_once_per_seed(tmp_path, capsys):
    study, config = make_study(
        tmp_path,
        {"a": ["--trainer.max_epochs=2"], "b": []},
        seeds=[3, 4],
        shared_seed=7,
        common_args=["--data.validation_questions=10"],
        orm={"config": str(tmp_path / "fit.yaml"), "args": ["--trainer.max_epochs=1"]},
    )
    steps = plan(study)
    assert [(s.run, s.seed) for s in steps] == [
        ("warm_start", 7), ("orm", 7), ("warm_start_eval", 7), ("a", 3), ("a", 4), ("b", 3), ("b", 4)
    ]  # fmt: skip
    warm_start = tmp_path / "s" / "runs" / "warm_start" / "seed7" / "policy"
    orm = tmp_path / "s" / "runs" / "orm" / "seed7" / "policy"
    a3 = steps[3]
    assert a3.log_dir == tmp_path / "s" / "runs" / "a" / "seed3"
    assert a3.command[:3] == ("fit", "--config", config)
    assert "--data.validation_questions=10" in a3.command and "--trainer.max_epochs=2" in a3.command
    assert f"--model.init_args.policy.name_or_path={warm_start}" in a3.command
    assert f"--model.init_args.orm={orm}" in a3.command and "--seed_everything=3" in a3.command
    logger = json.loads(a3.command[-1].removeprefix("--trainer.logger="))
    assert logger["init_args"] == {"save_dir": str(tmp_path / "s" / "runs"), "name": "a", "version": "seed3"}
    assert steps[0].command[0] == "fit" and not any("name_or_path" in arg for arg in steps[0].command)
    assert not any("--model.init_args.orm" in arg for arg in steps[1].command)  # the ORM trains its own
    assert steps[2].command[0] == "validate" and f"--model.init_args.orm={orm}" in steps[2].command
    (steps[0].log_dir / "study.json").parent.mkdir(parents=True)
    (steps[0].log_dir / "study.json").write_text("{}")
    print_commands(study)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("# finished: lit-reason fit") and printed[2].startswith("lit-reason fit")
    assert printed[2].endswith(f" && lit-reason study --config {tmp_path / 'study.yaml'} --record orm:7")
    assert len(printed) == 1 + len(steps)


def test_running_skips_finished_steps_resumes_checkpointed_ones_and_restarts_the_rest(tmp_path, monkeypatch):
    study, _ = make_study(tmp_path, {"a": [], "b": [], "c": []}, seeds=[0])
    warm_start, baseline, a, b, c = plan(study)
    for step in (warm_start, baseline):
        step.log_dir.mkdir(parents=True)
        (step.log_dir / "study.json").write_text("{}")
    a.checkpoint.parent.mkdir(parents=True)
    a.checkpoint.write_bytes(b"checkpoint")
    (b.log_dir / "predictions").mkdir(parents=True)  # an attempt killed before its first checkpoint
    c.checkpoint.mkdir(parents=True)  # FSDP2's sharded checkpoint: a directory (was deleted, not resumed)
    (c.checkpoint / "meta.pt").write_bytes(b"checkpoint")
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return validated(command, 1 if len(commands) == 3 else 0)  # c fails

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match=r"(?s)\[study s 5/5\] c seed 0 failed \(exit code 1\).*lit-reason fit"):
        run_study(study)
    assert [command[3] for command in commands] == ["fit"] * 3  # the warm start and baseline were skipped
    assert commands[0][-1] == f"--ckpt_path={a.checkpoint}" and not any("ckpt_path" in arg for arg in commands[1])
    assert commands[2][-1] == f"--ckpt_path={c.checkpoint}" and (c.checkpoint / "meta.pt").is_file()
    assert not (b.log_dir / "predictions").exists()  # restarted afresh
    assert json.loads((a.log_dir / "study.json").read_text())["resumed"] is True
    assert (b.log_dir / "study.json").is_file() and not (c.log_dir / "study.json").exists()


def test_a_study_can_reuse_another_studys_warm_start_and_orm(tmp_path, monkeypatch):
    config = str(tmp_path / "fit.yaml")
    reused = {"config": config, "from_study": "first"}
    study, _ = make_study(tmp_path, {"a": []}, seeds=[0], warm_start=reused, orm=reused)
    steps = plan(study)
    assert [s.run for s in steps] == ["warm_start_eval", "a"]  # evaluated again here, not trained again
    warm_start = tmp_path / "first" / "runs" / "warm_start" / "seed0" / "policy"
    orm = tmp_path / "first" / "runs" / "orm" / "seed0" / "policy"
    assert steps[1].log_dir == tmp_path / "s" / "runs" / "a" / "seed0"
    assert f"--model.init_args.policy.name_or_path={warm_start}" in steps[1].command
    assert f"--model.init_args.orm={orm}" in steps[0].command
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: validated(command))
    with pytest.raises(RuntimeError, match="reuses the warm_start of study first, which has not finished it"):
        run_study(study)
    for stage in ("warm_start", "orm"):
        (tmp_path / "first" / "runs" / stage / "seed0").mkdir(parents=True)
        (tmp_path / "first" / "runs" / stage / "seed0" / "study.json").write_text("{}")
    run_study(study)
    assert (steps[1].log_dir / "study.json").is_file()


def test_a_stage_reused_from_a_study_of_another_task_stops_the_study(tmp_path, monkeypatch):
    task = ["--data.task.init_args.max_factor=9"]
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: validated(command))
    config = str(tmp_path / "fit.yaml")
    orm = {"config": config, "args": ["--trainer.max_epochs=1"]}
    first, _ = make_study(tmp_path, {"a": []}, seeds=[0], common_args=task, name="first", orm=orm)
    run_study(first)
    reused = {"config": config, "from_study": "first"}
    reused_orm = reused | {"args": orm["args"]}
    same, _ = make_study(tmp_path, {"a": []}, seeds=[0], common_args=task, warm_start=reused, orm=reused_orm)
    check_finished_steps(same)
    # An ORM reused alone was trained from the other study's warm start, not from this one's: still the same.
    own_warm_start, _ = make_study(tmp_path, {"a": []}, seeds=[0], common_args=task, orm=reused_orm)
    check_finished_steps(own_warm_start)
    for other in ({"warm_start": reused}, {"orm": reused_orm}, {"common_args": task, "orm": reused}):
        stage = "orm" if "orm" in other else "warm_start"
        changed, _ = make_study(tmp_path, {"a": []}, seeds=[0], **other)
        with pytest.raises(RuntimeError, match=rf"reuses the {stage} of study first, which trained it with another"):
            run_study(changed)


def test_a_sharded_checkpoint_cut_short_is_started_afresh(tmp_path, monkeypatch):
    study, _ = make_study(tmp_path, {"a": []}, seeds=[0])
    a = with_shared_steps_finished(study)
    (a.checkpoint / "__0_0.distcp").parent.mkdir(parents=True)
    (a.checkpoint / "__0_0.distcp").write_bytes(b"shard")  # no meta.pt: its save was cut short
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: commands.append(command) or validated(command))
    run_study(study)
    assert not any("ckpt_path" in arg for arg in commands[0]) and not a.checkpoint.exists()


def test_a_run_that_recorded_no_validation_is_not_marked_finished(tmp_path, monkeypatch):
    # As a round with no training batch once ended a whole run, untrained and unevaluated, with exit code 0.
    study, _ = make_study(tmp_path, {"a": []}, seeds=[0])
    a = with_shared_steps_finished(study)
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0))
    with pytest.raises(RuntimeError, match=r"a seed 0 exited without an error but recorded no validation"):
        run_study(study)
    assert not (a.log_dir / "study.json").exists()


def test_a_step_a_launcher_ran_is_marked_finished_by_record_with_its_time_unknown(tmp_path):
    study, _ = make_study(tmp_path, {"a": []}, seeds=[0])
    # A warm start that never ran (no metrics.json) was marked finished, and every run then started from nothing.
    with pytest.raises(ValueError, match=r"warm_start:0: .*metrics.json does not exist: the command did not run"):
        record_launched(study, "warm_start:0")
    a = with_shared_steps_finished(study)
    with pytest.raises(ValueError, match="metrics.json does not exist: the command did not run here"):
        record_launched(study, "a:0")  # the launcher's run failed before its first validation
    with pytest.raises(ValueError, match=r"no such step \(steps: \['a:0', 'warm_start:0', 'warm_start_eval:0'\]\)"):
        record_launched(study, "a:1")
    validated(list(a.command))
    with pytest.raises(ValueError, match="records no end of training"):  # it crashed after a validation
        record_launched(study, "a:0")
    metrics = a.log_dir / "metrics.json"
    metrics.write_text(json.dumps([*json.loads(metrics.read_text()), {"stage": "fit_end", "step": 0}]))
    running = RunLock(a.log_dir)  # the launched fit, still going: its first validation is not its result
    running.acquire()
    with pytest.raises(RunDirectoryInUse):
        record_launched(study, "a:0")
    running.release()
    record_launched(study, "a:0")
    record = json.loads((a.log_dir / "study.json").read_text())
    assert record["wall_seconds"] is None and record["launched"] and record["command"].startswith("lit-reason fit")
    check_finished_steps(study)  # recorded with the declaration the study checks
    assert plan(study)[-1].finished
    with pytest.raises(ValueError, match="finished before"):  # a time the study measured is kept
        record_launched(study, "a:0")


def test_a_finished_run_declared_anew_with_other_arguments_stops_the_study(tmp_path, monkeypatch):
    study, config = make_study(tmp_path, {"a": ["--trainer.max_epochs=1"]}, seeds=[0])
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: validated(command))
    run_study(study)
    changed, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=3"]}, seeds=[0])
    with pytest.raises(
        RuntimeError, match=r"a seed 0 finished before .* \(--trainer.max_epochs=1 -> --trainer.max_epochs=3\)"
    ):
        run_study(changed)
    with pytest.raises(RuntimeError, match="a seed 0 finished before"):
        check_finished_steps(changed)  # what --report-only checks before reporting
    # The same config file named another way is the same declaration; the same name with other content is not.
    monkeypatch.chdir(tmp_path)
    renamed, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=1"]}, seeds=[0], config_name="./fit.yaml")
    run_study(renamed)
    moved, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=1"]}, seeds=[0], output_dir=".")
    check_finished_steps(moved)  # the same study named by a relative path: the same declaration
    Path(config).write_text("seed_everything: 1\n")
    with pytest.raises(RuntimeError, match=r"warm_start seed 0 finished before .* \(sha256:"):
        run_study(study)
    # A config file given as --config=FILE among a run's arguments is declared by its content too.
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer: {max_epochs: 1}\n")
    with_extra, _ = make_study(tmp_path, {"b": [f"--config={extra}"]}, seeds=[0])
    assert f"--config={extra}" not in declaration(with_extra, plan(with_extra)[-1])


def test_steps_an_earlier_lit_reason_finished_are_checked_by_their_command(tmp_path, monkeypatch):
    study, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=1"]}, seeds=[0])
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: validated(command))
    run_study(study)
    for step in plan(study):  # as the study.json of an earlier version: the command alone
        record = json.loads((step.log_dir / "study.json").read_text())
        (step.log_dir / "study.json").write_text(json.dumps({"command": record["command"], "wall_seconds": 1}))
    check_finished_steps(study)
    changed, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=3"]}, seeds=[0])
    with pytest.raises(
        RuntimeError, match=r"a seed 0 finished before .* \(--trainer.max_epochs=1 -> --trainer.max_epochs=3\)"
    ):
        check_finished_steps(changed)


def test_an_interrupted_run_is_not_resumed_under_a_changed_declaration_and_records_what_it_started_with(
    tmp_path, monkeypatch
):
    # An interrupted run resumed with whatever the study file declared now, and was recorded finished under the
    # new declaration, its evaluations of the old one kept: the mix was never caught.
    study, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=6"]}, seeds=[0])
    a = plan(study)[-1]

    def interrupted(command, **kwargs):
        if f'"name": "{a.run}"' in next(arg for arg in command if arg.startswith("--trainer.logger=")):
            a.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            a.checkpoint.write_bytes(b"checkpoint")
            return subprocess.CompletedProcess(command, -9)  # killed after its first checkpoint
        return validated(command)

    monkeypatch.setattr(subprocess, "run", interrupted)
    with pytest.raises(RuntimeError, match="a seed 0 failed"):
        run_study(study)
    changed, _ = make_study(tmp_path, {"a": ["--trainer.max_epochs=3"]}, seeds=[0])
    with pytest.raises(
        RuntimeError,
        match=r"a seed 0 was interrupted after it started with another command .* "
        r"\(--trainer.max_epochs=6 -> --trainer.max_epochs=3\)",
    ):
        run_study(changed)

    # Resumed as declared, while the study file changes: its record is the declaration it ran with.
    def resumed_while_the_study_changes(command, **kwargs):
        make_study(tmp_path, {"a": ["--trainer.max_epochs=3"]}, seeds=[0])
        return validated(command)

    monkeypatch.setattr(subprocess, "run", resumed_while_the_study_changes)
    run_study(study)
    assert "--trainer.max_epochs=6" in json.loads((a.log_dir / "study.json").read_text())["declaration"]


def test_steps_started_from_a_warm_start_trained_again_stop_the_study(tmp_path, monkeypatch):
    # Steps declared the warm start by its path only: one trained again (its directory deleted, as the error
    # for a changed warm start said) left the baseline and every run "finished", reported against the new one.
    study, _ = make_study(tmp_path, {"a": []}, seeds=[0])
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: validated(command))
    run_study(study)
    warm_start, baseline, a = plan(study)
    assert any(
        " (trained by run sha256:" in token
        for token in json.loads((a.log_dir / "study.json").read_text())["declaration"]
    )
    record = (warm_start.log_dir / "study.json").read_text()
    shutil.rmtree(warm_start.log_dir)
    with pytest.raises(RuntimeError, match=r"warm_start_eval seed 0 finished before .*-> .*\(not trained\)"):
        run_study(study)
    warm_start.log_dir.mkdir(parents=True)
    (warm_start.log_dir / "study.json").write_text(record.replace('"finished_at": "', '"finished_at": "again '))
    with pytest.raises(RuntimeError, match=r"warm_start_eval seed 0 finished before .*trained by run sha256:"):
        check_finished_steps(study)
    (warm_start.log_dir / "study.json").write_text(record)  # the same run's record: the same warm start
    check_finished_steps(study)


def test_a_step_another_process_is_running_is_neither_resumed_nor_deleted(tmp_path, monkeypatch):
    # A study run while a launcher (or another study) ran one of its steps deleted that step's files (no
    # checkpoint yet) or resumed it a second time beside the first.
    study, _ = make_study(tmp_path, {"a": []}, seeds=[0])
    run = with_shared_steps_finished(study)
    (run.log_dir / "predictions").mkdir(parents=True)  # under way, no checkpoint yet
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: pytest.fail("started the step again"))
    running = RunLock(run.log_dir)  # the other process's (a lock conflicts with another descriptor's in-process too)
    running.acquire()
    with pytest.raises(RunDirectoryInUse, match=f"{run.log_dir} is being written by another process"):
        run_study(study)
    assert (run.log_dir / "predictions").is_dir()
    running.release()
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: validated(command))
    run_study(study)
    assert (run.log_dir / "study.json").is_file()
