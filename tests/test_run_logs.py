"""Where text, histograms and curves go for loggers other than TensorBoard."""

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger

from lit_reason.run_logs import FileLog, run_log


class SharedDirectoryLogger:
    """What W&B's and MLflow's loggers show: a ``save_dir`` every run shares, a name and a version per run,
    no ``log_dir`` and no TensorBoard experiment."""

    def __init__(self, save_dir: str | None, version: str | int) -> None:
        self.save_dir, self.name, self.version = save_dir, "project", version
        self.experiment = object()


def test_each_run_writes_into_its_own_directory(tmp_path):
    first, second = (run_log([SharedDirectoryLogger(str(tmp_path), version)]) for version in ("run-a", "run-b"))
    assert isinstance(first, FileLog) and first.log_dir == tmp_path / "project" / "run-a"  # was tmp_path itself
    assert second.log_dir == tmp_path / "project" / "run-b"
    first.text("samples", "| a |", step=3)
    assert (tmp_path / "project" / "run-a" / "text" / "samples-step3.md").read_text().strip() == "| a |"
    csv = CSVLogger(tmp_path, name="csv", version=0)
    assert Path(run_log([csv]).log_dir) == Path(csv.log_dir)
    assert run_log([SharedDirectoryLogger(None, "remote")]) is None  # a remote MLflow server: nothing local
    assert run_log([SharedDirectoryLogger(str(tmp_path), 0)]).log_dir == tmp_path / "project" / "0"
