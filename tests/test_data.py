import pytest
from torch.utils.data import DataLoader

from lit_reason import RolloutDataModule, TrainData
from lit_reason.data import shard_evenly


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


def test_shard_evenly_pads_with_repeats(small_task):
    problems = small_task.problems("validation")[:5]
    shards = [shard_evenly(problems, rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    assert {p.id for s in shards for p in s} == {p.id for p in problems}
    assert shards[1][-1].id == problems[0].id  # the padding repeats the start; metrics count it once
    assert shard_evenly(problems, 0, 1) == problems


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
    def __init__(self, module, epoch):
        self.lightning_module = module
        self.current_epoch = epoch


def test_train_dataloader_counts_samples_and_skips_rounds_completed_before_a_checkpoint(small_task):
    data = RolloutDataModule(task=small_task, questions_per_round=6)
    module = FakeModule()
    data.trainer = FakeTrainer(module, epoch=0)
    loader = data.train_dataloader()
    assert isinstance(loader, DataLoader) and len(loader) == 3 and data.samples_drawn == 24
    restored = RolloutDataModule(task=small_task, questions_per_round=6)
    restored.load_state_dict(data.state_dict())
    restored.trainer = FakeTrainer(module, epoch=0)  # Lightning asks for the checkpoint's epoch again
    assert len(restored.train_dataloader()) == 1 and module.calls == [0] and restored.samples_drawn == 24
    restored.trainer = FakeTrainer(module, epoch=1)
    assert len(restored.train_dataloader()) == 3 and module.calls == [0, 1] and restored.samples_drawn == 48


def test_eval_dataloader_limits_and_batches(small_task):
    data = RolloutDataModule(task=small_task, validation_questions=10, eval_batch_size=4)
    batches = list(data.val_dataloader())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [p.id for b in batches for p in b] == [p.id for p in small_task.problems("validation")[:10]]


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
