"""What ``pip install lit-reason`` gives: a wheel (not an editable install) that ships the configs, found by
name from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_ships_the_configs_and_the_cli_finds_them_by_name(tmp_path):
    source = tmp_path / "source"  # a copy: building in the repository would leave build/ behind
    shutil.copytree(REPOSITORY / "lit_reason", source / "lit_reason", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    (wheel,) = (tmp_path / "dist").glob("lit_reason-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)

    elsewhere = tmp_path / "work"  # no configs/ here
    elsewhere.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # the installed copy, not the repository
    result = subprocess.run(
        [sys.executable, "-m", "lit_reason", "fit", "--config", "ei.yaml", "--print_config"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    packaged = tmp_path / "site" / "lit_reason" / "configs"
    assert f"--config ei.yaml: the packaged {packaged / 'ei.yaml'}" in result.stderr
    assert "class_path: lit_reason.ExpertIteration" in result.stdout
    assert "name_or_path: config:configs/sft.yaml" in result.stdout
    assert (packaged / "sft.yaml").is_file() and (packaged / "study" / "paper.yaml").is_file()
