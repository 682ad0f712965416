import copy
from functools import partial

import pytest
import torch
from lightning import Callback, Trainer

from lit_reason.schedule import LRSchedule
from tests.helpers.trainers import quiet_trainer


@pytest.fixture(scope="module")
def subword_tokenizers():
    from lit_reason.tasks import Arithmetic
    from tests.helpers.tokenizers import byte_level_bpe, sentencepiece_style

    task = Arithmetic(train_size=300, validation_size=10, test_size=10)
    texts = [f"Question: {p.question}\nAnswer: {p.solution}" for p in task.problems("train")]
    return {"byte_level_bpe": byte_level_bpe(texts), "sentencepiece_style": sentencepiece_style(texts)}


@pytest.mark.parametrize("prompt_style", ["plain", "few_shot"])
@pytest.mark.parametrize("tokenizer_name", ["char", "byte_level_bpe", "sentencepiece_style"])
def test_training_targets_continue_the_prompt_as_sampling_does(
    tokenizer_name, prompt_style, subword_tokenizers, char_tokenizer
):
    """Prompt ids + target ids decode to prompt + target (no word-start marker a lone target would get), and
    where the joint tokenization keeps the prompt's tokens they are exactly its tokens: what a model continuing
    the prompt produces. Also behind RCRL's return token."""
    from lit_reason import SFT, PolicySpec, ReturnConditionedRL, RolloutDataModule
    from lit_reason.algorithms.expert_iteration import KeptSample
    from lit_reason.sampling import encode_prompt
    from lit_reason.tasks import Arithmetic
    from tests.helpers.fakes import FakeTrainer

    tokenizer = char_tokenizer if tokenizer_name == "char" else subword_tokenizers[tokenizer_name]
    task = Arithmetic(train_size=300, validation_size=10, test_size=10, prompt_style=prompt_style)
    sft = SFT(policy=PolicySpec(name_or_path="micro"))
    rcrl = ReturnConditionedRL(policy=PolicySpec(name_or_path="micro"))
    good = rcrl.good_token
    sft.tokenizer = tokenizer
    rcrl.tokenizer = copy.deepcopy(tokenizer)
    rcrl.tokenizer.add_tokens([good, rcrl.bad_token], special_tokens=True)
    for module in (sft, rcrl):
        module._trainer = FakeTrainer(RolloutDataModule(task=task))
    joint_matches = 0
    for problem in task.problems("train")[40:60]:
        prompt, target = task.prompt(problem), task.target(problem)
        prompt_ids, target_ids = sft.encode_example(problem, target)
        assert prompt_ids == encode_prompt(tokenizer, prompt) and target_ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(prompt_ids + target_ids[:-1], skip_special_tokens=True) == prompt + target
        joint = encode_prompt(tokenizer, prompt + target)
        if joint[: len(prompt_ids)] == prompt_ids:
            joint_matches += 1
            assert target_ids[:-1] == joint[len(prompt_ids) :]
        conditioned_ids, response_ids = rcrl.encode_sample(problem, KeptSample(problem.id, target, correct=True))
        assert conditioned_ids[-1] == rcrl.tokenizer.convert_tokens_to_ids(good)
        decoded = rcrl.tokenizer.decode(conditioned_ids + response_ids[:-1], skip_special_tokens=False)
        assert decoded.endswith(good + target), (decoded[-60:], good + target)
    assert joint_matches >= 10  # the common case is checked token for token


