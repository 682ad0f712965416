"""The ``lit-reason`` CLI: every YAML parses; each CPU config runs end to end on a micro preset."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from jsonargparse import Namespace
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_reason.callbacks import WARM_STARTS, RecordWarmStarts, StagedCheckpoint
from lit_reason.cli import (
    LitReasonCLI,
    main,
    read_checkpoint_record,
    refuse_another_algorithms_checkpoint,
    resume_in_place,
)
from lit_reason.evaluation import PREDICTION_FIELDS
from lit_reason.files import RunDirectoryInUse, RunLock
from lit_reason.policy import PolicySpec

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# A run small enough for a test: micro model, a handful of questions and steps.
TINY_RUN = [
    "--model.init_args.policy.name_or_path=micro",
    "--model.init_args.evaluation.num_samples=2",
    "--model.init_args.evaluation.max_new_tokens=16",
    "--data.questions_per_round=16",
    "--data.validation_questions=4",
    "--data.test_questions=4",
    "--trainer.max_epochs=1",
    "--trainer.max_steps=2",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.enable_progress_bar=false",
]


class ParseOnly(LitReasonCLI):
    def instantiate_classes(self) -> None:  # parsing and type checks only: GPU configs name hub models
        pass


class ParseAndStop(ParseOnly):
    """Parses a subcommand's arguments (``ParseOnly`` with ``run=False`` knows no subcommands) and runs nothing."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses_and_says_how_it_was_run(config):
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("# lit-reason ") and "--config configs/" + config.name in first_line
    assert "Tried on" in config.read_text().split("\n\n")[0] or "tried on" in config.read_text().lower()
    ParseOnly(args=["--config", str(config)], run=False)


def cpu_configs():
    """The configs of the built-in task on a CPU (those of data sets on disk are run below)."""
    return [
        c
        for c in CONFIGS
        if yaml.safe_load(c.read_text())["trainer"].get("accelerator") == "cpu"
        and "path" not in yaml.safe_load(c.read_text())["data"]["task"].get("init_args", {})
    ]


