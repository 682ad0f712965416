"""Stand-ins for the parts of a Trainer that a module reads outside a fit (task, precision, accumulation)."""

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import Precision


def logger_into(directory: str | Path) -> CSVLogger:
    """A logger whose run's directory is ``directory`` (nothing is written until it logs)."""
    directory = Path(directory)
    return CSVLogger(directory.parent, name=directory.name, version="")


class FakeTrainer:
    """Gives a LightningModule its datamodule (hence its task) without running a Trainer."""

    def __init__(self, datamodule):
        self.datamodule = datamodule
        self.precision_plugin = Precision()
        self.accumulate_grad_batches = 1
