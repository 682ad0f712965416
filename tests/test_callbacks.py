"""The export callback: exports are moved into place only when complete, and every fit leaves a policy; a
resumed fit forgets the outputs written after its checkpoint; ``last.ckpt`` is never taken before a validation
that follows its step."""

import json
import pickle
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from lit_reason.algorithms import GRPO, SFT
from lit_reason.callbacks import (
    ExportPolicy,
    FailFast,
    ForgetOutputsAfterCheckpoint,
    LastCheckpoint,
    SaveRunConfig,
    StagedCheckpoint,
)
from lit_reason.conditioning import Conditioning, Guidance
from lit_reason.data import RolloutDataModule
from lit_reason.files import RunDirectoryInUse, RunLock
from lit_reason.policy import PolicySpec
from lit_reason.sampling import SamplingConfig
from lit_reason.tasks import Arithmetic, JSONLTask
from tests.helpers.fakes import logger_into
from tests.helpers.trainers import quiet_trainer


class FakeModule:
    """Writes an export the way a module's ``export_policy`` does; ``fail_after_weights`` stops it half-way."""

    def __init__(self, version: str, fail_after_weights: bool = False) -> None:
        self.version, self.fail_after_weights = version, fail_after_weights

    def export_policy(self, path) -> None:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text(self.version)
        if self.fail_after_weights:
            raise RuntimeError("killed mid-export")
        (path / "config.json").write_text("{}")

    # What the model card reads.
    trains_reward_model = False
    tokenizer = None
    policy_spec = PolicySpec(name_or_path="tiny")
    evaluation = SamplingConfig(num_samples=2, temperature=0.7, max_new_tokens=16)

    def export_conditioning(self) -> Conditioning:
        return Conditioning(response_prefix="[GOOD]", guidance=Guidance("[BAD]", 2.0))  # RCRL's export, guided


def fake_trainer(log_dir) -> SimpleNamespace:
    return SimpleNamespace(
        is_global_zero=True,
        strategy=SimpleNamespace(broadcast=lambda x: x),
        datamodule=SimpleNamespace(task=Arithmetic(train_size=20, validation_size=4, test_size=4), samples_drawn=64),
        global_step=3,
        callback_metrics={"val/maj@1": 0.5, "train/loss": 1.0},
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        loggers=[logger_into(log_dir)],
        default_root_dir=str(log_dir),  # without a logger
    )


def test_a_failed_export_leaves_the_previous_one_intact(tmp_path):
    callback, trainer = ExportPolicy(), fake_trainer(tmp_path)
    callback._export(trainer, FakeModule("first"), "test")
    with pytest.raises(RuntimeError, match="killed mid-export"):
        callback._export(trainer, FakeModule("second", fail_after_weights=True), "test")
    assert (tmp_path / "policy" / "model.safetensors").read_text() == "first"
    assert (tmp_path / "policy" / "config.json").is_file()
    callback._export(trainer, FakeModule("third"), "test")  # the half-written staging is cleared first
    assert (tmp_path / "policy" / "model.safetensors").read_text() == "third"
    card = (tmp_path / "policy" / "README.md").read_text()  # with its card
    assert "by `FakeModule` from `tiny`" in card and "Exported at optimizer step 3, after 64" in card
    assert "| val/maj@1 | 0.5000 |" in card and "train/loss" not in card and "\n[GOOD]\n```" in card
    assert "guidance of scale 2 against the prompt behind `[BAD]`" in card and "guidance_scale=2.0" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_a_run_resumed_into_a_new_directory_still_leaves_a_policy(tmp_path):
    callback = ExportPolicy()
    callback.load_state_dict({"best": 0.9, "exported": True})  # restored from a checkpoint of the earlier run
    callback.on_fit_end(fake_trainer(tmp_path / "version_1"), FakeModule("resumed"))
    assert (tmp_path / "version_1" / "policy" / "model.safetensors").read_text() == "resumed"


