"""The run's seed. ``seed_everything`` (the CLI's ``seed_everything``) drives every training-side seed left
unset: rollouts, shuffles, the order of training questions, a tiny preset's initial weights. Evaluation keeps
a fixed seed of its own (``EVALUATION_SEED``), so runs with different seeds are measured on the same
questions with the same sampling noise, and can be paired question by question."""

from __future__ import annotations

import os

EVALUATION_SEED = 0


def run_seed(seed: int | None) -> int:
    """``seed`` if given, else the seed ``lightning.seed_everything`` set for this run (its ``PL_GLOBAL_SEED``;
    0 if none was). Read when used, not when a module is built, so seeding after building counts too."""
    return seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", "0"))