@pytest.mark.parametrize("config", cpu_configs(), ids=[c.name for c in cpu_configs()])
@pytest.mark.slow
def test_each_cpu_config_runs_on_a_micro_preset(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(config), *TINY_RUN, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    (run,) = [p.parent for p in tmp_path.glob("**/config.yaml")]
    assert (run / "policy" / "config.json").is_file()  # exported
    card = (run / "policy" / "README.md").read_text()
    assert f"by `{yaml.safe_load(config.read_text())['model']['class_path'].split('.')[-1]}`" in card
    assert ("## How to use it" if config.name == "orm.yaml" else "## How to prompt it") in card
    assert list((run / "checkpoints").glob("*.ckpt"))
    assert yaml.safe_load((run / "hparams.yaml").read_text())["policy"]["name_or_path"] == "micro"
    events = list(run.glob("events.out.tfevents.*"))
    assert events
    (*evaluations, fit_end) = json.loads((run / "metrics.json").read_text())
    trained = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert (fit_end["stage"], fit_end["step"]) == ("fit_end", trained) and trained > 0
    if yaml.safe_load(config.read_text()).get("validate_before_fit", True):  # results of the first validation
        first = evaluations[0]
        assert (first["stage"], first["step"]) == ("val", 0) and "maj@1" in first["metrics"]
        record = json.loads((run / "predictions" / "val-step0.jsonl").read_text().splitlines()[0])
        assert set(record) == set(PREDICTION_FIELDS) and len(record["sample_answers"]) == 2


@pytest.mark.slow
def test_lightning_s_sanity_check_leaves_no_evaluation(tmp_path):
    # Its first batches were written as a step-0 evaluation after the full one: a second entry in metrics.json
    # (the one a study reads) and a predictions file of 2 of the 4 questions in place of the full one.
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])
    logger = [f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=run"]
    sanity_check = ["--trainer.num_sanity_val_steps=1", "--data.eval_batch_size=2", "--validate_before_fit=true"]
    main(["fit", "--config", sft, *TINY_RUN, "--trainer.max_steps=1", *sanity_check, *logger])
    run_dir = tmp_path / "run" / "version_0"
    evaluations = [(e["stage"], e["step"]) for e in json.loads((run_dir / "metrics.json").read_text())]
    assert evaluations == [("val", 0), ("val", 1), ("fit_end", 1)]
    assert len((run_dir / "predictions" / "val-step0.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_validate_an_exported_policy_directory(tmp_path, monkeypatch, sft_policy_dir):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "validate",
            "--config",
            str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")]),
            f"--model.init_args.policy.name_or_path={sft_policy_dir}",
            *TINY_RUN[1:],
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert list(tmp_path.glob("**/events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["gsm8k_sft.yaml", "svamp_sft.yaml", "svamp_ei.yaml"])
def test_real_model_configs_run_on_cpu_with_a_micro_model(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(DATA / "gsm8k") if name.startswith("gsm8k") else str(DATA / "svamp" / "SVAMP.json")
    main(
        [
            "fit",
            "--config",
            str(CONFIGS[[c.name for c in CONFIGS].index(name)]),
            *TINY_RUN,
            "--model.init_args.policy.load_kwargs={}",
            f"--data.task.init_args.path={path}",
            "--data.task.init_args.prompt_style=plain",
            "--trainer.precision=32-true",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert list(tmp_path.glob("**/policy/config.json"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "reward"),
    [
        ("ei.yaml", ["--model.init_args.reward_fn.path=tests.helpers.rewards.contains_a_digit"]),
        (
            "ppo.yaml",
            [
                "--model.init_args.reward.final=reward_fn",
                "--model.init_args.reward.reward_fn.path=tests.helpers.rewards.shortness",
                "--model.init_args.reward.reward_fn.batched=true",
            ],
        ),
    ],
    ids=["ei", "ppo"],
)
def test_a_jsonl_task_and_a_reward_written_in_python_drive_rl(config, reward, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"problem": f"What is {n} plus {n + 7}?", "final_answer": f"${2 * n + 7:,}"} for n in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    main(
        [
            "fit",
            "--config",
            str(CONFIGS[[c.name for c in CONFIGS].index(config)]),
            *TINY_RUN,
            "--data.task=lit_reason.tasks.JSONLTask",
            "--data.task.init_args.train_path=train.jsonl",
            "--data.task.init_args.fields.question=problem",
            "--data.task.init_args.fields.answer=final_answer",
            "--data.task.init_args.validation_size=4",
            "--model.init_args.rollout.num_samples=2",
            "--model.init_args.rollout.max_new_tokens=16",
            *(["--model.init_args.reference_solutions=0"] if config == "ei.yaml" else []),
            *reward,
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    (run,) = [p.parent for p in tmp_path.glob("**/config.yaml")]
    if config == "ei.yaml":  # a random policy answers nothing right: everything kept has earned the reward
        kept = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["kept_samples"]
        assert kept and all(any(c.isdigit() for c in text) for _, text, _ in kept)
    else:
        events = EventAccumulator(str(run)).Reload()
        (final_reward,) = events.Scalars("round/reward_final")
        assert final_reward.value > 0.5  # the shortness of 16-token responses (correctness would give 0)


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("SFT", ["batch_size", "policy.name_or_path", "policy.trust_remote_code", "evaluation.num_samples"]),
        ("PPO", ["loss.clip_ratio", "reward.kl_coef", "advantage.lam", "critic.kind", "lr_schedule.warmup_steps"]),
    ],
)
def test_help_documents_every_option(model, options, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", model])
    text = capsys.readouterr().out
    for option in options:
        assert f"--model.{option}" in text
        described = text.split(f"  --model.{option} ", 1)[1].split("\n  --", 1)[0]
        assert "(type:" in described and len(described.split("(type:")[0].split()) > 2, described
    assert "see ``" not in text


def test_renamed_options_fail_with_their_new_names(tmp_path, capsys):
    config = tmp_path / "old_ppo.yaml"
    task = {"class_path": "lit_reason.tasks.JSONLTask", "init_args": {"train_path": "t.jsonl", "answer_field": "a"}}
    model = {"class_path": "lit_reason.PPO", "init_args": {"kl_coef": 0.1, "critic": "shared"}}
    config.write_text(yaml.safe_dump({"model": model, "data": {"task": task}}))
    arguments = ["--model.init_args.lam=0.9", "--data.task.init_args.question_field", "q"]
    with pytest.raises(SystemExit):
        LitReasonCLI(args=["fit", "--config", str(config), *arguments], run=False)
    message = capsys.readouterr().err
    assert f"{config}: model option kl_coef is now reward.kl_coef" in message
    assert f"{config}: model option critic: shared is now critic.kind: shared" in message
    assert "command line: model option lam is now advantage.lam" in message
    assert f"{config}: data.task option answer_field is now fields.answer" in message
    assert "command line: data.task option question_field is now fields.question" in message
    with pytest.raises(SystemExit):  # the short flag too (was jsonargparse's generic error)
        LitReasonCLI(args=["fit", "-c", str(config)], run=False)
    assert f"{config}: model option kl_coef is now reward.kl_coef" in capsys.readouterr().err


ALGORITHM_LIST = "lit-reason's algorithms: SFT, ExpertIteration, "


@pytest.mark.parametrize(
    ("arguments", "hints", "absent"),
    [
        (["--model", "PPOO"], ["did you mean PPO?", ALGORITHM_LIST], []),
        (["--model", "sft"], ["did you mean SFT?"], []),
        (["--model", "lit_reason.ExpertIteratoin"], ["did you mean ExpertIteration?"], []),
        (["--model", "ExpertIteration", "--model.init_args.epochs_per_rond=3"], ["did you mean epochs_per_round?"], []),
        (
            ["--model", "PPO", "--model.init_args.loss.clip_ration=0.2"],
            ["did you mean loss.clip_ratio? (its options: --model.help lit_reason.PPO)"],
            [],
        ),
        # An unknown optimizer is no unknown algorithm; a logger's options have no --model.help.
        (["--model", "PPO", "--model.init_args.optimizer=Adamx"], [], [ALGORITHM_LIST]),
        (["--model", "SFT", "--trainer.logger.init_args.save_dri=x"], ["did you mean save_dir?"], ["--model.help"]),
        (["--model", "SFT", "--data.questions_per_rond", "3"], ["did you mean --data.questions_per_round?"], []),
        (["--model", "SFT", "--trainer.max_epochz", "3"], ["did you mean --trainer.max_epochs?"], []),
    ],
)
def test_an_unknown_algorithm_or_option_is_an_error_saying_what_was_meant(arguments, hints, absent, capsys):
    # jsonargparse said only "Option 'epochs_per_rond' is not accepted", "unrecognized arguments", or "Expected a
    # dot import path string: PPOO", without the names that exist.
    with pytest.raises(SystemExit):
        LitReasonCLI(args=["fit", *arguments], run=False)
    message = capsys.readouterr().err
    assert all(hint in message for hint in hints) and not any(text in message for text in absent), message


def test_a_key_given_twice_in_a_config_is_an_error_naming_the_line(tmp_path, capsys):
    # The last one won silently: batch_size 0 here.
    config = tmp_path / "twice.yaml"
    config.write_text("model:\n  class_path: lit_reason.SFT\n  init_args:\n    batch_size: 32\n    batch_size: 0\n")
    with pytest.raises(SystemExit):
        LitReasonCLI(args=["fit", "--config", str(config)], run=False)
    assert (
        f"--config {config}:5:5: not valid YAML (key 'batch_size' given twice in one mapping)"
        in capsys.readouterr().err
    )


def test_a_config_file_that_is_no_yaml_text_is_an_error_naming_the_file(tmp_path, capsys):
    # Both were raw tracebacks from the renamed-options scan, naming no file.
    config = tmp_path / "bad.yaml"
    config.write_text("trainer:\n  max_epochs: 1\n bad: [\n")
    with pytest.raises(SystemExit):
        LitReasonCLI(args=["fit", "--config", str(config)], run=False)
    assert f"--config {config}:3:2: not valid YAML (expected <block end>" in capsys.readouterr().err
    config.write_bytes("trainer: {max_epochs: 1}\n".encode("utf-16"))
    with pytest.raises(SystemExit):
        LitReasonCLI(args=["fit", f"--config={config}"], run=False)
    assert f"--config {config}: not UTF-8 text (byte 0xff at offset 0); save it as UTF-8" in capsys.readouterr().err


def test_evaluating_an_untrained_warm_start_stops_instead_of_training_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_REASON_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.chdir(CONFIGS[0].parents[1])
    with pytest.raises(SystemExit, match=r"lit-reason validate: the policy is the warm start that configs/sft\.yaml"):
        main(["validate", "--config", "configs/ei.yaml"])


def test_predict_is_not_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(CONFIGS[0])])
    assert "invalid choice: 'predict'" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpointing_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sft = CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")]
    main(["fit", "--config", str(sft), *TINY_RUN, "--trainer.enable_checkpointing=false",
          f"--trainer.logger.init_args.save_dir={tmp_path}"])  # fmt: skip
    assert not list(tmp_path.glob("**/*.ckpt")) and list(tmp_path.glob("**/policy/config.json"))


def test_a_resumed_fit_logs_on_in_the_run_directory_of_its_checkpoint(tmp_path):
    checkpoint = tmp_path / "runs" / "ei" / "version_3" / "checkpoints" / "last.ckpt"

    def fit_config(logger: str, version=None, save_dir=tmp_path / "runs") -> Namespace:
        init_args = Namespace(save_dir=str(save_dir), name="ei", version=version)
        logger_config = Namespace(class_path=f"lightning.pytorch.loggers.{logger}", init_args=init_args)
        return Namespace(ckpt_path=str(checkpoint), trainer=Namespace(logger=logger_config))

    def version_after_resume(config: Namespace):
        resume_in_place(config)
        return config.trainer.logger.init_args.version

    assert version_after_resume(fit_config("TensorBoardLogger")) == "version_3"
    assert version_after_resume(fit_config("TensorBoardLogger", version=0)) == 0  # given: kept
    assert version_after_resume(fit_config("TensorBoardLogger", save_dir=tmp_path / "other")) is None
    assert version_after_resume(fit_config("CSVLogger")) is None  # it would delete the run's metrics.csv


@pytest.mark.slow
def test_with_a_csv_logger_text_histograms_and_curves_become_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ppo = CONFIGS[[c.name for c in CONFIGS].index("ppo.yaml")]
    main(
        [
            "fit",
            "--config",
            str(ppo),
            *TINY_RUN,
            "--model.init_args.rollout.num_samples=2",
            "--model.init_args.rollout.max_new_tokens=8",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path}",
        ]
    )
    (run,) = [p.parent for p in tmp_path.glob("**/metrics.csv")]
    assert "val/maj@1" in (run / "metrics.csv").read_text().splitlines()[0]  # the logger's own scalars
    assert {p.name for p in (run / "text").iterdir()} == {"rollout_samples-step0.md", "val_greedy_samples-step2.md"}
    assert "| question | response | final reward |" in (run / "text" / "rollout_samples-step0.md").read_text()
    (histogram,) = [json.loads(line) for line in (run / "histograms.jsonl").read_text().splitlines()]
    assert histogram["tag"] == "val/response_length" and histogram["count"] == 4 * 2  # 2 samples each
    curves = (run / "by_samples_drawn.csv").read_text().splitlines()
    assert curves[0] == "tag,samples_drawn,value" and curves[1].startswith("by_samples_drawn/val/maj@1,32,")


@pytest.mark.slow
def test_a_run_with_a_w_and_b_like_logger_keeps_everything_in_its_own_directory(tmp_path):
    # metrics.json, the predictions, config.yaml and the export went to the save_dir every run shares, the
    # checkpoints to save_dir/name/version; a second run there was refused as a fresh fit over the first.
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])
    logger = ["--trainer.logger=tests.test_run_logs.SharedDirectoryLogger", f"--trainer.logger.save_dir={tmp_path}"]
    for version in ("run-a", "run-b"):
        run_args = [*TINY_RUN, "--trainer.max_steps=1", *logger, f"--trainer.logger.version={version}"]
        main(["fit", "--config", sft, *run_args])
        run = tmp_path / "project" / version
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "policy" / "config.json").is_file()
        assert (run / "config.yaml").is_file() and (run / "predictions" / "val-step1.jsonl").is_file()
        assert [e["stage"] for e in json.loads((run / "metrics.json").read_text())][-1] == "fit_end"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_checkpoints_are_saved_through_staging_and_over_the_same_name():
    """A resumed run that saved a best checkpoint again wrote it beside the first as "-v1", the first never
    deleted; and Lightning's ModelCheckpoint wrote a checkpoint over the previous one (StagedCheckpoint)."""
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])

    class BuildAndStop(LitReasonCLI):
        def _run_subcommand(self, subcommand: str) -> None:
            pass

    cli = BuildAndStop(args=["fit", "--config", sft, "--trainer.logger=false"])
    assert cli.config["fit"]["checkpoint"]["enable_version_counter"] is False
    assert cli.config["fit"]["last_checkpoint"]["enable_version_counter"] is False
    callbacks = cli.trainer.callbacks
    assert sum(isinstance(callback, StagedCheckpoint) for callback in callbacks) == 2  # the best and the last


def test_a_checkpoints_saved_options_do_not_override_the_command_line(tmp_path):
    checkpoint = tmp_path / "saved.ckpt"
    torch.save({"hyper_parameters": {"evaluation": {"num_samples": 8}, "text_samples": 1}}, checkpoint)

    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])
    options = ["--model.init_args.evaluation.num_samples=96", f"--ckpt_path={checkpoint}"]
    cli = ParseAndStop(args=["validate", "--config", sft, *options])
    model = cli.config["validate"]["model"]["init_args"]
    assert model["evaluation"]["num_samples"] == 96 and model["text_samples"] == 4


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model.init_args.evaluation.temperature=-1", "sampling settings (rollout or evaluation): temperature -1.0"),
        ("--data.eval_batch_size=0", "data.eval_batch_size must be at least 1, got 0"),
        ("--trainer.devices=0", "trainer: `Trainer(devices='0')` value is not a valid input"),
    ],
)
def test_a_setting_the_classes_refuse_ends_the_command_with_its_message_alone(option, message, capsys):
    # It came inside an 80-line traceback, under a dump of the whole model config.
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])

    class BuildAndStop(LitReasonCLI):
        def _run_subcommand(self, subcommand: str) -> None:
            pass

    with pytest.raises(SystemExit) as stopped:
        BuildAndStop(args=["fit", "--config", sft, "--model.init_args.policy.name_or_path=micro", option])
    assert stopped.value.code == 2
    assert f"lit-reason fit: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_checkpoint_path_that_names_no_checkpoint_stops_before_anything_is_built(tmp_path, subcommand, capsys):
    # Lightning found out after building the models (and training a warm start first), in a traceback.
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])
    for path, what in ((tmp_path / "nope.ckpt", "no such file"), (tmp_path, "a folder that is no sharded checkpoint")):
        with pytest.raises(SystemExit):
            ParseAndStop(args=[subcommand, "--config", sft, f"--ckpt_path={path}"])
        assert f"--ckpt_path {path}: {what}" in capsys.readouterr().err


