"""The ``lit-reason`` command: Lightning's CLI (``fit``, ``validate``, ``test``) with the project's defaults.

Every run gets a TensorBoard logger, the resolved config saved beside it (``config.yaml``; a fit resumed in
its run's directory keeps the run's and writes its own as ``config-resume-<n>.yaml``), checkpoints of the best
``val/maj@1`` and of the latest epoch (``last.ckpt``, to resume from), and an exported Hugging Face policy.
``fit`` validates once before the first update, so curves start at the initial policy (Lightning's sanity
check logs nothing); resuming with ``--ckpt_path`` skips that.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lit_reason import algorithms
from lit_reason.algorithms.base import ReasoningModule
from lit_reason.callbacks import (
    WARM_STARTS,
    ExportPolicy,
    FailFast,
    ForgetOutputsAfterCheckpoint,
    LastCheckpoint,
    RecordWarmStarts,
    SaveRunConfig,
    StagedCheckpoint,
)
from lit_reason.data import RolloutDataModule
from lit_reason.files import UniqueKeyLoader, restore_interrupted_replacement
from lit_reason.rewards import import_function
from lit_reason.warm_start import (
    CONFIG_PREFIX,
    exit_with_parent,
    is_cached,
    is_exported,
    locate_config,
    warm_start_dir,
)

SHARDED_CHECKPOINT_META = "meta.pt"  # where a sharded (FSDP2) checkpoint's folder keeps all but the weights

TRAINER_DEFAULTS = {
    # RL rounds regenerate the training data from the current policy every epoch.
    "reload_dataloaders_every_n_epochs": 1,
    # The data module shards questions itself, keeping a question's samples on one rank.
    "use_distributed_sampler": False,
    # Validation before the first update replaces the sanity check, which would log nothing.
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    # Metric states made under inference mode in the validation before fit could not be updated in place
    # in fit's own validation; sampling runs under no_grad either way.
    "inference_mode": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "lit-reason"},
    },
}


# PPO options that moved into groups (PPOLoss, RewardConfig, GAE, CriticConfig): a config or flag that still
# uses the old key gets an error naming the new one.
RENAMED_MODEL_OPTIONS = {
    "clip_ratio": "loss.clip_ratio",
    "value_clip": "loss.value_clip",
    "vf_coef": "loss.vf_coef",
    "entropy_coef": "loss.entropy_coef",
    "loss_aggregation": "loss.aggregation",
    "final_reward": "reward.final",
    "dense_reward": "reward.dense",
    "dense_coef": "reward.dense_coef",
    "truncation_penalty": "reward.truncation_penalty",
    "kl_coef": "reward.kl_coef",
    "kl_estimator": "reward.kl_estimator",
    "gamma": "advantage.gamma",
    "lam": "advantage.lam",
    "whiten_advantages": "advantage.whiten",
    "critic_lr": "critic.lr",
    "value_head_std": "critic.head_std",
    "critic_warmup_rounds": "critic.warmup_rounds",
}


RENAMED_TASK_OPTIONS = {  # JSONLTask's before RecordFields
    "question_field": "fields.question",
    "answer_field": "fields.answer",
    "solution_field": "fields.solution",
}
RENAMED_OPTIONS = {"model": RENAMED_MODEL_OPTIONS, "data.task": RENAMED_TASK_OPTIONS}


def renamed_options(args: list[str]) -> list[str]:
    """One line per renamed model or task option that ``args`` (command-line arguments, ``--config`` files
    included) still use, naming where it went."""
    found = []
    for section, renames in RENAMED_OPTIONS.items():
        for source, options in _section_options(args, section):
            for key, value in options.items():
                if key in renames:
                    found.append(f"{source}: {section} option {key} is now {renames[key]}")
                elif section == "model" and key == "critic" and _is_plain_string(value):
                    found.append(f"{source}: model option critic: {value} is now critic.kind: {value}")
    return found


def _is_plain_string(value: Any) -> bool:
    return isinstance(value, str) and not value.lstrip().startswith("{")  # not a group given as JSON


def _section_options(args: list[str], section: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, {option: value}) of a class section (``model``, ``data.task``) from the config files and the
    ``--SECTION.[init_args.]KEY`` flags."""
    sources = []
    prefix = f"--{section}."
    for index, arg in enumerate(args):
        if arg in ("--config", "-c") and index + 1 < len(args):
            path = args[index + 1]
        elif arg.startswith(("--config=", "-c=")):
            path = arg.split("=", 1)[1]
        elif arg.startswith(prefix):
            key = arg.split("=", 1)[0].removeprefix(prefix).removeprefix("init_args.")
            value = arg.split("=", 1)[1] if "=" in arg else (args[index + 1] if index + 1 < len(args) else None)
            sources.append(("command line", {key: value}))
            continue
        else:
            continue
        node = _read_config(path) if Path(path).is_file() else None
        for part in section.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            sources.append((path, node.get("init_args", node) or {}))
    return sources