class LearningRates(Callback):
    """Every optimizer step's learning rate of each parameter group, and the round it was taken in."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps.append((trainer.current_epoch, [group["lr"] for group in trainer.optimizers[0].param_groups]))


def sft_run(
    schedule: LRSchedule, max_epochs: int, tmp_path, ckpt_path=None, max_steps: int = -1
) -> tuple[LearningRates, Trainer]:
    from lit_reason import SFT, PolicySpec, RolloutDataModule
    from lit_reason.tasks import Arithmetic

    module = SFT(
        policy=PolicySpec(name_or_path="micro"),
        batch_size=8,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        lr_schedule=schedule,
    )
    rates = LearningRates()
    trainer = quiet_trainer(
        max_epochs=max_epochs, max_steps=max_steps, limit_val_batches=0, callbacks=[rates], default_root_dir=tmp_path
    )
    task = Arithmetic(train_size=64, validation_size=4, test_size=4)
    trainer.fit(module, RolloutDataModule(task=task, questions_per_round=16), ckpt_path=ckpt_path)
    return rates, trainer


def test_learning_rate_follows_the_schedule_at_every_step_and_after_resuming(tmp_path):
    schedule = LRSchedule(warmup_steps=2, decay="cosine", min_lr_ratio=0.1)
    expected = [1e-2 * schedule.factor(step, 6) for step in range(6)]  # 3 rounds of 2 batches
    rates, _ = sft_run(schedule, 3, tmp_path / "whole")
    assert [lr for _, (lr,) in rates.steps] == pytest.approx(expected)
    _, first_round = sft_run(schedule, 1, tmp_path / "first")
    first_round.save_checkpoint(tmp_path / "round0.ckpt")
    resumed, _ = sft_run(schedule, 3, tmp_path / "resumed", ckpt_path=tmp_path / "round0.ckpt")
    assert [lr for _, (lr,) in resumed.steps] == pytest.approx(expected[2:])


def test_a_run_capped_by_max_steps_decays_over_max_steps(tmp_path):
    # 3 rounds of 2 batches end the run after 6 steps; the schedule's window is max_steps (10) all the same.
    schedule = LRSchedule(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    rates, _ = sft_run(schedule, 3, tmp_path, max_steps=10)
    assert [lr for _, (lr,) in rates.steps] == pytest.approx([1e-2 * (1 - step / 10) for step in range(6)])


class CheckpointAtFirstRoundEndThenCrash(Callback):
    def __init__(self, path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer, module) -> None:
        trainer.save_checkpoint(self.path)  # where ModelCheckpoint saves last.ckpt
        raise RuntimeError("crash")


def test_a_resumed_run_draws_the_dropout_masks_an_uninterrupted_one_does(tmp_path):
    """Dropout draws from the global generator, which a checkpoint does not hold (a resumed process starts it
    elsewhere): seeded per batch, the run resumed after its first round ends with the same weights."""
    from lit_reason import SFT, PolicySpec, RolloutDataModule
    from lit_reason.tasks import Arithmetic

    def run(*callbacks: Callback, ckpt_path=None) -> torch.Tensor:
        policy = PolicySpec(name_or_path="micro", seed=1, preset_overrides={"attention_dropout": 0.5})
        module = SFT(policy=policy, batch_size=8, optimizer=partial(torch.optim.AdamW, lr=1e-2))
        trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path, callbacks=list(callbacks))
        task = Arithmetic(train_size=64, validation_size=4, test_size=4)
        trainer.fit(module, RolloutDataModule(task=task, questions_per_round=16), ckpt_path=ckpt_path)
        return torch.cat([p.detach().flatten() for p in module.policy.parameters()])

    torch.manual_seed(0)
    uninterrupted = run()
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="crash"):
        run(CheckpointAtFirstRoundEndThenCrash(tmp_path / "round0.ckpt"))
    torch.manual_seed(1)  # where a new process's generator happens to be
    resumed = run(ckpt_path=tmp_path / "round0.ckpt")
    assert torch.equal(resumed, uninterrupted)


def test_a_module_fit_again_counts_the_new_fit_s_rounds():
    from lit_reason import SFT, PolicySpec, RolloutDataModule
    from lit_reason.tasks import Arithmetic

    module = SFT(policy=PolicySpec(name_or_path="micro"), batch_size=8)
    windows = []

    class Window(Callback):
        def on_train_batch_start(self, trainer, pl_module, *args) -> None:
            windows.append(pl_module.steps.run_steps)

    for max_epochs in (1, 3):  # 2 batches a round: windows of 2, then 6 steps
        data = RolloutDataModule(task=Arithmetic(train_size=64, validation_size=4, test_size=4), questions_per_round=16)
        quiet_trainer(max_epochs=max_epochs, limit_val_batches=0, callbacks=[Window()]).fit(module, data)
    assert windows == [2, 2] + [6] * 6