def test_an_export_never_replaces_a_folder_that_holds_something_else(tmp_path):
    # --export.dirpath=DIR (or ./policy without a logger) renamed DIR aside and deleted it, the user's files too.
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    callback, trainer = ExportPolicy(dirpath=str(target)), fake_trainer(tmp_path)
    with pytest.raises(ValueError, match=rf"export\.dirpath: {target} holds files that are not an exported policy.*"
                       "pick another --export.dirpath or remove the folder"):  # fmt: skip
        callback.setup(trainer, FakeModule("first"), "fit")
    assert (target / "notes.txt").read_text() == "mine"
    (target / "notes.txt").unlink()  # an empty folder, then an earlier export (a resumed run's): replaced
    for version in ("first", "second"):
        callback.setup(trainer, FakeModule(version), "fit")
        callback._export(trainer, FakeModule(version), "test")
        assert (target / "model.safetensors").read_text() == version


def test_the_card_of_a_task_without_validation_questions_shows_a_training_prompt(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "What is 1 + 1?", "answer": 2}\n')
    trainer = fake_trainer(tmp_path)
    trainer.datamodule.task = JSONLTask(str(train), validation_size=0)
    ExportPolicy()._export(trainer, FakeModule("only"), "test")
    assert "What is 1 + 1?" in (tmp_path / "policy" / "README.md").read_text()


def test_without_a_monitor_every_validation_exports_the_latest_policy(tmp_path):
    callback, trainer = ExportPolicy(monitor=None), fake_trainer(tmp_path)
    for version in ("first", "second"):  # the metric does not improve: exported all the same
        callback.on_validation_end(trainer, FakeModule(version))
        assert (tmp_path / "policy" / "model.safetensors").read_text() == version


def test_an_undefined_metric_neither_improves_nor_blocks_later_improvements(tmp_path):
    # An ORM's AUROC is NaN while all its samples are correct; as the first best it made every later value lose.
    callback, trainer = ExportPolicy(monitor="val/orm_auroc"), fake_trainer(tmp_path)
    trainer.callback_metrics = {"val/orm_auroc": float("nan")}
    callback.on_validation_end(trainer, FakeModule("undefined"))
    assert callback.best is None and not (tmp_path / "policy").exists()
    trainer.callback_metrics = {"val/orm_auroc": 0.7}
    callback.on_validation_end(trainer, FakeModule("defined"))
    assert callback.best == 0.7 and (tmp_path / "policy" / "model.safetensors").read_text() == "defined"
    callback.load_state_dict({"best": float("nan"), "exported": True})  # what an earlier lit-reason checkpointed
    assert callback.best is None


def _export_decisions_on_rank(rank: int, world_size: int) -> tuple[bool, float]:
    import torch.distributed as dist

    class Broadcasting:  # Lightning's DDPStrategy.broadcast
        def broadcast(self, obj, src=0):
            box = [obj]
            dist.broadcast_object_list(box, src)
            return box[0]

    class Recorded(ExportPolicy):
        def _export(self, trainer, pl_module, why):  # the real one holds collectives: every rank must enter it
            self.exported = True

    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        callback_metrics={"train/loss": torch.tensor([0.5, 0.7][rank])},  # logged without sync_dist: per rank
        strategy=Broadcasting(),
        global_step=10,
    )
    export = Recorded(monitor="train/loss", mode="min")
    export.best = 0.6
    export.on_validation_end(trainer, None)
    return export.exported, export.best


@pytest.mark.slow
def test_every_rank_takes_rank_zero_s_export_decision():
    # A monitor no rank syncs (a train/ metric) exported on rank 0 alone: it waited in the export's collectives
    # while the other rank went on (a hang, or NCCL pairing mismatched collectives).
    from tests.helpers.distributed import run_in_processes

    assert run_in_processes(_export_decisions_on_rank) == [(True, 0.5), (True, 0.5)]


def test_a_monitor_that_a_fitting_validation_does_not_log_stops_the_run_naming_the_logged_ones(tmp_path):
    # A misspelt --export.monitor was ignored: no best export, and a card saying no validation improved.
    callback, trainer = ExportPolicy(monitor="val/maj1"), fake_trainer(tmp_path)
    trainer.sanity_checking = True  # Lightning's sanity check and a validate / test command export nothing
    callback.on_validation_end(trainer, FakeModule("sanity check"))
    trainer.sanity_checking, trainer.state.fn = False, TrainerFn.VALIDATING
    callback.on_validation_end(trainer, FakeModule("validate"))
    trainer.state.fn = TrainerFn.FITTING
    with pytest.raises(ValueError, match=r"export.monitor 'val/maj1': .*did you mean 'val/maj@1'.*logged val/maj@1\. "
                       "Set --export.monitor to one of them, or to null"):  # fmt: skip
        callback.on_validation_end(trainer, FakeModule("fit"))
    assert not (tmp_path / "policy").exists()
    # A training metric (round/*) is logged at the round's end, after the round's validation: not there yet.
    ExportPolicy(monitor="round/correct_fraction").on_validation_end(trainer, FakeModule("fit"))
    assert not (tmp_path / "policy").exists()


