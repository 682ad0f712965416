"""Reading a study file: every error names the file and the field."""

from pathlib import Path

import pytest
import yaml

from lit_reason.study.spec import SHARED_STEPS, load_study


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "fit.yaml"
    path.write_text("seed_everything: 0\n")
    return path


def write_study(tmp_path, config, **changes) -> Path:
    study = {
        "name": "micro",
        "output_dir": str(tmp_path / "out"),
        "seeds": [0, 1],
        "warm_start": {"config": str(config)},
        "runs": [
            {"name": "ei", "algorithm": "Expert Iteration", "reward": "sparse", "family": "rl", "config": str(config)},
            {"name": "sft_more", "algorithm": "SFT", "family": "sft", "config": str(config), "args": ["--x=1"]},
        ],
        "claims": {"expert_iteration": "ei", "more_sft": "sft_more"},
    } | changes
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_study_file_is_read_into_its_declaration(tmp_path, config):
    study = load_study(write_study(tmp_path, config))
    assert study.seeds == (0, 1) and study.orm is None and study.equivalence_margin == 0.02
    assert [run.name for run in study.runs] == ["ei", "sft_more"] and study.runs[1].args == ("--x=1",)
    assert study.runs[1].reward == "-" and study.claims.more_sft == "sft_more"
    assert study.directory == tmp_path / "out" / "micro"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": [0]}, r"study\.yaml: the study: unknown keys \['seed'\]"),
        ({"seeds": []}, r"study\.yaml: seeds: give at least one seed"),
        ({"seeds": [0, "1"]}, r"study\.yaml: seeds\[1\]: expected an integer"),
        ({"name": "a b"}, r"study\.yaml: name: 'a b' is not a usable directory name"),
        ({"warm_start": {"config": "missing.yaml"}}, r"study\.yaml: warm_start\.config: no config file missing\.yaml"),
        ({"claims": {"ppo": "ppo_sparse"}}, r"study\.yaml: claims\.ppo: no run is named 'ppo_sparse'"),
        ({"claims": {"ppo_run": "ei"}}, r"study\.yaml: claims: unknown keys \['ppo_run'\]"),
        ({"equivalence_margin": 2}, r"study\.yaml: equivalence_margin: expected a number in \[0, 1\)"),
        # These were a TypeError, or accepted and a KeyError at report time.
        ({"output_dir": 5}, r"study\.yaml: output_dir: expected a path, got 5"),
        ({"claims": {"ppo": {"a": 1}}}, r"study\.yaml: claims\.ppo: expected one run name"),
        ({"claims": {"ppo": ["ei"]}}, r"study\.yaml: claims\.ppo: expected one run name, got \['ei'\]"),
        ({"claims": {"dense_rewards": "ei"}}, r"study\.yaml: claims\.dense_rewards: expected a list of run names"),
        # Accepted, and failed in the first run's fit (after the warm start and the ORM had trained).
        ({"seeds": [-1]}, r"study\.yaml: seeds\[0\]: a seed is an integer from 0 to 4294967295, got -1"),
        (
            {"shared_seed": 2**32},
            r"study\.yaml: shared_seed: a seed is an integer from 0 to 4294967295, got 4294967296",
        ),
        # Accepted, and the claims compared a run with itself or an SFT run as an RL one.
        ({"claims": {"expert_iteration": "sft_more"}}, r"claims\.expert_iteration: sft_more is a run of family sft"),
        ({"claims": {"more_sft": "ei"}}, r"claims\.more_sft: ei is a run of family rl; this role needs one of sft"),
        ({"claims": {"expert_iteration": "ei", "hot_expert_iteration": "ei"}}, r"hot_expert_iteration: ei is also"),
        ({"claims": {"ppo": "ei", "dense_rewards": ["ei"]}}, r"claims\.ppo: ei is also claims\.dense_rewards"),
        ({"claims": {"expert_iteration": "ei", "ppo": "ei"}}, r"claims\.ppo: ei is also claims\.expert_iteration"),
        ({"claims": {"dense_rewards": ["ei", "ei"]}}, r"claims\.dense_rewards: ei is also claims\.dense_rewards"),
    ],
)
def test_a_bad_study_file_is_an_error_naming_the_field(tmp_path, config, changes, message):
    with pytest.raises(ValueError, match=message):
        load_study(write_study(tmp_path, config, **changes))


