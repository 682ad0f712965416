"""Warm starts: a policy named by the config that trains it, trained on first use and cached.

``PolicySpec(name_or_path="config:configs/sft.yaml")`` means "the policy that ``lit-reason fit --config
configs/sft.yaml`` exports". The first run that asks for it trains it (a separate ``lit-reason fit`` process
that logs to its own run) and caches the exported policy under ``$LIT_REASON_CACHE`` (default
``~/.cache/lit-reason``), keyed by what it trains (the config's parsed content, the configs it names in turn,
the data files it reads, the source of the Python modules it names) and lit-reason's source code; every later
run, and every algorithm whose config names the same file, loads the cached policy. A relative ``PATH`` is
looked up in the working directory, then among the configs shipped with lit-reason
(``config:configs/sft.yaml`` works after a plain ``pip install``).

The training process is a single process of its own: it does not inherit a distributed launcher's rank
variables (it would join or wait for the parent's job), and it stops when its parent dies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib.machinery import PathFinder
from pathlib import Path

import yaml
from filelock import FileLock

from lit_reason.files import replace_path
from lit_reason.version import __version__

CONFIG_PREFIX = "config:"


# The configs shipped with lit-reason (the repository's configs/ links here).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def locate_config(path: str) -> Path | None:
    """The config file ``path`` names: the file itself (relative to the working directory), else the packaged
    config of that name (``ei.yaml``, ``configs/ei.yaml`` and ``study/paper.yaml`` name shipped ones), else
    None."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    relative = given.as_posix().removeprefix("configs/")
    packaged = PACKAGED_CONFIGS / relative
    return packaged if not given.is_absolute() and packaged.is_file() else None


def cache_root() -> Path:
    return Path(os.environ.get("LIT_REASON_CACHE", "~/.cache/lit-reason")).expanduser()


def warm_start_dir(config: Path) -> Path:
    """Where the policy exported by ``config`` is cached: keyed by its parsed content (comments and layout
    do not count), the ``config:`` files it names, the size and time of every data file it names (a
    ``path``), the source of every module it names (a ``class_path``, a ``reward_fn`` path), and lit-reason's
    version and source code."""
    digest = hashlib.sha256((__version__ + source_fingerprint()).encode())
    for part in _training_inputs(config, seen=set()):
        digest.update(part.encode())
    return cache_root() / "warm_start" / f"{config.stem}-{digest.hexdigest()[:12]}"


def source_fingerprint(package: Path = Path(__file__).resolve().parent) -> str:
    """A hash of lit-reason's source files (those of ``package``): any code change may change what a config
    trains."""
    digest = hashlib.sha256()
    for path in sorted(path for path in package.rglob("*.py") if path.is_file()):  # not an editor's lock link
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _training_inputs(config: Path, seen: set[Path]) -> list[str]:
    """The parsed content of ``config`` and of every config it names, the size and time of every file it names
    (data files, wherever they sit: ``path``, ``train_path``, a ``data_files`` entry) and of every file in a
    directory named by a ``path`` or ``*_path`` option (a local base policy, a data folder), and the source of
    every module a dotted name in it names (a task's ``class_path``, a ``reward_fn``'s ``module.function``)."""
    if config.resolve() in seen:
        return []
    seen.add(config.resolve())
    content = yaml.safe_load(config.read_text())
    parts = [json.dumps(content, sort_keys=True)]
    for key, value in _leaves(content):
        if isinstance(value, str) and value.startswith(CONFIG_PREFIX) and locate_config(value[len(CONFIG_PREFIX) :]):
            parts += _training_inputs(locate_config(value[len(CONFIG_PREFIX) :]), seen)
        elif isinstance(value, str) and value:
            parts += [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in _named_files(value, key)]
            module = _module_source(value)
            if module is not None:
                parts.append(f"{value}:{hashlib.sha256(module.read_bytes()).hexdigest()}")
    return parts


def _module_source(dotted: str) -> Path | None:
    """The source file of the innermost module that ``dotted`` (``package.module.Class``, ``module:function``)
    names, looked up as the training process (``python -m``, the working directory first on its path) imports
    it, but without importing anything: a package's ``__init__`` may be slow or act. None where it names none."""
    names = dotted.replace(":", ".").split(".")
    if len(names) < 2 or not all(name.isidentifier() for name in names):
        return None
    source = None
    try:
        spec = PathFinder.find_spec(names[0], [os.getcwd()]) or importlib.util.find_spec(names[0])
        depth = 1
        while spec is not None:
            if spec.has_location:  # not a namespace package or a built-in module
                source = spec.origin
            if depth == len(names) or not spec.submodule_search_locations:  # the last name, or not a package
                break
            depth += 1
            spec = PathFinder.find_spec(".".join(names[:depth]), list(spec.submodule_search_locations))
    except (ImportError, ValueError, OSError):  # a module without a spec, an unreadable path entry: none found
        return None
    return Path(source) if source and Path(source).is_file() else None


def _named_files(value: str, key: str | None) -> list[Path]:
    """The file ``value`` names, or the files of the directory it names under a ``path`` / ``*_path`` key."""
    named = Path(value).expanduser()
    try:
        if named.is_file():
            return [named]
        if named.is_dir() and key is not None and (key == "path" or key.endswith("_path")):
            return sorted(p for p in named.rglob("*") if p.is_file())
    except (OSError, ValueError):  # text that cannot be a path: a long prompt, a NUL character
        pass
    return []