def test_a_real_fit_stops_at_its_first_validation_when_the_monitor_is_not_logged(tmp_path):
    export = ExportPolicy(monitor="val/rerank@2", dirpath=str(tmp_path / "policy"))  # only logged with an ORM
    with pytest.raises(ValueError, match=r"'val/rerank@2': .*logged val/answered, .*val/maj@1, .*val/pass@2"):
        fit_one_round("sft", tmp_path, export)
    assert not (tmp_path / "policy").exists()


def test_a_resumed_fit_forgets_the_evaluations_written_after_its_checkpoint(tmp_path):
    # Epoch 2's round had nothing to train on: it validated at epoch 1's step.
    steps = {0: 2, 1: 4, 2: 4, 3: 6}
    entries = [{"stage": "val", "step": step, "epoch": epoch, "metrics": {}} for epoch, step in steps.items()]
    (tmp_path / "metrics.json").write_text(json.dumps(entries))
    (tmp_path / "predictions").mkdir()
    for step in (2, 4, 6):
        (tmp_path / "predictions" / f"val-step{step}.jsonl").write_text("{}\n")
    checkpoint = {"epoch": 1, "global_step": 4}
    trainer = fake_trainer(tmp_path)
    trainer.state.fn = TrainerFn.VALIDATING  # lit-reason validate --ckpt_path: the run's outputs stay
    ForgetOutputsAfterCheckpoint().on_load_checkpoint(trainer, None, checkpoint)
    assert json.loads((tmp_path / "metrics.json").read_text()) == entries
    trainer.state.fn = TrainerFn.FITTING
    ForgetOutputsAfterCheckpoint().on_load_checkpoint(trainer, None, checkpoint)
    assert json.loads((tmp_path / "metrics.json").read_text()) == entries[:2]
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["val-step2.jsonl", "val-step4.jsonl"]
    # Files written before entries had an epoch: by step.
    legacy = [{"stage": "val", "step": step, "metrics": {}} for step in (2, 4, 6)]
    (tmp_path / "metrics.json").write_text(json.dumps(legacy))
    ForgetOutputsAfterCheckpoint().on_load_checkpoint(trainer, None, checkpoint)
    assert json.loads((tmp_path / "metrics.json").read_text()) == legacy[:2]


def test_a_fit_resumed_mid_round_forgets_the_round_s_later_evaluations(tmp_path):
    # Validations every 5 steps (val_check_interval) inside round 0; the checkpoint was taken at step 3.
    entries = [{"stage": "val", "step": step, "epoch": 0, "metrics": {}} for step in (0, 5, 10)]
    (tmp_path / "metrics.json").write_text(json.dumps(entries))
    (tmp_path / "predictions").mkdir()
    for step in (0, 5, 10):
        (tmp_path / "predictions" / f"val-step{step}.jsonl").write_text("{}\n")
    trainer = fake_trainer(tmp_path)
    trainer.state.fn = TrainerFn.FITTING
    ForgetOutputsAfterCheckpoint().on_load_checkpoint(trainer, None, {"epoch": 0, "global_step": 3})
    assert json.loads((tmp_path / "metrics.json").read_text()) == entries[:1]
    assert [p.name for p in (tmp_path / "predictions").iterdir()] == ["val-step0.jsonl"]


