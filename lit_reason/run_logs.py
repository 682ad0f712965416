"""What a run logs besides scalars — text tables, histograms, curves against the samples drawn — for any
Lightning logger.

With a TensorBoard logger they go to its text, histogram and scalar tabs. With any other logger (CSV, W&B,
MLflow, ...) they are written into the run's directory instead, so nothing is lost whichever logger a user
picks: ``text/<tag>-step<N>.md``, ``histograms.jsonl`` (count, mean and quantiles per tag and step) and
``by_samples_drawn.csv`` (tag, samples drawn, value).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Protocol

import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_reason.distributed import rank_and_world_size

HISTOGRAM_QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)


class RunLog(Protocol):
    def text(self, tag: str, markdown: str, step: int) -> None:
        """A Markdown table or note, at optimizer step ``step``."""

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        """The distribution of ``values`` (1-D) at step ``step``."""

    def curve_point(self, tag: str, value: float, x: int) -> None:
        """A point of a curve whose x-axis is not the step (the samples drawn)."""


class TensorBoardLog:
    """A ``RunLog`` into TensorBoard's ``SummaryWriter``."""

    def __init__(self, writer) -> None:
        self.writer = writer

    def text(self, tag: str, markdown: str, step: int) -> None:
        self.writer.add_text(tag, markdown, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def curve_point(self, tag: str, value: float, x: int) -> None:
        self.writer.add_scalar(tag, value, global_step=x)


class FileLog:
    """A ``RunLog`` into files of the run's directory ``log_dir``, for loggers without text or histograms."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)

    def text(self, tag: str, markdown: str, step: int) -> None:
        path = self.log_dir / "text" / f"{_file_name(tag)}-step{step}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown + "\n", encoding="utf-8")

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        values = values.double().flatten()
        summary: dict[str, Any] = {"tag": tag, "step": step, "count": len(values)}
        if len(values):
            quantiles = torch.quantile(values, torch.tensor(HISTOGRAM_QUANTILES, dtype=torch.float64))
            summary["mean"] = values.mean().item()
            summary["quantiles"] = {f"{q:g}": v for q, v in zip(HISTOGRAM_QUANTILES, quantiles.tolist(), strict=True)}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "histograms.jsonl").open("a", encoding="utf-8") as file:
            file.write(json.dumps(summary) + "\n")

    def curve_point(self, tag: str, value: float, x: int) -> None:
        path = self.log_dir / "by_samples_drawn.csv"
        new = not path.is_file()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["tag", "samples_drawn", "value"])
            writer.writerow([tag, x, value])


def run_log(trainer) -> RunLog | None:
    """Where rank 0 logs text, histograms and curves: TensorBoard when a logger is TensorBoard's, else files in
    the run's directory (``run_directory``); None on other ranks and without a logger. Call on rank 0 alone if
    need be: nothing here communicates."""
    if rank_and_world_size()[0] != 0 or not trainer.loggers:
        return None
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text") and hasattr(experiment, "add_histogram"):
            return TensorBoardLog(experiment)
    return FileLog(_run_directory(trainer))


def run_directory(trainer) -> Path:
    """The directory of the run ``trainer`` logs: its first logger's ``log_dir`` for TensorBoard's and CSV's;
    for others, ``save_dir/name/version`` as Lightning's ``ModelCheckpoint`` places the run's checkpoints (W&B's
    and MLflow's ``save_dir``, which Lightning's ``trainer.log_dir`` gives, is every run's; ``default_root_dir``
    for a logger that saves nothing locally); ``default_root_dir`` without a logger. A broadcast from rank 0:
    call on every rank."""
    return Path(trainer.strategy.broadcast(str(_run_directory(trainer))))


def _run_directory(trainer) -> Path:
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    first = trainer.loggers[0]
    if isinstance(first, TensorBoardLogger | CSVLogger):
        return Path(first.log_dir)
    version = first.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(first.save_dir or trainer.default_root_dir, str(first.name), version)


def _file_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", tag)