def test_a_checkpoint_of_another_algorithm_is_refused_by_class_name(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "lit_reason.SFT"}, "state_dict": {"w": torch.ones(2)}}, checkpoint)
    with pytest.raises(ValueError, match=r"is a checkpoint of lit_reason\.SFT, and this fit trains lit_reason\.GRPO"):
        refuse_another_algorithms_checkpoint(
            str(checkpoint), read_checkpoint_record(str(checkpoint)), "lit_reason.GRPO"
        )
    refuse_another_algorithms_checkpoint(
        str(checkpoint), read_checkpoint_record(str(checkpoint)), "lit_reason.algorithms.SFT"
    )  # the same class
    torch.save({"hyper_parameters": {}}, checkpoint)  # not saved by this CLI: nothing to compare
    refuse_another_algorithms_checkpoint(str(checkpoint), read_checkpoint_record(str(checkpoint)), "lit_reason.GRPO")
    # A sharded (FSDP2) checkpoint is a folder, its hyperparameters in meta.pt: it was not checked.
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    torch.save({"hyper_parameters": {"_class_path": "lit_reason.SFT"}}, sharded / "meta.pt")
    with pytest.raises(ValueError, match=r"is a checkpoint of lit_reason\.SFT, and this fit trains lit_reason\.GRPO"):
        refuse_another_algorithms_checkpoint(str(sharded), read_checkpoint_record(str(sharded)), "lit_reason.GRPO")
    refuse_another_algorithms_checkpoint(
        str(tmp_path / "missing.ckpt"), read_checkpoint_record(str(tmp_path / "missing.ckpt")), "lit_reason.GRPO"
    )  # Lightning says so


