"""A quiet in-process Trainer for tests, set up the way lit-reason's CLI runs fits."""

from lightning import Trainer


def quiet_trainer(**overrides) -> Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or sanity check, that rebuilds its dataloaders
    every epoch (each epoch is a round) and leaves sharding of questions to the RolloutDataModule.
    ``overrides`` replace or add Trainer arguments."""
    settings = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "reload_dataloaders_every_n_epochs": 1,
        "use_distributed_sampler": False,
        "num_sanity_val_steps": 0,
    }
    return Trainer(**{**settings, **overrides})
