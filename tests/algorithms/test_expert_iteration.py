"""Expert Iteration on hand-made samples: filtering, deduplication, accumulation, restarts, resuming."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_reason import ExpertIteration, PolicySpec, RolloutDataModule, SamplingConfig
from lit_reason.algorithms.expert_iteration import KeptSample, dedupe_key
from lit_reason.sampling import SampleBatch
from lit_reason.tasks import Arithmetic
from tests.conftest import sft_fixture_task
from tests.helpers.trainers import quiet_trainer

TASK = dict(train_size=40, validation_size=4, test_size=4)


def hand_made_batch(texts: list[list[str]], truncated: set[tuple[int, int]] = frozenset()) -> SampleBatch:
    """A SampleBatch with the given responses (texts[p][k] is sample k of prompt p)."""
    flat = [t for row in texts for t in row]
    k = len(texts[0])
    return SampleBatch(
        input_ids=torch.zeros(len(flat), 1, dtype=torch.long),
        attention_mask=torch.ones(len(flat), 1, dtype=torch.long),
        response_mask=torch.zeros(len(flat), 1, dtype=torch.bool),
        logprobs=torch.zeros(len(flat), 1),
        truncated=torch.tensor([(i // k, i % k) in truncated for i in range(len(flat))]),
        prompt_index=torch.arange(len(flat)) // k,
        texts=flat,
        prompt_length=1,
    )


def scripted_rounds(problems_per_round: list[list[list[str]]]):
    """A ``generate`` that returns hand-made responses for round r (answers written relative to the problem:
    "{answer}" becomes the right answer, "{wrong}" a wrong one)."""

    def generate(module, problems, config, seed_parts, description):
        round_index = seed_parts[1]
        texts = [
            [t.format(answer=int(p.answer), wrong=int(p.answer) + 1) for t in row]
            for p, row in zip(problems, problems_per_round[round_index], strict=True)
        ]
        truncated = {(0, 3)} if round_index == 0 else set()
        return hand_made_batch(texts, truncated)

    return generate


ROUND_0 = [
    [
        "7+1=<<7+1=8>>8\n#### {answer}",
        "7+1=<<7+1=8>>8\n####  {answer} ",
        "#### {wrong}",
        "#### {answer}",
    ],  # 3rd: truncated
    ["#### {wrong}", "so 2+2=4\n#### {answer}", "#### {wrong}", "#### {wrong}"],
]
ROUND_1 = [
    ["7+1=<<7+1=8>>8\n#### {answer}", "then 7+1=<<7+1=8>>8\n#### {answer}", "#### {wrong}", "#### {wrong}"],
    ["#### {wrong}", "#### {wrong}", "#### {wrong}", "#### {wrong}"],
]


class Recorder(Callback):
    """Records, at the start of each round's training, what the round trains on and from what weights."""

    def __init__(self):
        self.rounds = []

    def on_train_epoch_start(self, trainer, module):
        self.rounds.append(
            {
                "kept": [(s.problem_id, s.text) for s in module.kept.values()],
                "batches": trainer.num_training_batches,
                "weights": {k: v.clone() for k, v in module.policy.state_dict().items()},
                "optimizer_state": len(trainer.optimizers[0].state),
                "samples_drawn": trainer.datamodule.samples_drawn,
                "stats": dict(trainer.datamodule.round_data.stats),
            }
        )


def run_ei(tmp_path, restart_from="previous", dedupe="text", rounds=2, **kwargs):
    module = ExpertIteration(
        policy=PolicySpec(name_or_path="micro"),
        base_policy=PolicySpec(name_or_path="micro", seed=7),
        rollout=SamplingConfig(num_samples=4, max_new_tokens=8),
        restart_from=restart_from,
        dedupe=dedupe,
        batch_size=2,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        **kwargs,
    )
    module.generate = partial(scripted_rounds([ROUND_0, ROUND_1]), module)
    recorder = Recorder()
    trainer = quiet_trainer(
        max_epochs=rounds,
        limit_val_batches=0,
        callbacks=[recorder],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, RolloutDataModule(task=Arithmetic(**TASK), questions_per_round=2))
    return module, recorder


