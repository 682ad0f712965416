"""Files: reading the JSON Lines files users hand lit-reason (data sets, rollouts, predictions), every error
naming the file and the line; putting a finished file or directory (a checkpoint, an export) in place without
a half-written moment; a run directory's lock, held by the one process that writes the run; and finding a
model's own files where ``from_pretrained`` finds its weights (a directory or the hub)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import cached_file

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

RUN_LOCK = ".run.lock"

# The from_pretrained options that say where a checkpoint's files are, as opposed to how to load them.
HUB_LOCATION_KEYS = ("revision", "subfolder", "token", "cache_dir", "local_files_only")


def hub_location(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options of ``load_kwargs`` (``from_pretrained``'s) that say where the checkpoint's files are."""
    return {key: value for key, value in load_kwargs.items() if key in HUB_LOCATION_KEYS}


def with_adapter_location(load_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``from_pretrained`` options whose search for a PEFT adapter config looks where the weights are looked
    for: transformers (5.24) passes it neither ``cache_dir`` nor ``local_files_only``, so an offline load of a
    hub id asked the hub for ``adapter_config.json`` anyway (retrying for about 20 s) or read another cache."""
    location = {key: load_kwargs[key] for key in ("cache_dir", "local_files_only") if key in load_kwargs}
    if not location:
        return load_kwargs
    return {**load_kwargs, "adapter_kwargs": {**location, **load_kwargs.get("adapter_kwargs", {})}}


def find_model_file(path_or_id: str | Path, filename: str, **location: Any) -> Path | None:
    """``filename`` of the checkpoint at ``path_or_id`` (a directory, or a hub id with ``hub_location``'s
    options), found as ``from_pretrained`` finds the weights; None where it has none. Offline, a file the cache
    lacks counts as absent, as transformers treats a model's optional files."""
    if not Path(path_or_id).is_dir():
        try:
            validate_repo_id(str(path_or_id))
        except HFValidationError:  # neither a directory nor a hub id: a local path that does not exist
            return None
    found = cached_file(
        str(path_or_id),
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **location,
    )
    return None if found is None else Path(found)


def jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a JSONL file, parsed: (``"path:line"``, value). A line that is not UTF-8 text or
    not JSON is a ``ValueError`` naming the file, the line and what to do."""
    with Path(path).open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte order mark some editors write
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line, object_pairs_hook=_object_of_unique_keys)
                if "\\u" in line:  # a lone surrogate escape ("\\ud83d") parses, then fails in a tokenizer or a log
                    json.dumps(value, ensure_ascii=False).encode("utf-8")
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            except RecursionError:
                raise ValueError(f"{path}:{number}: JSON nested too deeply to read") from None
            except UnicodeEncodeError:
                raise ValueError(f"{path}:{number}: a string holds a lone UTF-16 surrogate escape, not text") from None
            except ValueError as error:  # an integer of more digits than Python converts
                raise ValueError(f"{path}:{number}: not readable JSON ({error})") from None
            yield f"{path}:{number}", value


def _object_of_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused where a key comes twice (``json`` keeps the last silently)."""
    keys = set()
    for key, _ in pairs:
        if key in keys:
            raise ValueError(f"key {key!r:.40} twice in one object")
        keys.add(key)
    return dict(pairs)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (PyYAML keeps the last silently): an error
    whose mark is the line of the second."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a staging file renamed over it: a reader or a crash finds the
    previous content or the new one, never half of one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    replace_path(staging, path)


def replace_path(staging: str | Path, target: str | Path) -> None:
    """Put the fully written file or directory ``staging`` in place of ``target`` (a file, a directory or
    nothing), on the same filesystem: a reader or a crash finds the earlier one or the new one, never a
    half-written one. Its bytes are flushed to disk first (a power cut after the rename finds them). A file over
    a file is one rename; otherwise the earlier one waits beside it as ``.<name>.previous`` between two renames
    (``restore_interrupted_replacement`` puts it back after a crash there)."""
    staging, target = Path(staging), Path(target)
    for path in [staging, *staging.rglob("*")] if staging.is_dir() else [staging]:
        _fsync(path)
    if staging.is_file() and not target.is_dir():
        os.replace(staging, target)
    else:
        previous = target.with_name(f".{target.name}.previous")
        remove_path(previous)
        if target.exists() or target.is_symlink():
            target.rename(previous)
        staging.rename(target)
        remove_path(previous)
    _fsync(target.parent)


def restore_interrupted_replacement(target: str | Path) -> bool:
    """Where a crash came between ``replace_path``'s two renames (``target`` missing, ``.<name>.previous`` beside
    it), put the previous one back; whether it did."""
    target = Path(target)
    previous = target.with_name(f".{target.name}.previous")
    if target.exists() or not previous.exists():
        return False
    try:
        previous.rename(target)
    except FileNotFoundError:  # another rank of the same command put it back
        return False
    return True


def remove_path(path: str | Path) -> None:
    """Delete a file or a directory tree, where there is one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries (a rename in it), to disk, where the system allows it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # Windows opens no directories
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some filesystems refuse to sync a directory
        pass
    finally:
        os.close(descriptor)


class RunDirectoryInUse(RuntimeError):
    """Another process holds a run directory's lock: it is writing that run."""


class RunLock:
    """The lock of a run's directory (``<log_dir>/.run.lock``), held by the process that writes the run, so that
    no second one writes or deletes its files meanwhile (a study resuming the step a launcher is running, a test
    logged into the directory of a fit under way). An OS lock (``flock``): the OS releases it when its process
    ends, killed or not, so a crashed run leaves no stale lock. Not held on systems without ``fcntl``.

    Args:
        log_dir: the run's directory (created if missing).
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.path = Path(log_dir) / RUN_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Hold the lock (no-op when held); raise ``RunDirectoryInUse`` naming the holder's pid when another
        process holds it. On a filesystem without ``flock`` (Lustre mounted ``noflock``, some FUSE and NFS
        mounts) it warns and the run goes on unlocked."""
        if self._fd is None:
            self._fd = self._lock()
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def check_free(self) -> None:
        """Raise ``RunDirectoryInUse`` when another process holds the lock (a directory without one is free);
        the holder's pid in the file is left as it is."""
        if self.path.is_file() and self._fd is None and (fd := self._lock()) is not None:
            os.close(fd)

    def _lock(self) -> int | None:
        """A descriptor of the lock file holding its flock, or None where there is no flock."""
        if fcntl is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated: the holder's pid is in it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryInUse(
                f"{self.path.parent} is being written by another process (pid {holder}, which holds {self.path}): "
                "wait for it to end, or stop it; two processes writing one run would lose its records"
            ) from None
        except OSError as error:
            os.close(fd)
            warnings.warn(f"{self.path.parent} is not locked ({error}): this filesystem has no flock", stacklevel=3)
            return None
        return fd
