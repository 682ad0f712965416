from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback
from torch.utils.data import DataLoader

from lit_reason import GRPO, SFT, PolicySpec, RolloutDataModule, SamplingConfig, TrainData
from lit_reason.data import shard_evenly
from lit_reason.tasks import Arithmetic
from tests.helpers.trainers import quiet_trainer


def test_round_problems_walk_through_seeded_shuffles(small_task):
    data = RolloutDataModule(task=small_task, questions_per_round=300, seed=3)
    rounds = [data.round_problems(r) for r in range(7)]
    assert all(len(r) == 300 for r in rounds)
    first_pass = [p.id for r in rounds for p in r][:2000]
    assert sorted(first_pass) == sorted(p.id for p in small_task.problems("train"))  # no repeats within a pass
    assert [p.id for p in RolloutDataModule(task=small_task, questions_per_round=300, seed=3).round_problems(4)] == [
        p.id for p in rounds[4]
    ]
    assert [p.id for p in RolloutDataModule(task=small_task, questions_per_round=300, seed=4).round_problems(0)] != [
        p.id for p in rounds[0]
    ]
    assert len(RolloutDataModule(task=small_task).round_problems(0)) == 2000


@pytest.mark.parametrize(("size", "per_round"), [(10, 4), (10, 7), (10, 10), (9, 3), (7, 6)])
def test_no_round_asks_a_question_twice_and_every_pass_asks_each_once(size, per_round):
    # A round crossing into the next pass took the tail of one shuffle and the head of the next: a question in
    # both was asked twice, and its rows, seeded alike, drew identical samples.
    task = Arithmetic(train_size=size, validation_size=0, test_size=0)
    data = RolloutDataModule(task=task, questions_per_round=per_round, seed=1)
    rounds = [[p.id for p in data.round_problems(r)] for r in range(30)]
    assert all(len(set(ids)) == per_round for ids in rounds)
    stream = [i for ids in rounds for i in ids]
    passes = [stream[start : start + size] for start in range(0, len(stream) - size + 1, size)]
    assert all(sorted(one_pass) == sorted(p.id for p in task.problems("train")) for one_pass in passes)


def test_a_trainer_that_would_keep_the_first_round_s_data_is_refused():
    trainer = quiet_trainer(max_epochs=2, reload_dataloaders_every_n_epochs=0)
    data = RolloutDataModule(task=Arithmetic(train_size=40, validation_size=4, test_size=4), questions_per_round=8)
    with pytest.raises(ValueError, match=r"Trainer\(reload_dataloaders_every_n_epochs=1\)"):
        trainer.fit(SFT(policy=PolicySpec(name_or_path="micro"), batch_size=4), data)


def test_shard_evenly_pads_with_repeats(small_task):
    problems = small_task.problems("validation")[:5]
    shards = [shard_evenly(problems, rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    assert {p.id for s in shards for p in s} == {p.id for p in problems}
    assert shards[1][-1].id == problems[0].id  # the padding repeats the start; metrics count it once
    assert shard_evenly(problems, 0, 1) == problems
    # Fewer problems than ranks: every rank still gets one (an empty rank would wait alone in a collective).
    assert [shard_evenly(problems[:2], rank, 8) for rank in range(8)] == [[problems[rank % 2]] for rank in range(8)]


class FakeModule:
    device = "cpu"

    def __init__(self):
        self.calls = []

    def make_train_data(self, problems, round_index):
        self.calls.append(round_index)
        return TrainData(
            batches=[[p.id for p in problems[i : i + 2]] for i in range(0, len(problems), 2)],
            samples_drawn=4 * len(problems),
        )


class FakeTrainer:
    def __init__(self, module, epoch, batches_done=0):
        self.lightning_module = module
        self.current_epoch = epoch
        self.global_step, self.num_training_batches = 0, 3
        progress = SimpleNamespace(current=SimpleNamespace(completed=batches_done, processed=batches_done))
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))


def test_train_dataloader_counts_samples_and_skips_rounds_completed_before_a_checkpoint(small_task):
    data = RolloutDataModule(task=small_task, questions_per_round=6)
    module = FakeModule()
    data.trainer = FakeTrainer(module, epoch=0)
    loader = data.train_dataloader()
    assert isinstance(loader, DataLoader) and len(loader) == 3 and data.samples_drawn == 24
    restored = RolloutDataModule(task=small_task, questions_per_round=6)
    restored.load_state_dict(data.state_dict())
    restored.trainer = FakeTrainer(module, epoch=0, batches_done=3)  # Lightning asks for the checkpoint's epoch
    assert len(restored.train_dataloader()) == 1 and module.calls == [0] and restored.samples_drawn == 24
    restored.trainer = FakeTrainer(module, epoch=1)
    assert len(restored.train_dataloader()) == 3 and module.calls == [0, 1] and restored.samples_drawn == 48


def test_eval_dataloader_limits_and_batches(small_task):
    data = RolloutDataModule(task=small_task, validation_questions=10, eval_batch_size=4)
    batches = list(data.val_dataloader())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [p.id for b in batches for p in b] == [p.id for p in small_task.problems("validation")[:10]]


