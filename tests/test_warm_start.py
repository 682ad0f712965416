"""Warm starts: what the cache key covers, and the single, parent-bound process that trains one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lit_reason import warm_start
from lit_reason.study.spec import load_study
from lit_reason.warm_start import (
    PACKAGED_CONFIGS,
    locate_config,
    resolve_policy_path,
    single_process_environment,
    warm_start_dir,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_REASON_CACHE", str(tmp_path / "cache"))


def test_the_key_covers_named_configs_data_files_and_the_code_but_not_layout(tmp_path, monkeypatch):
    inner, data = tmp_path / "inner.yaml", tmp_path / "data.json"
    inner.write_text("a: 1\n")
    data.write_text("[1]")
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: {{policy: 'config:{inner}'}}\ndata: {{task: {{init_args: {{path: {data}}}}}}}\n")
    first = warm_start_dir(config)
    config.write_text(
        f"# a comment\nmodel:  {{policy: 'config:{inner}'}}\ndata: {{task: {{init_args: {{path: {data}}}}}}}\n"
    )
    assert warm_start_dir(config) == first  # comments and layout do not count
    inner.write_text("a: 2\n")
    second = warm_start_dir(config)
    assert second != first
    data.write_text("[1, 2]")
    third = warm_start_dir(config)
    assert third not in (first, second)
    monkeypatch.setattr(warm_start, "source_fingerprint", lambda: "other code")
    assert warm_start_dir(config) not in (first, second, third)


def test_the_key_covers_data_files_and_a_local_base_policy_under_any_option(tmp_path):
    # JSONLTask's train_path, DatasetTask's data_files and a local base policy's weights (were not covered).
    train, base = tmp_path / "train.jsonl", tmp_path / "base"
    train.write_text('{"question": "q", "answer": 1}\n')
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "runs").mkdir()
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model: {{init_args: {{policy: {{name_or_path: {base}}}}}}}\n"
        f"data: {{task: {{init_args: {{train_path: {train}, data_files: {{test: {train}}}}}}}}}\n"
        f"trainer: {{logger: {{init_args: {{save_dir: {tmp_path / 'runs'}}}}}}}\n"
    )
    keys = [warm_start_dir(config)]
    train.write_text('{"question": "q", "answer": 2}\n')
    keys.append(warm_start_dir(config))
    (base / "model.safetensors").write_bytes(b"retrained")
    keys.append(warm_start_dir(config))
    (tmp_path / "runs" / "version_0").mkdir()  # a run's logs: a directory no *path option names
    keys.append(warm_start_dir(config))
    assert len(set(keys[:3])) == 3 and keys[3] == keys[2]
    config.write_text(f"data: {{task: {{init_args: {{instruction: {'x' * 300}, fields: {{x: a\\0b}}}}}}}}\n")
    assert warm_start_dir(config)  # text that cannot be a path is no file (a long one raised "name too long")


def test_the_key_covers_the_source_of_user_modules_the_config_names(tmp_path, monkeypatch):
    # A task's class_path or a reward_fn outside lit-reason: editing it reused the stale warm start.
    monkeypatch.chdir(tmp_path)  # where the training process, run with python -m, imports them from
    (tmp_path / "my_task.py").write_text("class Doubling: pass\n")
    (tmp_path / "warm_start_key_rewards").mkdir()
    (tmp_path / "warm_start_key_rewards" / "__init__.py").write_text(
        "raise RuntimeError('imported')\n"
    )  # found, never run
    (tmp_path / "warm_start_key_rewards" / "format.py").write_text("def score(problem, response): return 1.0\n")
    config = tmp_path / "sft.yaml"
    config.write_text(
        "data: {task: {class_path: my_task.Doubling}}\n"
        "model: {init_args: {reward_fn: {path: 'warm_start_key_rewards.format:score'}, other: no_such_module.thing}}\n"
    )
    keys = [warm_start_dir(config)]
    (tmp_path / "my_task.py").write_text("class Doubling: pass  # edited\n")
    keys.append(warm_start_dir(config))
    (tmp_path / "warm_start_key_rewards" / "format.py").write_text("def score(problem, response): return 0.5\n")
    keys.append(warm_start_dir(config))
    assert len(set(keys)) == 3 and "warm_start_key_rewards" not in sys.modules


def test_training_runs_alone_bound_to_its_parent_and_clears_stale_staging(tmp_path, monkeypatch):
    config = tmp_path / "sft.yaml"
    config.write_text("seed_everything: 0\n")
    target = warm_start_dir(config)
    stale = target.parent / f".{target.name}-killed"
    stale.mkdir(parents=True)
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500", "SLURM_NTASKS": "2"}.items():
        monkeypatch.setenv(name, value)
    launched = {}

    def fake_run(command, check, env):
        launched.update(command=command, env=env)
        export = next(a for a in command if a.startswith("--export.dirpath=")).split("=", 1)[1]
        os.makedirs(export)
        open(os.path.join(export, "config.json"), "w").close()

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert resolve_policy_path(f"config:{config}") == str(target)
    assert not {"RANK", "WORLD_SIZE", "MASTER_PORT", "SLURM_NTASKS"} & set(launched["env"])
    assert launched["env"][warm_start.PARENT_VARIABLE] == str(os.getpid())
    assert launched["env"][warm_start.TRAINING_VARIABLE] == str(config.resolve())  # what the child is training
    assert not stale.exists() and (target / "config.json").is_file()
    # A folder in its place that holds no export (no config.json: a copy cut short) is replaced, not an OSError
    # after which the trained policy was deleted and every later run trained it again.
    shutil.rmtree(target)
    (target / "tokenizer").mkdir(parents=True)
    assert resolve_policy_path(f"config:{config}") == str(target)
    assert (target / "config.json").is_file() and not (target / "tokenizer").exists()


def test_configs_that_name_each_other_s_policies_in_a_cycle_stop_instead_of_deadlocking(tmp_path, monkeypatch):
    # In the child training b.yaml for a.yaml, whose policy is config:a.yaml again: it waited forever for the
    # lock its grandparent held.
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"model: {{policy: 'config:{b}'}}\n")
    b.write_text(f"model: {{policy: 'config:{a}'}}\n")
    monkeypatch.setenv(warm_start.TRAINING_VARIABLE, os.pathsep.join([str(a.resolve()), str(b.resolve())]))
    with pytest.raises(
        ValueError, match=r"configs name each other's policies in a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"
    ):
        resolve_policy_path(f"config:{a}")


@pytest.mark.slow
def test_a_child_exits_when_its_parent_dies(tmp_path):
    # A parent starts a child bound to it (the environment single_process_environment gives, tested above) and
    # is killed; the child, which would otherwise sleep for a minute, exits within seconds.
    ready = tmp_path / "child.ready"  # its watch started: importing lit-reason takes long on busy cores
    child = (
        "from lit_reason.warm_start import exit_with_parent; import time; exit_with_parent(); "
        f"open({str(ready)!r}, 'w').close(); time.sleep(60)"
    )
    parent = (
        "import os, subprocess, sys, time\n"
        f"environment = {{**os.environ, {warm_start.PARENT_VARIABLE!r}: str(os.getpid())}}\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], env=environment)\n"
        f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", parent])
    pid_file = tmp_path / "child.pid"
    for _ in range(1200):  # up to 60 s
        if ready.is_file() and pid_file.is_file() and pid_file.read_text():
            break
        subprocess.run(["sleep", "0.05"])
    child_pid = int(pid_file.read_text())
    process.kill()
    process.wait()
    for _ in range(100):  # up to 10 s
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        subprocess.run(["sleep", "0.1"])
    os.kill(child_pid, 9)
    pytest.fail("the child outlived its parent")


def test_single_process_environment_keeps_everything_else(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # the parent's seed: a warm start must not depend on it
    monkeypatch.setenv("MY_SETTING", "kept")
    environment = single_process_environment()
    assert "LOCAL_RANK" not in environment and "PL_GLOBAL_SEED" not in environment
    assert environment["MY_SETTING"] == "kept"
    assert environment["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("name", ["/no/such/policy", "./missing", "~/missing-policy", "a/b/c", "runs/typo"])
def test_a_missing_local_policy_is_named_not_sent_to_the_hub(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="no such directory .* save_pretrained wrote"):
        resolve_policy_path(name)


def test_hub_names_and_existing_directories_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy").mkdir()
    assert resolve_policy_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_policy_path("./policy") == "./policy" and resolve_policy_path("tiny") == "tiny"


def test_configs_are_found_in_the_working_directory_then_among_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate_config("configs/sft.yaml") == PACKAGED_CONFIGS / "sft.yaml"  # no configs/ here
    assert locate_config("sft.yaml") == PACKAGED_CONFIGS / "sft.yaml"
    assert load_study("study/paper.yaml").warm_start.config == str(PACKAGED_CONFIGS / "sft.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sft.yaml").write_text("seed_everything: 1\n")
    assert locate_config("configs/sft.yaml") == Path("configs/sft.yaml")  # the user's own file comes first
    assert locate_config("no_such.yaml") is None and locate_config(str(tmp_path / "sft.yaml")) is None


def test_the_source_fingerprint_skips_an_editor_s_lock_link(tmp_path):
    """Emacs marks a file being edited with a dangling link ".#name.py": reading it crashed every run that named a
    warm start."""
    (tmp_path / "module.py").write_text("x = 1\n")
    before = warm_start.source_fingerprint(tmp_path)
    (tmp_path / ".#module.py").symlink_to(tmp_path / "nowhere")
    assert warm_start.source_fingerprint(tmp_path) == before
