"""Stand-ins for the parts of a Trainer that a module reads outside a fit (task, precision, accumulation)."""

from lightning.pytorch.plugins.precision import Precision


class FakeTrainer:
    """Gives a LightningModule its datamodule (hence its task) without running a Trainer."""

    def __init__(self, datamodule):
        self.datamodule = datamodule
        self.precision_plugin = Precision()
        self.accumulate_grad_batches = 1
