"""Warm starts: a policy named by the config that trains it, trained on first use and cached.

``PolicySpec(name_or_path="config:configs/sft.yaml")`` means "the policy that ``lit-reason fit --config
configs/sft.yaml`` exports". The first run that asks for it trains it (a separate ``lit-reason fit`` process
that logs to its own run) and caches the exported policy under ``$LIT_REASON_CACHE`` (default
``~/.cache/lit-reason``), keyed by the config's parsed content and lit-reason's version; every later run, and every
algorithm whose config names the same file, loads the cached policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from filelock import FileLock

from lit_reason.version import __version__

CONFIG_PREFIX = "config:"


def cache_root() -> Path:
    return Path(os.environ.get("LIT_REASON_CACHE", "~/.cache/lit-reason")).expanduser()


def warm_start_dir(config: Path) -> Path:
    """Where the policy exported by ``config`` is cached: keyed by its parsed content (comments and layout
    do not count) and lit-reason's version."""
    content = json.dumps(yaml.safe_load(config.read_text()), sort_keys=True)
    key = hashlib.sha256((content + __version__).encode()).hexdigest()[:12]
    return cache_root() / "warm_start" / f"{config.stem}-{key}"


def resolve_policy_path(name_or_path: str) -> str:
    """``name_or_path`` itself (a leading ``~`` expanded to the home directory), or for ``config:PATH`` the
    cached policy that config exports (trained now if missing; concurrent callers wait for one training run)."""
    if not name_or_path.startswith(CONFIG_PREFIX):
        return str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path
    config = Path(name_or_path[len(CONFIG_PREFIX) :])
    if not config.is_file():
        raise FileNotFoundError(
            f"warm start {name_or_path!r}: no config file {config} (relative paths start at the working "
            f"directory, {Path.cwd()}); run lit-reason from the repository root or give an absolute path"
        )
    target = warm_start_dir(config)
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f"{target.name}.lock"):  # one process trains; the others wait and then load
        if not (target / "config.json").is_file():
            _train(config, target)
    return str(target)


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
    try:
        subprocess.run(command, check=True)
        (staging / "policy").rename(target)  # atomic: a half-written policy is never found
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"training the warm start with {config} failed (exit code {error.returncode}); see its output above"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