def test_filters_dedupes_and_accumulates(tmp_path):
    module, recorder = run_ei(tmp_path)
    first, second = recorder.rounds
    problems = module.trainer.datamodule.round_problems(0)
    a, b = (int(p.answer) for p in problems)
    # Round 0: question 0 keeps the annotated solution once (the copy differs only in whitespace); its
    # correct-but-truncated sample is dropped; question 1 keeps its one correct sample.
    assert first["kept"] == [(problems[0].id, f"7+1=<<7+1=8>>8\n#### {a}"), (problems[1].id, f"so 2+2=4\n#### {b}")]
    assert first["stats"]["correct_fraction"] == pytest.approx(4 / 8)
    assert first["stats"]["questions_solved"] == 1.0 and first["stats"]["new_unique_kept"] == 2
    assert first["batches"] == 1  # 2 kept examples, batch size 2
    assert first["samples_drawn"] == 8
    # Round 1 (new questions): everything kept before stays, new correct samples join: D_1 = R_1 ∪ D_0.
    problems_1 = module.trainer.datamodule.round_problems(1)
    a1 = int(problems_1[0].answer)
    assert second["kept"] == first["kept"] + [
        (problems_1[0].id, f"7+1=<<7+1=8>>8\n#### {a1}"),
        (problems_1[0].id, f"then 7+1=<<7+1=8>>8\n#### {a1}"),
    ]
    assert second["batches"] == 2 and second["samples_drawn"] == 16


def test_dedupe_by_operations_keeps_one_per_calculation_sequence(tmp_path):
    module, recorder = run_ei(tmp_path, dedupe="operations")
    assert len(recorder.rounds[1]["kept"]) == len(recorder.rounds[0]["kept"]) + 1  # "7+1" twice counts once
    same = KeptSample(1, "a 3+4=<<3+4=7>>7\n#### 7")
    assert dedupe_key(same, "operations") == dedupe_key(KeptSample(1, "b 3+4=<<3+4=7>>7\n#### 7"), "operations")
    assert dedupe_key(same, "text") != dedupe_key(KeptSample(1, "b 3+4=<<3+4=7>>7\n#### 7"), "text")


@pytest.mark.parametrize("restart_from", ["previous", "warm_start", "base"])
def test_restart_from(tmp_path, restart_from):
    module, recorder = run_ei(tmp_path, restart_from=restart_from)
    initial = ExpertIteration(policy=PolicySpec(name_or_path="micro"))
    initial.configure_model()
    base = ExpertIteration(policy=PolicySpec(name_or_path="micro", seed=7))
    base.configure_model()
    second = recorder.rounds[1]["weights"]
    matches = {
        name: all(torch.equal(second[k], v) for k, v in reference.policy.state_dict().items())
        for name, reference in [("warm_start", initial), ("base", base)]
    }
    if restart_from == "previous":
        assert not any(matches.values())  # continued from round 0's training
        assert recorder.rounds[1]["optimizer_state"] > 0
    else:
        assert matches[restart_from] and not matches[{"warm_start": "base", "base": "warm_start"}[restart_from]]
        assert recorder.rounds[1]["optimizer_state"] == 0  # optimizer state reset too


def test_base_restart_needs_a_base_policy():
    with pytest.raises(ValueError, match="base_policy"):
        ExpertIteration(restart_from="base")


def test_a_round_with_nothing_to_train_on_says_what_to_do(tmp_path, monkeypatch):
    nothing_right = [["#### {wrong}"] * 4] * 2
    monkeypatch.setattr("tests.algorithms.test_expert_iteration.ROUND_0", nothing_right)
    with pytest.raises(RuntimeError, match="reference_solutions"):
        run_ei(tmp_path, rounds=1)