def test_a_run_s_config_is_kept_when_another_command_logs_into_its_directory(tmp_path):
    # A resumed attempt (refused or not), a validate or test logged into the run's directory, and a fresh fit
    # there all overwrote config.yaml, which the study and validate --config read; the fresh fit also wrote over
    # the run's checkpoints and added its results to the run's metrics.json, and the validate replaced the run's
    # own validation records at the checkpoint's step.
    (tmp_path / "config.yaml").write_text("the run's\n")
    saved = []

    class Parser:
        def save(self, config, path, **kwargs):
            saved.append(Path(path).name)
            Path(path).write_text(str(config))

    def save(subcommand: str, ckpt_path: str | None, logged: bool = True) -> None:
        callback = SaveRunConfig(Parser(), {"ckpt_path": ckpt_path}, overwrite=True, subcommand=subcommand)
        trainer = fake_trainer(tmp_path)
        trainer.loggers = trainer.loggers if logged else []
        callback.setup(trainer, None, subcommand)
        callback.teardown(trainer, None, subcommand)  # the command's end: its lock on the directory released

    for _ in range(2):
        save("fit", "last.ckpt")
    save("test", "last.ckpt")
    assert saved == ["config-resume-1.yaml", "config-resume-2.yaml", "config-test-1.yaml"]
    assert (tmp_path / "config.yaml").read_text() == "the run's\n"
    fresh_fit = r"holds a run \(its config.yaml\): a fresh fit there .* Instead: log into a new version directory"
    with pytest.raises(FileExistsError, match=fresh_fit + r" \(--trainer\.logger\.init_args\.version=null\)"):
        save("fit", None)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"Instead: resume the run with --ckpt_path=.*last\.ckpt; or log into"):
        save("fit", None)
    with pytest.raises(FileExistsError, match="a validate there would replace the run's own validation records"):
        save("validate", "last.ckpt")
    assert len(saved) == 3
    save("fit", None, logged=False)  # no logger: the working directory, which no run owns
    save("validate", None, logged=False)
    assert saved[3:] == ["config-fit-1.yaml", "config-validate-1.yaml"]
    (tmp_path / "config.yaml").unlink()
    save("fit", None)
    assert saved[-1] == "config.yaml"  # a directory without a run's config: its own


def test_the_fail_fast_callback_can_be_pickled_before_setup():
    """Lightning's spawn launchers (ddp_spawn) pickle the trainer with its callbacks."""
    assert isinstance(pickle.loads(pickle.dumps(FailFast())), FailFast)


class CountValidations(Callback):
    """Records the optimizer step of each validation of a fit, in the checkpoint's callback states."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)

    def state_dict(self) -> dict:
        return {"steps": list(self.steps)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = list(state_dict["steps"])


class CrashAfterStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


def fit_one_round(algorithm: str, tmp_path, *callbacks, last=None, ckpt_path=None, **trainer_options):
    """One round of 4 optimizer steps of a micro policy, saving ``last.ckpt`` in ``tmp_path`` every 2 steps
    (``last``: the LastCheckpoint that does): (trainer, policy weights)."""
    policy = PolicySpec(name_or_path="micro", seed=1)
    sampling = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=4)
    if algorithm == "sft":
        module = SFT(policy=policy, batch_size=4, evaluation=sampling)
    else:
        module = GRPO(policy=policy, rollout=sampling, evaluation=sampling, minibatch_size=8, ppo_epochs=1)
    data = RolloutDataModule(task=Arithmetic(train_size=32, validation_size=2, test_size=2), questions_per_round=16)
    last = last or LastCheckpoint(tmp_path, "last", every_n_train_steps=2, enable_version_counter=False)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[last, *callbacks], **trainer_options)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, torch.cat([p.detach().flatten() for p in module.policy.parameters()])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["sft", "grpo"])  # automatic and manual optimization
def test_a_step_save_due_on_a_round_s_last_batch_waits_for_the_round_s_validation(algorithm, tmp_path):
    """Taken before the validation that ends the round, ``last.ckpt`` resumed a run that never ran it again."""
    validations = CountValidations()
    saved_after = []  # (optimizer steps, validations run) at each save

    class SpiedLastCheckpoint(LastCheckpoint):
        def _save_checkpoint(self, trainer, filepath) -> None:
            saved_after.append((trainer.global_step, len(validations.steps)))
            super()._save_checkpoint(trainer, filepath)

    last = SpiedLastCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=2, enable_version_counter=False)
    trainer, _ = fit_one_round(algorithm, tmp_path, validations, last=last)
    assert trainer.global_step == 4
    assert saved_after == [(2, 0), (4, 1)]  # mid-round as asked; at the round's end after its validation
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["callbacks"]["CountValidations"] == {"steps": [4]}


@pytest.mark.slow
def test_a_run_resumed_from_a_step_save_before_a_mid_round_validation_still_runs_it(tmp_path):
    """With ``val_check_interval`` < 1 a validation follows step 2 of the round: the save due there waits for it,
    and the resumed run validates where an uninterrupted one does."""
    whole = CountValidations()
    _, uninterrupted = fit_one_round("sft", tmp_path / "whole", whole, val_check_interval=0.5)
    assert whole.steps == [2, 4]
    with pytest.raises(RuntimeError, match="crash"):
        fit_one_round("sft", tmp_path / "crashed", CountValidations(), CrashAfterStep(3), val_check_interval=0.5)
    resumed = CountValidations()
    checkpoint = tmp_path / "crashed" / "last.ckpt"
    _, weights = fit_one_round("sft", tmp_path / "resumed", resumed, ckpt_path=checkpoint, val_check_interval=0.5)
    assert resumed.steps == [2, 4] and torch.equal(weights, uninterrupted)


def test_saving_by_time_under_manual_optimization_is_refused():
    """Lightning's ModelCheckpoint never saves by time when the module optimizes manually (PPO, GRPO)."""
    last = LastCheckpoint(train_time_interval=timedelta(minutes=5))
    with pytest.raises(ValueError, match=r"train_time_interval: .* use last_checkpoint.every_n_train_steps"):
        last.setup(SimpleNamespace(), SimpleNamespace(automatic_optimization=False), "fit")