def test_a_resumed_fit_loads_the_warm_start_its_checkpoint_recorded(tmp_path, monkeypatch):
    # A config edited (or lit-reason updated) between a crash and the resume keyed another warm start: the
    # resume trained it first, and went on with another reference and other restarts than the run's first part.
    monkeypatch.setenv("LIT_REASON_CACHE", str(tmp_path / "cache"))
    warm_start_config, started_from = tmp_path / "sft.yaml", tmp_path / "cache" / "warm_start" / "sft-earlier"
    warm_start_config.write_text("seed_everything: 1\n")  # edited since: its key is no longer that directory
    started_from.mkdir(parents=True)
    (started_from / "config.json").write_text("{}")
    name = f"config:{warm_start_config}"
    checkpoint = tmp_path / "last.ckpt"
    torch.save(
        {"hyper_parameters": {"_class_path": "lit_reason.SFT"}, WARM_STARTS: {name: str(started_from)}}, checkpoint
    )
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])
    arguments = ["fit", "--config", sft, f"--model.init_args.policy.name_or_path={name}", f"--ckpt_path={checkpoint}"]
    with pytest.warns(UserWarning, match="resuming with the warm start this run started from"):
        cli = ParseAndStop(args=arguments)
    assert cli.config["fit"]["model"]["init_args"]["policy"]["name_or_path"] == str(started_from)
    # Where it is still the config's, or no longer cached, the config's name stays (the latter with a warning).
    started_from.rename(tmp_path / "cleared")
    with pytest.warns(UserWarning, match="is no longer cached, so config:.* is resolved again"):
        cli = ParseAndStop(args=arguments)
    assert cli.config["fit"]["model"]["init_args"]["policy"]["name_or_path"] == name


