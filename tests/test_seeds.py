"""One ``seed_everything`` drives every training-side seed; evaluation keeps its own fixed seed."""

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from lightning import seed_everything

from lit_reason import ExpertIteration, PolicySpec, RolloutDataModule, SamplingConfig
from lit_reason.tasks import Arithmetic
from tests.helpers.fakes import FakeTrainer
from tests.helpers.trainers import quiet_trainer

TASK = Arithmetic(train_size=64, validation_size=6, test_size=4)
SHORT = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=8)


def one_round(seed: int) -> dict:
    """One Expert Iteration round on the micro preset under ``seed_everything(seed)``: its rollout, questions
    and final weights."""
    seed_everything(seed)
    module = ExpertIteration(
        policy=PolicySpec(name_or_path="micro"),
        rollout=SHORT,
        reference_solutions=8,
        batch_size=4,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
    )
    rollouts = []
    generate = module.generate

    def recording(problems, config, seed_parts, stage):
        batch = generate(problems, config, seed_parts, stage)
        rollouts.append(([p.id for p in problems], batch.input_ids))
        return batch

    module.generate = recording
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(module, RolloutDataModule(task=TASK, questions_per_round=8))
    ((questions, samples),) = rollouts
    return {"questions": questions, "samples": samples, "weights": module.policy.state_dict()}


def same(a: dict, b: dict) -> dict[str, bool]:
    return {
        "questions": a["questions"] == b["questions"],
        "samples": a["samples"].shape == b["samples"].shape and torch.equal(a["samples"], b["samples"]),
        "weights": all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]),
    }


def test_two_seeds_give_two_runs_and_one_seed_gives_one():
    first, second, again = one_round(1), one_round(2), one_round(1)
    assert same(first, again) == {"questions": True, "samples": True, "weights": True}
    assert same(first, second) == {"questions": False, "samples": False, "weights": False}


def test_evaluation_samples_do_not_follow_the_run_seed():
    module = ExpertIteration(policy=PolicySpec(name_or_path="micro", seed=0))
    module.configure_model()
    module._trainer = FakeTrainer(RolloutDataModule(task=TASK))
    problems = TASK.problems("validation")
    drawn = {}
    for seed in (1, 2):
        seed_everything(seed)
        drawn[seed] = {
            stage: module.generate(problems, SHORT, ("t",), stage).input_ids for stage in ("rollout", "evaluation")
        }
    assert torch.equal(drawn[1]["evaluation"], drawn[2]["evaluation"])
    assert not torch.equal(drawn[1]["rollout"], drawn[2]["rollout"])


def test_a_fit_resumed_with_another_seed_is_refused_and_evaluation_is_not(monkeypatch):
    from lightning.pytorch.trainer.states import TrainerFn

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    state = RolloutDataModule(task=TASK).state_dict()
    assert state["seeds"] == {"--seed_everything": 3}
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    data = RolloutDataModule(task=TASK)
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    with pytest.raises(ValueError, match="resume with --seed_everything=3$"):
        data.load_state_dict(state)
    data.trainer.state.fn = TrainerFn.VALIDATING  # evaluation has its own seed: nothing depends on the run's
    data.load_state_dict(state)
    data.trainer.state.fn = TrainerFn.FITTING
    data.load_state_dict({key: value for key, value in state.items() if key != "seeds"})  # an older checkpoint
    # With data.seed fixed, the run's seed still drives the rollouts: both are checked, each by its option.
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    state = RolloutDataModule(task=TASK, seed=7).state_dict()
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    data = RolloutDataModule(task=TASK, seed=7)
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    with pytest.raises(ValueError, match="resume with --seed_everything=3$"):
        data.load_state_dict(state)
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    data.seed = 8
    with pytest.raises(ValueError, match="resume with --data.seed=7$"):
        data.load_state_dict(state)


def _set_up_with_seed(rank: int, world_size: int, seeds: tuple[int, int]) -> str:
    import os

    os.environ["PL_GLOBAL_SEED"] = str(seeds[rank])  # what seed_everything sets
    try:
        RolloutDataModule(task=TASK).setup("fit")
    except ValueError as error:
        return str(error)
    return "ok"


@pytest.mark.slow
def test_ranks_seeded_differently_stop_before_training():
    from tests.helpers.distributed import run_in_processes

    assert run_in_processes(_set_up_with_seed, (5, 5)) == ["ok", "ok"]
    different = run_in_processes(_set_up_with_seed, (5, 6))
    assert different[0] == different[1]
    assert "rank 0: {'--seed_everything': 5}, rank 1: {'--seed_everything': 6}" in different[0]