def test_a_key_given_twice_in_a_study_file_is_refused(tmp_path):
    study = tmp_path / "twice.yaml"
    study.write_text("name: t\nname: u\n")  # it ran as study u
    with pytest.raises(ValueError, match=r"twice.yaml: not a YAML file \(.*key 'name' given twice"):
        load_study(study)


def test_bad_runs_are_errors_naming_the_run(tmp_path, config):
    run = {"name": "ei", "algorithm": "EI", "family": "rl", "config": str(config)}
    with pytest.raises(ValueError, match=r"runs\[1\]\.family: expected rl or sft, got 'ppo'"):
        load_study(write_study(tmp_path, config, runs=[run, {**run, "name": "b", "family": "ppo"}], claims={}))
    with pytest.raises(ValueError, match=r"runs: names must be unique .* got \['ei'\] twice"):
        load_study(write_study(tmp_path, config, runs=[run, run], claims={}))
    with pytest.raises(ValueError, match=r"names must be unique .*\['ei'\] twice"):  # one directory on macOS, Windows
        load_study(write_study(tmp_path, config, runs=[run, {**run, "name": "EI"}], claims={}))
    with pytest.raises(ValueError, match=r"runs: declare at least one run"):  # it planned the warm start alone
        load_study(write_study(tmp_path, config, runs=[], claims={}))
    with pytest.raises(ValueError, match=r"runs\[0\]\.algorithm is required"):
        load_study(write_study(tmp_path, config, runs=[{k: v for k, v in run.items() if k != "algorithm"}], claims={}))


def test_a_reused_stage_names_another_study(tmp_path, config):
    study = load_study(write_study(tmp_path, config, orm={"config": str(config), "from_study": "paper"}))
    assert study.orm.from_study == "paper" and study.warm_start.from_study is None
    with pytest.raises(ValueError, match=r"warm_start\.from_study: names this study \(micro\)"):
        load_study(write_study(tmp_path, config, warm_start={"config": str(config), "from_study": "micro"}))
    with pytest.raises(ValueError, match=r"orm\.from_study: 'a b' is not a usable directory name"):
        load_study(write_study(tmp_path, config, orm={"config": str(config), "from_study": "a b"}))


def test_the_command_line_names_runs_the_study_lacks_and_results_that_are_not_there(tmp_path, config, capsys):
    from lit_reason.study import study_main

    path = write_study(tmp_path, config)
    with pytest.raises(SystemExit):
        study_main(["--config", str(path), "--only", "eii"])  # was: nothing run, no error
    assert (
        "--only: " in (error := capsys.readouterr().err) and "has no run named eii (runs: ['ei', 'sft_more'])" in error
    )
    with pytest.raises(SystemExit):
        study_main(["--config", str(path), "--report-only"])  # was a FileNotFoundError traceback
    assert "the warm start has not been evaluated yet" in capsys.readouterr().err


@pytest.mark.parametrize("reserved", [*sorted(SHARED_STEPS), "ORM"])  # one directory on macOS and Windows
def test_a_run_named_after_a_shared_step_is_refused(tmp_path, config, reserved):
    # A row named warm_start_eval shared that step's directory and was never run.
    run = {"name": reserved, "algorithm": "EI", "family": "rl", "config": str(config)}
    with pytest.raises(ValueError, match=rf"study\.yaml: runs\[0\]\.name: {reserved} is the study's own step.*rename"):
        load_study(write_study(tmp_path, config, runs=[run], claims={}))