def test_checkpoints_record_where_their_warm_starts_resolved_to(tmp_path):
    module = SimpleNamespace(
        policy_spec=PolicySpec(name_or_path=f"config:{tmp_path / 'sft.yaml'}"),
        base_policy=PolicySpec(name_or_path="config:unresolved.yaml"),  # not asked yet: not recorded
        other=PolicySpec(name_or_path="tiny"),
    )
    module.policy_spec._resolved = str(tmp_path / "warm")
    module.other.resolved()
    checkpoint: dict = {}
    RecordWarmStarts().on_save_checkpoint(None, module, checkpoint)
    assert checkpoint[WARM_STARTS] == {f"config:{tmp_path / 'sft.yaml'}": str(tmp_path / "warm")}
    # Resumed with the recorded directory as its policy, a run records the warm start on: a second crash resumed
    # with the same command loads it too (its checkpoints recorded nothing, and the second resume trained another).
    resumed, callback = SimpleNamespace(policy_spec=PolicySpec(name_or_path=str(tmp_path / "warm"))), RecordWarmStarts()
    callback.on_load_checkpoint(None, resumed, checkpoint)
    again: dict = {}
    callback.on_save_checkpoint(None, resumed, again)
    assert again[WARM_STARTS] == checkpoint[WARM_STARTS]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_checkpoints_load_weights_only_unless_asked_otherwise(subcommand):
    # Lightning loads a --ckpt_path URL with weights_only=False when the option is left unset: a checkpoint
    # from the network could run code on loading.
    sft = str(CONFIGS[[c.name for c in CONFIGS].index("sft.yaml")])
    remote = "--ckpt_path=https://example.com/last.ckpt"
    assert ParseAndStop(args=[subcommand, "--config", sft, remote]).config[subcommand].weights_only is True
    trusted = ParseAndStop(args=[subcommand, "--config", sft, remote, "--weights_only=false"])
    assert trusted.config[subcommand].weights_only is False