def test_every_rank_trains_on_kept_samples_even_when_there_are_fewer_than_ranks(tmp_path, monkeypatch):
    # Two kept samples on four ranks: the rounded-down share of each rank was none, and the round stopped with
    # "no correct sample has been kept yet". Every rank gets one, and none is left out.
    module, _ = run_ei(tmp_path, rounds=1)
    kept = [sample.text for sample in module.kept.values()]
    shares = []
    for rank in range(4):
        monkeypatch.setattr("lit_reason.algorithms.expert_iteration.rank_and_world_size", lambda rank=rank: (rank, 4))
        shares.append([module.tokenizer.decode(target) for (_, target), _ in module.round_examples(1)])
    assert [len(share) for share in shares] == [1, 1, 1, 1]
    assert all(any(text in target for target in sum(shares, [])) for text in kept)


def test_reference_solutions_are_mixed_in(tmp_path):
    module, recorder = run_ei(tmp_path, reference_solutions=6, rounds=1)
    assert recorder.rounds[0]["stats"]["train_examples"] == 2 + 6


def test_resume_after_round_two_keeps_data_round_and_count(tmp_path, sft_policy_dir):
    def make(max_epochs, callbacks):
        module = ExpertIteration(
            policy=PolicySpec(name_or_path=str(sft_policy_dir)),
            rollout=SamplingConfig(num_samples=4, temperature=1.0, max_new_tokens=64),
            batch_size=8,
            evaluation=SamplingConfig(num_samples=2, temperature=0.7, max_new_tokens=64),
        )
        trainer = quiet_trainer(
            max_epochs=max_epochs,
            callbacks=callbacks,
            default_root_dir=tmp_path,
            enable_checkpointing=True,
        )
        data = RolloutDataModule(task=sft_fixture_task(), questions_per_round=12, validation_questions=4)
        return module, trainer, data

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module, trainer, data = make(2, [checkpoint])
    trainer.fit(module, data)
    kept_after_two = list(module.kept.values())
    assert kept_after_two and data.samples_drawn == 2 * 12 * 4

    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # primitives and tensors only
    assert saved["epoch"] == 1 and len(saved["kept_samples"]) == len(kept_after_two)

    recorder = Recorder()
    resumed, trainer, data = make(3, [recorder])
    seen_at_restore = {}
    original = resumed.on_load_checkpoint

    def on_load(checkpoint):
        original(checkpoint)
        seen_at_restore["kept"] = list(resumed.kept.values())

    resumed.on_load_checkpoint = on_load
    trainer.fit(resumed, data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert seen_at_restore["kept"] == kept_after_two
    assert (
        len(recorder.rounds) == 1
        and resumed.current_epoch == 3
        and trainer.fit_loop.epoch_progress.current.completed == 3
    )
    assert recorder.rounds[0]["samples_drawn"] == 3 * 12 * 4  # round 2 added to the restored count
    assert recorder.rounds[0]["kept"][: len(kept_after_two)] == [(s.problem_id, s.text) for s in kept_after_two]


def test_learning_rate_schedule_restarts_every_round(tmp_path):
    from lit_reason.schedule import LRSchedule
    from tests.algorithms.test_base import LearningRates

    module = ExpertIteration(
        policy=PolicySpec(name_or_path="micro"),
        rollout=SamplingConfig(num_samples=4, max_new_tokens=8),
        batch_size=2,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        lr_schedule=LRSchedule(warmup_steps=0, decay="linear", min_lr_ratio=0.0),
    )
    module.generate = partial(scripted_rounds([ROUND_0, ROUND_1]), module)
    rates = LearningRates()
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[rates], default_root_dir=tmp_path)
    trainer.fit(module, RolloutDataModule(task=Arithmetic(**TASK), questions_per_round=2))
    # Round 0 trains 1 batch, round 1 2 (the kept data grows): each round's window starts at the full rate.
    assert [(round_index, lr) for round_index, (lr,) in rates.steps] == [(0, 1e-2), (1, 1e-2), (1, 0.5e-2)]
