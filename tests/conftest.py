"""Shared fixtures: a tiny random policy for fast tests, a cached SFT-trained tiny policy for tests that
need one that can already solve some problems, and a real pretrained model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import partial
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from lightning import seed_everything

from lit_reason import SFT, LRSchedule, PolicySpec, RolloutDataModule
from lit_reason.policy import build_char_tokenizer, load_model
from lit_reason.tasks import Arithmetic
from lit_reason.warm_start import source_fingerprint
from tests.helpers.smollm2 import SmolLM2, load_smollm2
from tests.helpers.trainers import quiet_trainer

# Under pytest-xdist (`-n N`) the workers share the cores: each gets its part, so that they do not oversubscribe.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))


# Tests that use these fixtures train a policy or run the real model: they are slow whatever their marks.
SLOW_FIXTURES = {"sft_policy_dir", "smollm2"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_global_seed_from_earlier_tests(monkeypatch):
    """Every test starts without ``PL_GLOBAL_SEED`` and leaves it as it found it: a run that calls
    ``seed_everything`` (the CLI's) sets it for the process, and ``run_seed`` would read it in later tests."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture
def hub_unreachable(monkeypatch):
    """Any request to the Hugging Face hub fails the test: an offline load (``local_files_only``) must not ask
    it anything (transformers' adapter lookup did, retrying for about 20 s before giving up)."""
    import huggingface_hub.file_download

    def asked(url, *args, **kwargs):
        raise AssertionError(f"the hub was asked for {url} by an offline load")

    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", asked)


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def micro_model(char_tokenizer):
    model = load_model(PolicySpec(name_or_path="micro"), char_tokenizer)
    return model.eval()


@pytest.fixture(scope="session")
def smollm2() -> SmolLM2:
    """SmolLM2-135M-Instruct (float32, eval mode) with its tokenizer, loaded once per session from the GGUF
    file that tools/fetch_smollm2.py downloads on first use (93 MB, kept in $LIT_REASON_CACHE/models; set
    LIT_REASON_SMOLLM2_DIR on an offline machine). Shared: tests must not train or modify ``model``; use
    ``tests.helpers.smollm2.load_from_memory`` to give modules their own copies."""
    return load_smollm2()


@pytest.fixture(scope="session")
def small_task() -> Arithmetic:
    return Arithmetic(train_size=2000, validation_size=200, test_size=200)


# The cached SFT policy: a tiny model fine-tuned on an easy variant of the built-in task, trained once and
# kept in pytest's cache (keyed by its recipe and the code it depends on), for tests that need a policy
# that already solves a good share of problems.
SFT_TASK = dict(
    min_steps=1, max_steps=2, max_operand=15, max_value=30, train_size=5000, validation_size=200, test_size=200
)
SFT_STEPS = 400
# Two of the tiny preset's four layers: half the training time (89 s instead of 175 s on the 2-core CPU) for
# greedy accuracy 0.21 instead of 0.29 on the validation split.
SFT_LAYERS = 2


def sft_fixture_task() -> Arithmetic:
    return Arithmetic(**SFT_TASK)


@pytest.fixture(scope="session")
def sft_policy_dir(request) -> Path:
    """Directory of an exported SFT policy (tiny preset) for ``sft_fixture_task()``; ~2 minutes to build once."""
    recipe = json.dumps({"task": SFT_TASK, "steps": SFT_STEPS, "layers": SFT_LAYERS, "version": 1}, sort_keys=True)
    # Any change to the package may change what the recipe trains: every source file is part of the key.
    key = hashlib.sha256((recipe + source_fingerprint()).encode()).hexdigest()[:16]
    path = Path(request.config.cache.mkdir("lit-reason-sft-policy")) / key
    with FileLock(path.parent / f"{key}.lock"):  # pytest-xdist workers: one trains it, the others wait for it
        if not (path / "config.json").is_file():
            _train_sft_policy(path)
    return path


def _train_sft_policy(path: Path) -> None:
    trainer = quiet_trainer(
        max_steps=SFT_STEPS,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    module = SFT(
        batch_size=32,
        policy=PolicySpec(name_or_path="tiny", preset_overrides={"num_hidden_layers": SFT_LAYERS}),
        optimizer=partial(torch.optim.AdamW, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0),
        lr_schedule=LRSchedule(warmup_steps=20),
    )
    seed_everything(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # the other pytest-xdist workers mostly wait for it
    try:
        trainer.fit(module, RolloutDataModule(task=sft_fixture_task()))
    finally:
        torch.set_num_threads(threads)
    staging = Path(tempfile.mkdtemp(dir=path.parent))
    module.export_policy(staging)
    staging.rename(path)  # atomic: a half-written policy is never found