def scalar_tags(event_file: Path) -> list[str]:
    return EventAccumulator(str(event_file)).Reload().Tags()["scalars"]


@pytest.mark.slow
def test_a_refused_resume_keeps_the_run_s_config_and_another_algorithm_s_checkpoint_is_refused(tmp_path):
    # A resumed attempt overwrote the run's config.yaml before its checkpoint was checked (the study and validate
    # --config read it); and an SFT checkpoint given to Expert Iteration's config resumed silently.
    sft, ei, grpo = (str(CONFIGS[[c.name for c in CONFIGS].index(n)]) for n in ("sft.yaml", "ei.yaml", "grpo.yaml"))
    logger = [f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=run"]
    run = [*TINY_RUN, "--trainer.max_steps=1", "--validate_before_fit=false", "--seed_everything=0", *logger]
    main(["fit", "--config", sft, *run])
    run_dir = tmp_path / "run" / "version_0"
    config = (run_dir / "config.yaml").read_text()
    resume = [*run, f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    with pytest.raises(ValueError, match="resume with --seed_everything=0$"):
        main(["fit", "--config", sft, *resume, "--seed_everything=1"])
    # Refused before anything is built: with GRPO's reference, Lightning's own error listed missing weights.
    for config_file, algorithm in ((ei, "ExpertIteration"), (grpo, "GRPO")):
        with pytest.raises(ValueError, match=rf"a checkpoint of lit_reason\.SFT, and this fit trains .*\.{algorithm}"):
            main(["fit", "--config", config_file, *resume, "--seed_everything=1"])
    assert (run_dir / "config.yaml").read_text() == config
    assert "seed_everything: 1" in (run_dir / "config-resume-1.yaml").read_text()
    assert not (run_dir / "config-resume-2.yaml").exists()

    # A test of the checkpoint logged into the run's directory is recorded at the checkpoint's step (Lightning
    # restores no loop state outside a fit: it was step 0), its config beside the run's.
    in_run_dir = "--trainer.logger.init_args.version=version_0"
    main(["test", "--config", sft, *resume, in_run_dir])
    (*_, fit_end, tested) = json.loads((run_dir / "metrics.json").read_text())
    assert (fit_end["stage"], fit_end["step"]) == ("fit_end", 1)  # where the fit ended: what the study checks
    assert (tested["stage"], tested["step"]) == ("test", 1) and (run_dir / "predictions" / "test-step1.jsonl").is_file()
    # Lightning's own scalars too (it logged them at step 0).
    (test_events,) = [e for e in run_dir.glob("events.out.tfevents.*") if "test/maj@1" in scalar_tags(e)]
    assert [point.step for point in EventAccumulator(str(test_events)).Reload().Scalars("test/maj@1")] == [1]
    assert (run_dir / "config-test-1.yaml").is_file() and (run_dir / "config.yaml").read_text() == config
    # Nor while another process writes the run (a resumed fit under way): its records would be lost.
    running = RunLock(run_dir)
    running.acquire()
    with pytest.raises(RunDirectoryInUse, match=f"{run_dir} is being written by another process"):
        main(["test", "--config", sft, *resume, in_run_dir])
    running.release()
    assert not (run_dir / "config-test-2.yaml").exists()
    # A fresh fit there would write over the run's checkpoints and add to its metrics.json.
    with pytest.raises(FileExistsError, match=r"holds a run \(its config.yaml\): a fresh fit there"):
        main(["fit", "--config", sft, *run, in_run_dir])
