"""Callbacks the CLI adds to every run."""

from __future__ import annotations

import difflib
import math
import shutil
import sys
from itertools import count
from pathlib import Path
from typing import Any, Literal
from weakref import proxy

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lit_reason.conditioning import Conditioning
from lit_reason.distributed import StopAllRanksOnFailure
from lit_reason.evaluation import drop_outputs_after
from lit_reason.files import RunDirectoryInUse, RunLock, remove_path, replace_path
from lit_reason.model_card import CARD_FILE, ModelCard
from lit_reason.policy import PolicySpec
from lit_reason.run_logs import run_directory
from lit_reason.warm_start import CONFIG_PREFIX, is_exported


class ExportPolicy(Callback):
    """Export the policy (Hugging Face format) each time a monitored validation metric improves during
    ``fit``, and at the end of ``fit`` if it never did, so every run leaves a loadable policy.

    Args:
        monitor: the metric to watch (a ``val/`` metric that a validation during ``fit`` does not log stops the
            run, naming those it logs); null exports the latest policy after every validation.
        mode: ``max`` or ``min``.
        dirpath: where to write; default ``<log_dir>/policy``.
    """

    def __init__(
        self, monitor: str | None = "val/maj@1", mode: Literal["max", "min"] = "max", dirpath: str | None = None
    ) -> None:
        self.monitor = monitor
        self.mode = mode
        self.dirpath = dirpath
        self.best: float | None = None
        self.exported = False

    def target(self, trainer: Trainer) -> Path:
        return Path(self.dirpath or run_directory(trainer) / "policy")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # An export replaces its folder whole: one that holds anything but an earlier export (or nothing) would
        # be lost, the user's files with it. Checked before training, on every rank (run_directory broadcasts).
        target = self.target(trainer)
        if stage == "fit" and trainer.strategy.broadcast(trainer.is_global_zero and not _replaceable(target)):
            raise ValueError(
                f"export.dirpath: {target} holds files that are not an exported policy, and the export would "
                "replace the folder with them; pick another --export.dirpath or remove the folder"
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if self.monitor is None:
            self._export(trainer, pl_module, f"latest policy at step {trainer.global_step}")
            return
        # Rank 0's value decides on every rank: an export holds collectives, and a metric logged without
        # sync_dist (a train/ one) differs between ranks.
        value = trainer.callback_metrics.get(self.monitor)
        value = trainer.strategy.broadcast(None if value is None else float(value))
        if value is None:
            if self.monitor.startswith("val/"):  # misspelt: no export would ever be the best one, silently
                raise self._monitor_not_logged(trainer)
            return  # a training metric (round/*): logged at the round's end, after its validation
        if math.isnan(value):  # undefined this time (an AUROC of one class): neither better nor worse
            return
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
            self._export(trainer, pl_module, f"{self.monitor}={value:.4f} at step {trainer.global_step}")

    def _monitor_not_logged(self, trainer: Trainer) -> ValueError:
        logged = sorted(name for name in trainer.callback_metrics if name.startswith("val/"))
        near = difflib.get_close_matches(self.monitor, logged, n=1)
        return ValueError(
            f"export.monitor {self.monitor!r}: the validation logged no such metric"
            + (f" (did you mean {near[0]!r}?)" if near else "")
            + f"; it logged {', '.join(logged) or 'no val/ metric'}. Set --export.monitor to one of them, or to null "
            "to export the latest policy after every validation"
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A run resumed into a new log directory restores ``exported`` but finds no policy there.
        missing = trainer.strategy.broadcast(not is_exported(self.target(trainer)))
        if not self.exported or missing:
            self._export(trainer, pl_module, "final policy (no validation improved in this run)")

    def _export(self, trainer: Trainer, pl_module: LightningModule, why: str) -> None:
        """Write the export beside its place and move it in when complete: a crash mid-export leaves the
        previous export intact."""
        path = self.target(trainer)
        staging = path.with_name(f".{path.name}.staging")
        if trainer.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
        card = model_card(trainer, pl_module, why).markdown()  # every rank: the run's directory is a broadcast
        pl_module.export_policy(staging)  # every rank: sharded weights are gathered
        if trainer.is_global_zero:
            (staging / CARD_FILE).write_text(card, encoding="utf-8")
            replace_path(staging, path)
        self.exported = True
        rank_zero_info(f"exported policy to {path}: {why}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "exported": self.exported}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        best = state_dict["best"]
        # An earlier lit-reason kept a NaN (undefined) first value as the best, which no later value beat.
        self.best = None if best is not None and math.isnan(best) else best
        self.exported = state_dict["exported"]


def _replaceable(target: Path) -> bool:
    """Whether an export may replace ``target``: missing, an empty folder, or an export (an earlier one)."""
    return not target.exists() or (target.is_dir() and (is_exported(target) or not any(target.iterdir())))


class SaveRunConfig(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` (the command's config as ``config.yaml`` in its log directory), except
    that it never overwrites another command's ``config.yaml`` (which the study and ``validate --config`` read).
    In a directory that holds a run (its ``config.yaml``):

    - a fit resumed from a checkpoint, or a test, writes its config beside the run's, as
      ``config-<resume|test>-<n>.yaml`` (a resumed attempt's whether it is refused, by other seeds or another
      algorithm, or goes on);
    - a fresh fit is refused: it would write over the run's checkpoints and add its results to the run's
      ``metrics.json``; so is a validate: it would replace the run's own validation records at the checkpoint's
      step (``predictions/val-step<N>.jsonl``, the ``metrics.json`` entry the study reads).

    Without a logger the directory is the working directory, which no run owns: a config there is kept and this
    one written beside it (``config-<command>-<n>.yaml``). With one, the command holds the directory's
    ``RunLock`` until it ends: a second command into a directory that another process is writing is refused.

    Args:
        subcommand: the ``lit-reason`` command whose config this is (``fit``, ``validate``, ``test``).
        *args, **kwargs: ``SaveConfigCallback``'s.
    """

    def __init__(self, *args: Any, subcommand: str = "fit", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subcommand = subcommand
        self.run_lock: RunLock | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or not self.save_to_log_dir:
            super().setup(trainer, pl_module, stage)
            return
        log_dir = run_directory(trainer)  # every rank: a broadcast
        name_or_error = self._claim(log_dir, bool(trainer.loggers)) if trainer.is_global_zero else None
        name_or_error = trainer.strategy.broadcast(name_or_error)
        if isinstance(name_or_error, Exception):
            raise name_or_error
        self.config_filename = name_or_error
        if trainer.is_global_zero:  # as Lightning's, into the run's directory (W&B's and MLflow's are not log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            config = str(log_dir / self.config_filename)
            self.parser.save(self.config, config, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def _claim(self, log_dir: Path, logged: bool) -> str | Exception:
        """The file name this command's config is saved as, with a logger's directory locked for the command
        (``RunLock``); or why it must not run there."""
        lock = RunLock(log_dir) if logged else None
        if lock is not None:
            try:
                lock.acquire()
            except RunDirectoryInUse as error:
                return error
        name = self._config_name(log_dir, logged)
        if not name.endswith(".yaml"):
            if lock is not None:
                lock.release()
            return FileExistsError(name)
        self.run_lock = lock
        return name

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Held for the whole command: a fit's validation of the initial policy is a trainer call of its own.
        if stage == self.subcommand:
            self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()  # the command ends; Lightning calls no teardown hook after an exception

    def _release(self) -> None:
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None

    def _config_name(self, log_dir: Path, logged: bool) -> str:
        """The file name this command's config is saved as in ``log_dir`` (a logger's directory when
        ``logged``, else the working directory), or why it must not log there."""
        if not (log_dir / "config.yaml").exists():
            return "config.yaml"
        resumed = self.subcommand == "fit" and self.config.get("ckpt_path")
        if logged and self.subcommand in ("fit", "validate") and not resumed:
            last = log_dir / "checkpoints" / "last.ckpt"
            what = (
                "a fresh fit there would write over its checkpoints and mix its results into its metrics.json"
                if self.subcommand == "fit"
                else "a validate there would replace the run's own validation records at the checkpoint's step"
            )
            choices = ["log into a new version directory (--trainer.logger.init_args.version=null)", "remove it"]
            if self.subcommand == "fit" and last.exists():
                choices.insert(0, f"resume the run with --ckpt_path={last}")
            return f"{log_dir} holds a run (its config.yaml): {what}. Instead: {'; or '.join(choices)}"
        kind = "resume" if resumed else self.subcommand
        return next(name for n in count(1) if not (log_dir / (name := f"config-{kind}-{n}.yaml")).exists())


class StagedCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that writes each checkpoint beside its place (``.<name>.partial``) and moves it in
    when every rank has written it, so that a crash while saving leaves the previous checkpoint whole. Lightning
    alone writes a file through the system's temporary folder and moves it in, which across filesystems (a local
    ``/tmp``, a shared run directory) copies it over the previous one, and writes a sharded (FSDP2) checkpoint
    into the previous one's folder: a kill meanwhile left neither. Remote paths (``s3://``) and an
    ``AsyncCheckpointIO`` (whose file is written after the save returns) keep Lightning's own save."""

    @property
    def state_key(self) -> str:
        # This class itself was Lightning's ModelCheckpoint in the CLI (the best checkpoint): the state that runs
        # saved then is found under that class's name. Subclasses keep their own.
        key = super().state_key
        if type(self) is StagedCheckpoint:
            key = key.replace(StagedCheckpoint.__qualname__, ModelCheckpoint.__qualname__, 1)
        return key

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if "://" in str(filepath) or isinstance(trainer.strategy.checkpoint_io, AsyncCheckpointIO):
            super()._save_checkpoint(trainer, filepath)
            return
        target = Path(filepath).expanduser()  # as fsspec, which writes the checkpoint, reads "~"
        staging = target.with_name(f".{target.name}.partial")
        if trainer.is_global_zero:
            remove_path(staging)  # a crashed save's: a sharded one would write into it
        trainer.strategy.barrier("StagedCheckpoint: staging cleared")
        trainer.save_checkpoint(staging, self.save_weights_only)  # every rank's part, then a barrier
        if trainer.is_global_zero:
            replace_path(staging, target)
        trainer.strategy.barrier("StagedCheckpoint: moved in")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


class LastCheckpoint(StagedCheckpoint):
    """The ``ModelCheckpoint`` that keeps ``last.ckpt``, the state a crashed run resumes from. A step save
    (``every_n_train_steps``) due on a batch that a validation follows waits until that validation has run (on a
    round's last batch, until the round's end): Lightning validates after the batch, and a run resumed from a
    checkpoint taken before would skip that validation (its metrics, predictions and export lost)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hold_until: Literal["validation", "round_end"] | None = None  # while a batch's save must wait
        self._held: Literal["validation", "round_end"] | None = None  # a save waiting

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._train_time_interval is not None and not pl_module.automatic_optimization:
            raise ValueError(
                f"last_checkpoint.train_time_interval: {type(pl_module).__name__} optimizes manually, and "
                "Lightning's ModelCheckpoint then never saves by time: use last_checkpoint.every_n_train_steps"
            )
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.batch_progress.is_last_batch:
            self._hold_until = "round_end"
        elif epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):  # Lightning's decision, made again
            self._hold_until = "validation"
        try:
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        finally:
            self._hold_until = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._held == "validation" and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._save_held(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._held is not None:
            self._save_held(trainer)

    def _save_held(self, trainer: Trainer) -> None:
        self._held = None
        if not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            super()._save_topk_checkpoint(trainer, candidates)
            super()._save_last_checkpoint(trainer, candidates)

    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        if not self._held_back():
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        if not self._held_back():
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def _held_back(self) -> bool:
        """Whether a save asked for now must wait; if so, it is noted to be taken when the wait ends."""
        if self._hold_until is None:
            return False
        self._held = self._hold_until
        return True


class ForgetOutputsAfterCheckpoint(Callback):
    """When a fit resumes from a checkpoint, forget the evaluation outputs the interrupted attempt wrote after
    it (``metrics.json`` entries, prediction files; ``drop_outputs_after``): the resumed fit writes them again."""

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # validate / test from a checkpoint leave the run's outputs be
            drop_outputs_after(trainer, checkpoint["epoch"], checkpoint["global_step"])


WARM_STARTS = "warm_starts"  # a checkpoint's record of where each ``config:`` policy of its run resolved to


class RecordWarmStarts(Callback):
    """Records in every checkpoint the directory each ``config:`` warm start of the run resolved to
    (``WARM_STARTS``: ``name_or_path`` -> directory), so that a resumed fit loads those
    (``cli.resume_with_recorded_warm_starts``), not others that a changed config or lit-reason now names."""

    def __init__(self) -> None:
        self.resumed: dict[str, str] = {}  # the checkpoint's record a resumed fit started from: kept on

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.resumed = dict(checkpoint.get(WARM_STARTS, {}))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        specs = [value for value in vars(pl_module).values() if isinstance(value, PolicySpec)]
        checkpoint[WARM_STARTS] = self.resumed | {
            spec.name_or_path: spec.resolution
            for spec in specs
            if spec.name_or_path.startswith(CONFIG_PREFIX) and spec.resolution is not None
        }


class FailFast(Callback):
    """When one rank raises, every rank stops within seconds and says which rank failed and why
    (``StopAllRanksOnFailure``), instead of waiting in a collective until the process group's timeout."""

    def __init__(self) -> None:
        self.watcher: StopAllRanksOnFailure | None = None  # made in setup: a spawn launcher pickles callbacks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.watcher = StopAllRanksOnFailure()
        self.watcher.start()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.watcher is not None:
            self.watcher.report(exception)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None


def model_card(trainer: Trainer, pl_module: LightningModule, exported_because: str) -> ModelCard:
    """The card of an export of ``pl_module`` (a ``ReasoningModule``) written now."""
    task = trainer.datamodule.task
    example = (task.problems("validation") or task.problems("train"))[0]
    module_doc = sys.modules[type(pl_module).__module__].__doc__ or ""
    sampling = pl_module.evaluation
    reward_model = pl_module.trains_reward_model
    conditioning = Conditioning() if reward_model else pl_module.export_conditioning()
    guidance = conditioning.guidance if conditioning.guided else None
    return ModelCard(
        title=run_directory(trainer).name,
        method=type(pl_module).__name__,
        method_summary=" ".join(module_doc.strip().split("\n\n")[0].split()),
        base_model=pl_module.policy_spec.name_or_path,
        task=f"{type(task).__name__} (prompt_style {task.prompt_style})",
        exported_because=exported_because,
        step=trainer.global_step,
        samples_drawn=trainer.datamodule.samples_drawn,
        metrics={name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")},
        example_prompt=task.prompt(example, pl_module.tokenizer),
        response_prefix=conditioning.response_prefix,
        guidance_scale=guidance.scale if guidance else 1.0,
        negative_prefix=guidance.negative_prefix if guidance else "",
        stop_strings=task.stop_strings,
        sampling={
            "num_samples": sampling.num_samples,
            "temperature": sampling.temperature,
            "max_new_tokens": sampling.max_new_tokens,
        },
        config_file=str(run_directory(trainer) / "config.yaml"),
        kind="reward model" if reward_model else "policy",
    )