@pytest.mark.parametrize("option", ["validation_questions", "test_questions"])
def test_a_negative_number_of_evaluation_questions_is_an_error_naming_the_option(small_task, option):
    # Used as a slice end, -3 silently left out the last three questions.
    with pytest.raises(ValueError, match=rf"data\.{option} must be at least 0 \(or null: all\), got -3"):
        RolloutDataModule(task=small_task, **{option: -3})


def test_task_defaults_to_the_built_in_arithmetic():
    from lit_reason.tasks import Arithmetic

    assert isinstance(RolloutDataModule().task, Arithmetic)


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_equal_for_any_world_size(small_task, world_size):
    problems = small_task.problems("validation")[:7]
    assert len({len(shard_evenly(problems, r, world_size)) for r in range(world_size)}) == 1


def test_fewer_questions_a_round_than_ranks_is_an_error_saying_what_to_set(small_task, monkeypatch):
    monkeypatch.setattr("lit_reason.data.rank_and_world_size", lambda: (0, 4))
    data = RolloutDataModule(task=small_task, questions_per_round=3)
    with pytest.raises(ValueError, match=r"questions_per_round is 3 but the run has 4 ranks.*at least 4"):
        data.setup("fit")


def test_a_round_of_more_questions_than_the_training_split_is_an_error_saying_what_to_set(small_task):
    # It asked some questions twice a round: their samples' seeds are their ids, so the same samples, twice.
    questions = len(small_task.problems("train"))
    with pytest.raises(ValueError, match=rf"questions_per_round is {questions + 1} but the training split holds"):
        RolloutDataModule(task=small_task, questions_per_round=questions + 1).setup("fit")
    RolloutDataModule(task=small_task, questions_per_round=questions + 1).setup("validate")  # no round there
    with pytest.raises(ValueError, match="data.eval_batch_size must be at least 1, got 0"):
        RolloutDataModule(task=small_task, eval_batch_size=0)


@pytest.mark.parametrize(
    ("saved_data_seed", "resumed_data_seed", "fix"),
    [(7, None, "--data.seed=7"), (None, 7, "--data.seed=3")],  # the order followed --seed_everything=3
)
def test_a_fit_resumed_with_data_seed_left_out_or_added_is_refused(
    small_task, monkeypatch, saved_data_seed, resumed_data_seed, fix
):
    # Only the options given were compared: a data.seed left out (or added) reordered the questions unnoticed.
    from lightning.pytorch.trainer.states import TrainerFn

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    state = RolloutDataModule(task=small_task, seed=saved_data_seed).state_dict()
    data = RolloutDataModule(task=small_task, seed=resumed_data_seed)
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    with pytest.raises(ValueError, match=rf"the question order and the rollouts follow them.*resume with {fix}$"):
        data.load_state_dict(state)
    data.seed = 3 if saved_data_seed is None else saved_data_seed  # the same order: resumed
    data.load_state_dict(state)


class CheckpointThenCrash(Callback):
    """Save a checkpoint after ``step`` optimizer steps (mid-round, as every_n_train_steps does), or during the
    step after them (before its optimizer step, as a signal handler may), then fail."""

    def __init__(self, step: int, path: Path, during_step: bool = False) -> None:
        self.step, self.path, self.during_step = step, path, during_step

    def on_before_optimizer_step(self, trainer, *args) -> None:
        if self.during_step:
            self._checkpoint_and_crash(trainer)

    def on_train_batch_end(self, trainer, *args) -> None:
        if not self.during_step:
            self._checkpoint_and_crash(trainer)

    def _checkpoint_and_crash(self, trainer) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("crash")