def _read_config(path: str) -> Any:
    """The content of a ``--config`` file; a ``ValueError`` naming the file (and the line) when it is not UTF-8
    text or not YAML."""
    raw = Path(path).read_bytes()
    try:
        return yaml.load(raw.decode("utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--config {path}: not UTF-8 text (byte {raw[error.start]:#04x} at offset {error.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"--config {where}: not valid YAML ({problem})") from None


def read_checkpoint_record(ckpt_path: str) -> dict[str, Any]:
    """A fit's checkpoint, its tensors left on disk; a sharded (FSDP2) checkpoint, a folder, keeps all but the
    weights in its ``meta.pt``. Empty where ``ckpt_path`` is neither (a URL is not read here)."""
    path = Path(ckpt_path)
    path = path / SHARDED_CHECKPOINT_META if path.is_dir() else path
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True) if path.is_file() else {}


# --ckpt_path values Lightning resolves itself rather than reading a file.
CHECKPOINT_KEYWORDS = ("best", "last", "hpc", "registry")


def refuse_a_missing_checkpoint(ckpt_path: str | None, parser) -> None:
    """Stop at once on a ``--ckpt_path`` that names no checkpoint (Lightning finds out after building the
    models, and training a warm start first): a file, or a sharded checkpoint's folder."""
    if not ckpt_path or "://" in ckpt_path or ckpt_path.split(":")[0] in CHECKPOINT_KEYWORDS:
        return
    path = Path(ckpt_path).expanduser()
    if path.is_file() or (path / SHARDED_CHECKPOINT_META).is_file():
        return
    what = "a folder that is no sharded checkpoint (no meta.pt)" if path.is_dir() else "no such file"
    parser.error(
        f"--ckpt_path {ckpt_path}: {what}; a run's checkpoints are <log_dir>/checkpoints/last.ckpt and best-*.ckpt"
    )


def refuse_another_algorithms_checkpoint(ckpt_path: str, checkpoint: dict[str, Any], class_path: str) -> None:
    """Stop a fit resumed from a checkpoint of another algorithm than ``class_path`` (an SFT ``last.ckpt`` given
    to Expert Iteration's config): its weights would fail to load with a list of keys, or load and go on with
    another run's optimizer and rounds. The algorithm is the ``_class_path`` this CLI saves among the
    checkpoint's hyperparameters (``checkpoint``: ``read_checkpoint_record``'s), compared by class name
    (``lit_reason.SFT`` is ``lit_reason.algorithms.SFT``)."""
    saved = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if saved and saved.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
        raise ValueError(
            f"--ckpt_path {ckpt_path} is a checkpoint of {saved}, and this fit trains {class_path}: resume with the "
            "config of the run that saved it (its config.yaml), or start this fit without --ckpt_path (a trained "
            "policy is --model.init_args.policy.name_or_path)"
        )


def resume_with_recorded_warm_starts(ckpt_path: str, checkpoint: dict[str, Any], model_arguments: Any) -> None:
    """Point each ``config:`` policy of a resumed fit's ``model_arguments`` (its parsed ``model.init_args``) at the
    warm start its ``checkpoint`` recorded (``RecordWarmStarts``), where that one is still cached and the config now
    names another: a changed config, data file or lit-reason keys a new warm start, which would be trained first,
    and the reference, the restarts and the critic's start would differ from those of the run's first part."""
    recorded = checkpoint.get(WARM_STARTS, {})
    for arguments in _policy_arguments(model_arguments):
        name = arguments["name_or_path"]
        directory = recorded.get(name)
        config = locate_config(name[len(CONFIG_PREFIX) :]) if directory else None
        if directory is None or (config is not None and str(warm_start_dir(config)) == directory):
            continue
        if not is_exported(Path(directory)):
            rank_zero_warn(
                f"--ckpt_path {ckpt_path}: the warm start this run started from, {directory}, is no longer cached, so "
                f"{name} is resolved again (and trained if needed): the resumed run's reference and restarts differ "
                "from its first part's"
            )
            continue
        rank_zero_warn(
            f"--ckpt_path {ckpt_path}: resuming with the warm start this run started from, {directory}; {name} now "
            "names another (its config, a data file it reads or lit-reason's code changed since)"
        )
        arguments["name_or_path"] = directory


PACKAGE_DIR = Path(__file__).resolve().parent


def configuration_error(error: BaseException) -> str | None:
    """The message of the setting ``error`` reports: the innermost error it wraps, where lit-reason's own checks
    (a ``ValueError`` or a missing file raised in its code) or Lightning's trainer options raised it; None for
    anything else (a bug keeps its traceback)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    if isinstance(error, MisconfigurationException):
        return f"trainer: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    raised_here = bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)
    return str(error) if isinstance(error, ValueError | FileNotFoundError) and raised_here else None


def _policy_arguments(node: Any):
    """Every mapping among ``node``'s parsed arguments (nested ones too) that names a ``config:`` policy."""
    children = vars(node) if isinstance(node, Namespace) else node if isinstance(node, dict) else None
    if children is None:
        for item in node if isinstance(node, list) else ():
            yield from _policy_arguments(item)
        return
    if str(children.get("name_or_path", "")).startswith(CONFIG_PREFIX):
        yield node
    for value in children.values():
        yield from _policy_arguments(value)


ALGORITHMS = [name for name in algorithms.__all__ if name != ReasoningModule.__name__]

MODEL_KEY = 'Parser key "model":'
_UNKNOWN_CLASS_RE = re.compile(
    r"Expected a dot import path string: (?P<name>[\w.]+)"
    r"|Problem with given class_path '(?P<path>[\w.]+)':\s*module '[\w.]+' has no attribute"
)
_UNKNOWN_CLASS_OPTION_RE = re.compile(
    r"Problem with given class_path '(?P<path>[\w.]+)':\s*"
    r"(?:Option '(?P<option>[\w.]+)' is not accepted|unrecognized arguments: --(?P<flag>[\w.]+))"
)
_UNKNOWN_FLAG_RE = re.compile(r"^unrecognized arguments: [^\n]*?(?P<flag>--[\w.]+)")


def what_was_meant(message: str, parser: ArgumentParser) -> list[str]:
    """Hints for a parse error ``message``: lit-reason's algorithms for an unknown ``--model``, the closest
    options to a misspelt one (an algorithm's, another class's, or a flag of ``parser`` and its subcommands)."""
    if (name := _unknown_algorithm(message)) is not None:
        return [*_closest(name, ALGORITHMS, ""), f"lit-reason's algorithms: {', '.join(ALGORITHMS)}"]
    if match := _UNKNOWN_CLASS_OPTION_RE.search(message):
        option, path = match["option"] or match["flag"], match["path"]
        help_flag = f" (its options: --model.help {path})" if _is_algorithm(path) else ""
        return _closest(option, _class_options(path), help_flag)
    if match := _UNKNOWN_FLAG_RE.search(message):
        return _closest(match["flag"], _flags(parser), "")
    return []


def _unknown_algorithm(message: str) -> str | None:
    """The class name an error about ``--model`` itself says it cannot find (not one nested in its options, such
    as an optimizer's), or None."""
    start = message.find(MODEL_KEY)
    match = _UNKNOWN_CLASS_RE.search(message, start) if start >= 0 else None
    if match is None or 'Parser key "' in message[start + len(MODEL_KEY) : match.start()]:
        return None
    return (match["name"] or match["path"]).rsplit(".", 1)[-1]


def _closest(name: str, candidates: list[str], where: str) -> list[str]:
    """ "did you mean X?" for the candidate closest to ``name``, letter case aside; none where none is close."""
    by_folded = {candidate.casefold(): candidate for candidate in candidates}
    found = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.75)
    return [f"did you mean {by_folded[found[0]]}?{where}"] if found else []


