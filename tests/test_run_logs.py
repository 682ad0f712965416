"""Where a run's files go, and its text, histograms and curves for loggers other than TensorBoard."""

from pathlib import Path

from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lit_reason.run_logs import FileLog, run_directory, run_log


class SharedDirectoryLogger(Logger):
    """What W&B's and MLflow's loggers show: a ``save_dir`` every run shares, a name and a version per run,
    no ``log_dir`` and no TensorBoard experiment."""

    def __init__(self, save_dir: str | None, version: str | int) -> None:
        super().__init__()
        self._save_dir, self._version = save_dir, version
        self.experiment = object()

    @property
    def name(self) -> str:
        return "project"

    @property
    def version(self) -> str | int:
        return self._version

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def run_of(logger, tmp_path) -> Trainer:
    """A trainer that logs with ``logger``."""
    return Trainer(logger=logger, default_root_dir=tmp_path / "root", enable_progress_bar=False)


def test_each_run_writes_into_its_own_directory(tmp_path):
    first, second = (run_log(run_of(SharedDirectoryLogger(str(tmp_path), v), tmp_path)) for v in ("run-a", "run-b"))
    assert isinstance(first, FileLog) and first.log_dir == tmp_path / "project" / "run-a"  # was tmp_path itself
    assert second.log_dir == tmp_path / "project" / "run-b"
    first.text("samples", "| a |", step=3)
    assert (tmp_path / "project" / "run-a" / "text" / "samples-step3.md").read_text().strip() == "| a |"
    csv = CSVLogger(tmp_path, name="csv", version=0)
    assert Path(run_log(run_of(csv, tmp_path)).log_dir) == Path(csv.log_dir)


def test_a_run_s_directory_is_where_lightning_puts_its_checkpoints(tmp_path):
    # With W&B's and MLflow's loggers, metrics.json, the predictions, the config and the export went to the
    # save_dir every run shares (Lightning's trainer.log_dir) and the checkpoints to save_dir/name/version: a
    # second run into that save_dir was refused as a fresh fit over the first's config.
    for logger, directory in [
        (SharedDirectoryLogger(str(tmp_path), "run-a"), tmp_path / "project" / "run-a"),
        (SharedDirectoryLogger(str(tmp_path), 0), tmp_path / "project" / "version_0"),
        (SharedDirectoryLogger(None, "remote"), tmp_path / "root" / "project" / "remote"),  # a remote MLflow server
        (TensorBoardLogger(tmp_path, name="tb", version=3), tmp_path / "tb" / "version_3"),
        (CSVLogger(tmp_path, name="csv", version="v"), tmp_path / "csv" / "v"),
    ]:
        trainer = run_of(logger, tmp_path)
        assert run_directory(trainer) == directory
        checkpoints = ModelCheckpoint()
        checkpoints.setup(trainer, None, "fit")
        assert Path(checkpoints.dirpath) == directory / "checkpoints"
    assert run_directory(run_of(False, tmp_path)) == tmp_path / "root"  # no logger