class RecordRoundStatistics(Callback):
    """The round statistics and samples drawn that each round logged."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        logged = trainer.callback_metrics.items()
        self.rounds.append({k: float(v) for k, v in logged if k.startswith("round/") or k == "samples_drawn"})


def mid_round_run(algorithm: str, tmp_path: Path, *callbacks: Callback, ckpt_path=None):
    """Two rounds of 4 batches each (16 questions a round), dropout on: (trainer, data, policy weights)."""
    policy = PolicySpec(name_or_path="micro", seed=1, preset_overrides={"attention_dropout": 0.5})
    if algorithm == "sft":
        module = SFT(policy=policy, batch_size=4)
    else:  # a round whose data is sampled, which a resumed run cannot make again
        rollout = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=4)
        module = GRPO(policy=policy, rollout=rollout, minibatch_size=8, ppo_epochs=1)
    data = RolloutDataModule(task=Arithmetic(train_size=64, validation_size=4, test_size=4), questions_per_round=16)
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=list(callbacks), default_root_dir=tmp_path)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, data, torch.cat([p.detach().flatten() for p in module.policy.parameters()])


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "during_step"), [("sft", False), ("grpo", False), ("sft", True)])
def test_a_run_resumed_from_a_checkpoint_taken_mid_round_ends_as_an_uninterrupted_one(algorithm, during_step, tmp_path):
    """A mid-round checkpoint (every_n_train_steps, val_check_interval < 1, max_steps) holds every rank's batches
    of the round: the resumed run trains on the rest of them and ends bit for bit where an uninterrupted run
    does, having logged the same round statistics. (Resuming served the done-round placeholder to
    ``training_step``: a crash; and the resumed round's statistics were never logged: it has no epoch start.)"""
    torch.manual_seed(0)
    whole_rounds = RecordRoundStatistics()
    trainer, data, uninterrupted = mid_round_run(algorithm, tmp_path / "whole", whole_rounds)
    assert trainer.global_step == 8
    checkpoint = tmp_path / "mid-round.ckpt"
    with pytest.raises(RuntimeError, match="crash"):
        mid_round_run(algorithm, tmp_path / "crashed", CheckpointThenCrash(2, checkpoint, during_step))
    saved = torch.load(checkpoint, weights_only=True)["RolloutDataModule"]["round_in_progress"]
    assert saved["batches_started"] == 2 and len(saved["by_rank"]) == 1 and len(saved["by_rank"][0]["batches"]) == 4
    torch.manual_seed(1)  # where a new process's generator happens to be
    resumed_rounds = RecordRoundStatistics()
    resumed_trainer, resumed_data, resumed = mid_round_run(
        algorithm, tmp_path / "resumed", resumed_rounds, ckpt_path=checkpoint
    )
    assert resumed_trainer.global_step == 8 and resumed_data.samples_drawn == data.samples_drawn
    assert torch.equal(resumed, uninterrupted)
    assert resumed_rounds.rounds == whole_rounds.rounds and whole_rounds.rounds[0]["round/index"] == 0


def _round_saved_and_resumed(rank: int, world_size: int) -> tuple[list[list[int]], int, int]:
    """Each rank is one batch into a round of two (its own); rank 0's checkpoint, the one written, resumes it."""
    from lit_reason.batches import TokenBatch
    from lit_reason.distributed import gather_objects

    def batch(value: int) -> TokenBatch:
        ids = torch.full((1, 2), value)
        return TokenBatch(ids, torch.ones_like(ids), ids > 0)

    data = RolloutDataModule(task=Arithmetic(train_size=8, validation_size=2, test_size=2))
    trained = SimpleNamespace(
        epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(processed=1))),
        epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=0, completed=0)),
    )
    data.trainer = SimpleNamespace(
        num_training_batches=2, global_step=1, current_epoch=0, accumulate_grad_batches=1, fit_loop=trained
    )
    data.round_data = TrainData([batch(10 * rank), batch(10 * rank + 1)], samples_drawn=4, stats={"rank": rank})
    data.rounds_built, data.round_batches, data.batches_started = 1, 2, 1
    (written, *_) = gather_objects([data.state_dict()])
    resumed = RolloutDataModule(task=Arithmetic(train_size=8, validation_size=2, test_size=2))
    resumed.load_state_dict(written)
    resumed.trainer = FakeTrainer(None, epoch=0, batches_done=1)
    loader = resumed.train_dataloader()
    return [b.input_ids[0].tolist() for b in loader], len(loader), resumed.round_data.stats["rank"]


def test_a_mid_round_checkpoint_holds_every_rank_s_batches_and_each_rank_resumes_its_own():
    """Only rank 0 writes the checkpoint: every rank's batches of the round must be in it."""
    from tests.helpers.distributed import run_in_processes

    assert run_in_processes(_round_saved_and_resumed, timeout=120) == [([[1, 1]], 2, 0), ([[11, 11]], 2, 1)]


class CheckpointAtEpochEnd(Callback):
    """Save a checkpoint where the CLI's ``last_checkpoint`` does: at every epoch's end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, *args) -> None:
        trainer.save_checkpoint(self.path)


@pytest.mark.slow
def test_a_fit_that_max_steps_stopped_mid_round_resumes_at_the_next_round_and_says_so(tmp_path):
    """Lightning resumes the last.ckpt of a fit stopped mid-round by max_steps at its epoch's end: the rest of
    the round is not in it (it said it resumed the round, then trained the next one), and a warning says so."""
    checkpoint = tmp_path / "last.ckpt"
    policy = PolicySpec(name_or_path="micro", seed=1)
    task = Arithmetic(train_size=64, validation_size=4, test_size=4)
    for max_steps, ckpt_path in ((2, None), (-1, checkpoint)):
        data = RolloutDataModule(task=task, questions_per_round=16)
        callbacks = [CheckpointAtEpochEnd(checkpoint)]
        trainer = quiet_trainer(max_epochs=2, max_steps=max_steps, limit_val_batches=0, callbacks=callbacks)
        if ckpt_path is None:
            trainer.fit(SFT(policy=policy, batch_size=4), data)
            assert "round_in_progress" not in torch.load(checkpoint, weights_only=True)["RolloutDataModule"]
        else:
            with pytest.warns(UserWarning, match=r"before round 0 ended \(a run stopped by max_steps\?\)"):
                trainer.fit(SFT(policy=policy, batch_size=4), data, ckpt_path=ckpt_path)
    assert trainer.global_step == 2 + 4 and data.rounds_built == 2
