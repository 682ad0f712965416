"""A quiet in-process Trainer for tests, set up the way lit-reason's CLI runs fits."""

from lightning import Trainer

from lit_reason.cli import TRAINER_DEFAULTS


def quiet_trainer(**overrides) -> Trainer:
    """A CPU Trainer with the CLI's defaults (every epoch a round, questions sharded by the RolloutDataModule,
    ...) but no logger, checkpoints, progress bar or model summary. ``overrides`` replace or add Trainer
    arguments."""
    settings = {
        **TRAINER_DEFAULTS,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**settings, **overrides})