def _leaves(node, key: str | None = None):
    """(key, value) of every scalar in a parsed YAML document."""
    if isinstance(node, dict):
        for child_key, child in node.items():
            yield from _leaves(child, str(child_key))
    elif isinstance(node, list):
        for child in node:
            yield from _leaves(child, key)
    else:
        yield key, node


def is_exported(directory: Path) -> bool:
    """Whether ``directory`` holds an exported policy: a model, or a LoRA adapter (``adapter_export``)."""
    return (directory / "config.json").is_file() or (directory / "adapter_config.json").is_file()


def is_cached(name_or_path: str) -> bool:
    """Whether the ``config:PATH`` warm start is trained and cached (so resolving it costs nothing)."""
    config = locate_config(name_or_path[len(CONFIG_PREFIX) :])
    return config is not None and is_exported(warm_start_dir(config))


def resolve_policy_path(name_or_path: str) -> str:
    """``name_or_path`` itself (a leading ``~`` expanded to the home directory), or for ``config:PATH`` the
    cached policy that config exports (trained now if missing; concurrent callers wait for one training run)."""
    if not name_or_path.startswith(CONFIG_PREFIX):
        path = Path(name_or_path).expanduser()
        if not path.exists() and _looks_local(name_or_path):
            raise FileNotFoundError(
                f"policy {name_or_path!r}: no such directory (from {Path.cwd()}). A local policy is a directory "
                "that save_pretrained wrote, e.g. runs/sft/version_0/policy; a hub model is named org/name"
            )
        return str(path) if name_or_path.startswith("~") else name_or_path
    config = locate_config(name_or_path[len(CONFIG_PREFIX) :])
    if config is None:
        raise FileNotFoundError(
            f"warm start {name_or_path!r}: no config file {name_or_path[len(CONFIG_PREFIX) :]} (relative paths start "
            f"at the working directory, {Path.cwd()}) and no packaged config of that name ({PACKAGED_CONFIGS})"
        )
    target = warm_start_dir(config)
    if is_exported(target):
        return str(target)
    training = [entry for entry in os.environ.get(TRAINING_VARIABLE, "").split(os.pathsep) if entry]
    if str(config.resolve()) in training:  # it would wait forever for the lock its own parent holds
        chain = " -> ".join([*training, str(config.resolve())])
        raise ValueError(f"warm start {name_or_path!r}: the configs name each other's policies in a cycle: {chain}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f"{target.name}.lock"):  # one process trains; the others wait and then load
        if not is_exported(target):
            for stale in target.parent.glob(f".{target.name}-*"):  # left by a training that was killed
                shutil.rmtree(stale, ignore_errors=True)
            _train(config, target)
    return str(target)


# Variables by which a launcher (torchrun, SLURM, MPI, Lightning) makes a process one rank of a job.
LAUNCHER_VARIABLES = frozenset(
    {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK", "MASTER_ADDR",
     "MASTER_PORT"}
)  # fmt: skip
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_")
# What Lightning's seed_everything leaves for its children: a child with no seed of its own would take the
# parent's, and a cached warm start would depend on which run trained it first.
PARENT_SEED_VARIABLES = frozenset({"PL_GLOBAL_SEED", "PL_SEED_WORKERS"})
PARENT_VARIABLE = "LIT_REASON_EXIT_WITH_PARENT"
# The warm-start configs being trained by this process's parents: one naming itself again is a cycle.
TRAINING_VARIABLE = "LIT_REASON_TRAINING_WARM_STARTS"


def single_process_environment() -> dict[str, str]:
    """This process's environment without a launcher's rank variables or this process's seed, for a child
    that trains on its own, asked to exit when this process does (``exit_with_parent``)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in LAUNCHER_VARIABLES | PARENT_SEED_VARIABLES and not name.startswith(LAUNCHER_PREFIXES)
    }
    environment[PARENT_VARIABLE] = str(os.getpid())
    return environment


def exit_with_parent() -> None:
    """In a child started with ``single_process_environment``: exit as soon as the parent process is gone, so
    a killed run leaves no orphan training (checked every second on a daemon thread)."""
    parent = os.environ.pop(PARENT_VARIABLE, None)  # not passed on: processes this one starts have their own
    if parent is None:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _looks_local(name_or_path: str) -> bool:
    """Whether a policy name is meant as a local path: absolute, relative to ``.``/``~``, deeper than a hub id's
    ``org/name``, or an ``org/name`` whose first part is a local directory (``runs/typo``)."""
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        return True
    return "/" in name_or_path and Path(name_or_path.split("/")[0]).is_dir()


def _train(config: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    command = [
        sys.executable,
        "-m",
        "lit_reason",
        "fit",
        "--config",
        str(config),
        f"--export.dirpath={staging / 'policy'}",
    ]
    print(
        f"[lit-reason] warm start {config} is not cached yet: training it once ({' '.join(command[2:])}); "
        f"it will be reused from {target}",
        flush=True,
    )
    environment = single_process_environment()
    environment[TRAINING_VARIABLE] = os.pathsep.join(
        [*filter(None, os.environ.get(TRAINING_VARIABLE, "").split(os.pathsep)), str(config.resolve())]
    )
    try:
        subprocess.run(command, check=True, env=environment)
        replace_path(staging / "policy", target)  # a half-written policy is never found, nor lost to a power cut
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"training the warm start with {config} failed (exit code {error.returncode}); see its output above"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