def test_a_fit_holds_its_run_s_lock_from_its_first_validation_to_its_end(tmp_path):
    # The lock was released when the validation of the initial policy (a trainer call of its own, before the fit's)
    # ended: the whole training ran unlocked, and a study could delete the step under it.
    class Parser:
        def save(self, config, path, **kwargs):
            Path(path).write_text(str(config))

    callback = SaveRunConfig(Parser(), {"ckpt_path": None}, overwrite=True, subcommand="fit")
    trainer = fake_trainer(tmp_path)
    callback.setup(trainer, None, "validate")  # lit-reason fit validates the initial policy first
    callback.teardown(trainer, None, "validate")
    callback.setup(trainer, None, "fit")
    with pytest.raises(RunDirectoryInUse):
        RunLock(tmp_path).check_free()
    callback.teardown(trainer, None, "fit")
    RunLock(tmp_path).check_free()
    refused = SaveRunConfig(Parser(), {"ckpt_path": None}, overwrite=True, subcommand="test")
    running = RunLock(tmp_path)
    running.acquire()
    with pytest.raises(RunDirectoryInUse, match="being written by another process"):
        refused.setup(trainer, None, "test")
    running.release()


def test_a_best_checkpoint_s_state_keeps_the_name_earlier_runs_saved_it_under():
    """The CLI's best checkpoint was Lightning's ModelCheckpoint: a run saved then, resumed, restored nothing into
    a StagedCheckpoint saved under its own class name (its best forgotten, the best file never deleted)."""
    options = {"monitor": "val/maj@1", "mode": "max"}
    assert StagedCheckpoint(**options).state_key == ModelCheckpoint(**options).state_key
    assert LastCheckpoint(filename="last").state_key.startswith("LastCheckpoint")


def test_checkpoints_of_a_run_logged_under_a_tilde_are_saved_there(tmp_path, monkeypatch):
    """The checkpoint folder comes from the logger's save_dir, "~" kept; fsspec, which writes the checkpoint,
    reads it as the home folder, and the move of the staged file did not (every save failed)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    monkeypatch.setenv("HOME", str(tmp_path))
    last = LastCheckpoint(None, "last", every_n_train_steps=2, enable_version_counter=False)
    fit_one_round("sft", tmp_path, last=last, limit_val_batches=0, logger=TensorBoardLogger("~/runs", name="sft"))
    assert [p.name for p in (tmp_path / "runs" / "sft" / "version_0" / "checkpoints").iterdir()] == ["last.ckpt"]


def test_an_asynchronous_checkpoint_io_keeps_lightning_s_own_save(tmp_path):
    """AsyncCheckpointIO writes the file after the save returns: there is no staged file to move in yet."""
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    fit_one_round("sft", tmp_path, limit_val_batches=0, plugins=[AsyncCheckpointIO()])
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 4