def _is_algorithm(class_path: str) -> bool:
    found = _import_class(class_path)
    return isinstance(found, type) and issubclass(found, ReasoningModule)


def _import_class(class_path: str) -> Any:
    try:
        return import_function(class_path, "class")  # a class is a callable like any other
    except ValueError:
        return None


def _class_options(class_path: str) -> list[str]:
    """The options (``loss.clip_ratio`` for a group's field) of the class ``class_path`` names."""
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_class_arguments(_import_class(class_path))
    except (ValueError, TypeError):  # not a class, or one whose signature jsonargparse cannot read
        return []
    return [action.dest for action in parser._actions if action.option_strings and action.dest.split(".")[-1] != "help"]


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` of ``parser`` and its subcommands' parsers."""
    flags = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                flags.extend(_flags(subparser))
    return flags


class LitReasonParser(LightningArgumentParser):
    """Lightning's parser, whose errors for an unknown algorithm or a misspelt option say what was meant."""

    def error(self, message: str, ex: Exception | None = None):
        if self.exit_on_error:  # the error that ends the command, not one jsonargparse catches while trying types
            message = "\n".join([message, *(hint for hint in what_was_meant(message, self) if hint not in message)])
        super().error(message, ex)


class LitReasonCLI(LightningCLI):
    """LightningCLI for lit-reason's algorithms (``--model`` picks one, e.g. ``SFT``, by class path)."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            ReasoningModule,
            RolloutDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            auto_configure_optimizers=False,
            parser_class=LitReasonParser,
            args=args,
            run=run,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # No ``predict``: a run's predictions come from validate / test (``<log_dir>/predictions/``).
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Unset, Lightning loads a --ckpt_path URL with weights_only=False: a remote checkpoint could run code.
        # lit-reason's checkpoints hold only tensors and plain values; --weights_only=false still loads others.
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)
        return parser

    def instantiate_classes(self) -> None:
        """Build the model, data and trainer; a setting they refuse ends the command with its message alone
        (jsonargparse wraps it in a dump of the whole model config, under a traceback)."""
        try:
            super().instantiate_classes()
        except (ValueError, OSError, MisconfigurationException) as error:
            reason = configuration_error(error)
            if reason is None:
                raise
            print(f"lit-reason {self.config.get('subcommand')}: error: {reason}", file=sys.stderr)
            raise SystemExit(2) from None

    def instantiate_trainer(self, **kwargs: Any):
        # The checkpoint callbacks this CLI adds give way to --trainer.enable_checkpointing=false.
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if trainer_config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        self.save_config_kwargs = {**self.save_config_kwargs, "subcommand": self.subcommand or "fit"}
        return self._instantiate_trainer(
            trainer_config, [*callbacks, ForgetOutputsAfterCheckpoint(), FailFast(), RecordWarmStarts()]
        )

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would lay the hyperparameters saved in --ckpt_path over the parsed config: evaluating a
        # checkpoint with other settings (K = 96) or resuming with a changed option would silently use the
        # training run's. Here the command line and config files decide; the checkpoint restores state, and
        # only a fit's checkpoint is read here, before anything is built or restored, for its algorithm.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand == "fit" else None
        if ckpt_path and restore_interrupted_replacement(ckpt_path):
            rank_zero_warn(f"--ckpt_path {ckpt_path}: a crash came while it was being replaced; the previous is back")
        if subcommand in ("fit", "validate", "test"):
            refuse_a_missing_checkpoint(self.config[subcommand].get("ckpt_path"), self._parser(subcommand))
        if ckpt_path:
            checkpoint = read_checkpoint_record(ckpt_path)  # read once, its tensors left on disk
            refuse_another_algorithms_checkpoint(ckpt_path, checkpoint, self.config[subcommand]["model"]["class_path"])
            resume_with_recorded_warm_starts(ckpt_path, checkpoint, self.config[subcommand]["model"]["init_args"])

    def parse_arguments(self, parser, args) -> None:
        if args is None or isinstance(args, list):
            try:
                renamed = renamed_options(sys.argv[1:] if args is None else [str(a) for a in args])
            except ValueError as unreadable:  # a config file that is not YAML text
                parser.error(str(unreadable))
            if renamed:
                parser.error("renamed options:\n  " + "\n  ".join(renamed))
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=True,
            help="fit: validate the initial policy before the first update (skipped when resuming from --ckpt_path)",
        )
        parser.add_lightning_class_args(StagedCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/maj@1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                # A run resumed after a crash that saves a best checkpoint again writes it over the one of the
                # same name, rather than beside it as "-v1" (the first never deleted).
                "checkpoint.enable_version_counter": False,
            }
        )
        # Lightning writes save_last only when the best checkpoint changes; resuming needs the latest state
        # after every epoch, so a second callback keeps exactly that as last.ckpt.
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.filename": "last",
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
                "last_checkpoint.save_on_train_epoch_end": True,
            }
        )
        parser.add_lightning_class_args(ExportPolicy, "export")

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            resume_in_place(self.config.fit)
        if self.subcommand not in ("validate", "test"):
            return
        policy = self.config[self.subcommand].model.init_args.policy
        name = getattr(policy, "name_or_path", "")
        if name.startswith(CONFIG_PREFIX) and not is_cached(name):
            config = name[len(CONFIG_PREFIX) :]
            raise SystemExit(
                f"lit-reason {self.subcommand}: the policy is the warm start that {config} trains, and it is not "
                f"trained yet; evaluating it would first train it. Name the policy to evaluate "
                f"(--model.init_args.policy.name_or_path=DIR), or train it with lit-reason fit --config {config}"
            )

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("validate_before_fit", True) and not config.get("ckpt_path"):
            self.trainer.validate(self.model, datamodule=self.datamodule)


def resume_in_place(config) -> None:
    """A fit resumed from ``<save_dir>/<name>/<version>/checkpoints/*.ckpt`` logs on in that run's directory
    (not a new version), when the logger is TensorBoard's and its version is not given: the resumed run's
    metrics, predictions, checkpoints and export continue the interrupted run's. (Lightning's CSV logger
    deletes the ``metrics.csv`` of a directory it logs into again: with it, a resumed run gets a new one.)"""
    logger = config.trainer.logger
    if not config.get("ckpt_path") or not str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger"):
        return
    if logger.init_args.get("version") is not None:
        return
    checkpoint = Path(config.ckpt_path).resolve()
    run_dir = checkpoint.parent.parent
    logs = Path(logger.init_args.get("save_dir") or ".") / (logger.init_args.get("name") or "")
    if checkpoint.parent.name == "checkpoints" and run_dir.parent == logs.resolve():
        logger.init_args.version = run_dir.name


def main(args=None) -> None:
    """``lit-reason fit | validate | test`` (LightningCLI) or ``lit-reason study`` (a declared grid)."""
    exit_with_parent()
    arguments = sys.argv[1:] if args is None else list(args)
    if arguments[:1] == ["study"]:
        from lit_reason.study import study_main  # the study runs lit-reason commands itself

        study_main(arguments[1:])
        return
    if arguments[:1] in (["-h"], ["--help"]):
        print("lit-reason study --config STUDY.yaml: run a declared study and write its results (see --help there)\n")
    located = with_packaged_configs(arguments)
    if located != arguments and args is None:
        sys.argv[1:] = located
    LitReasonCLI(args=located if args is not None else None)
    # Lightning leaves the process group up. Undestroyed, gloo's worker threads still hold work at interpreter
    # exit and abort it now and then ("terminate called without an active exception", SIGABRT after a good
    # run); NCCL warns. Here only after success: a failed rank's peers may never get here to destroy with it.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def with_packaged_configs(arguments: list[str]) -> list[str]:
    """``arguments`` with each ``--config NAME`` that is no file here replaced by the packaged config of that
    name (``--config ppo.yaml`` after a plain ``pip install``)."""
    located = list(arguments)
    for index, argument in enumerate(arguments):
        if argument in ("--config", "-c") and index + 1 < len(arguments):
            position, name, prefix = index + 1, arguments[index + 1], ""
        elif argument.startswith("--config="):
            position, name, prefix = index, argument.removeprefix("--config="), "--config="
        else:
            continue
        if Path(name).is_file() or (config := locate_config(name)) is None:
            continue
        located[position] = prefix + str(config)
        print(f"[lit-reason] --config {name}: the packaged {config}", file=sys.stderr)
    return located


if __name__ == "__main__":
    main()
