import copy
import math

import pytest
import torch

from lit_reason.algorithms.base import LRSchedule, make_token_batch, next_token_nll
from lit_reason.sampling import position_ids_from_mask


def test_next_token_nll_by_hand():
    # Vocabulary of 3; sequence [0, 1, 2]; the loss covers only the last token (2), predicted at position 1.
    logits = torch.zeros(1, 3, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, math.log(2.0)])  # p(2) = 2 / 4
    input_ids = torch.tensor([[0, 1, 2]])
    loss_mask = torch.tensor([[False, False, True]])
    total, count = next_token_nll(logits, input_ids, loss_mask)
    assert count.item() == 1
    assert total.item() == pytest.approx(-math.log(0.5))
    total, count = next_token_nll(
        logits, input_ids, torch.tensor([[True, True, True]])
    )  # position 0 is never predicted
    assert count.item() == 2
    assert total.item() == pytest.approx(math.log(3.0) - math.log(0.5))


def test_make_token_batch_masks_targets_only():
    batch = make_token_batch([([1, 5, 6], [7, 2]), ([1, 5], [8, 9, 2])], pad_token_id=0)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 2], [1, 5, 8, 9, 2]]
    assert batch.loss_mask.tolist() == [[False, False, False, True, True], [False, False, True, True, True]]
    short = make_token_batch([([1], [2]), ([1, 5, 6], [2])], pad_token_id=0)
    assert short.input_ids.tolist() == [[1, 2, 0, 0], [1, 5, 6, 2]]
    assert short.attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert short.loss_mask.tolist() == [[False, True, False, False], [False, False, False, True]]


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_lr_schedule_by_hand():
    schedule = LRSchedule(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    assert [schedule.factor(s, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.factor(4, 104) == pytest.approx(1.0)
    assert schedule.factor(54, 104) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.factor(104, 104) == pytest.approx(0.1)
    assert schedule.factor(500, 104) == pytest.approx(0.1)
    linear = LRSchedule(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert linear.factor(25, 100) == pytest.approx(0.75)
    assert LRSchedule(decay="constant").factor(99, 100) == 1.0


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
