import math
import sys
from types import SimpleNamespace

import pytest
import torch

from lit_reason.algorithms.ppo import CriticConfig
from lit_reason.rewards import (
    RewardConfig,
    RewardFunction,
    batch_steps,
    heuristic_step_rewards,
    kl_penalty,
    matched_result_credits,
    orm_step_rewards,
    reward_on_last_token,
    step_ends,
    successes,
)
from lit_reason.rl.advantages import GAE
from lit_reason.rl.losses import PPOLoss
from lit_reason.tasks import Arithmetic


def test_step_ends_split_responses_into_lines(char_tokenizer):
    text = "3+4=<<3+4=7>>7\n7*2=<<7*2=14>>14\n#### 14"
    ids = char_tokenizer(text, add_special_tokens=False).input_ids + [char_tokenizer.eos_token_id]
    steps = step_ends(char_tokenizer, ids)
    assert [end for end, _ in steps] == [14, 31, len(ids) - 1]  # the two newlines and the EOS
    assert "".join(line for _, line in steps) == text
    assert step_ends(char_tokenizer, []) == []


def test_whole_response_rewards_sit_on_the_last_response_token():
    response_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    rewards = reward_on_last_token(torch.tensor([1.0, 0.5, 9.0]), response_mask)
    expected = torch.zeros(3, 6)
    expected[0, 4] = 1.0
    expected[1, 2] = 0.5  # a one-token response (just EOS) still gets its reward; an empty row gets none
    assert torch.equal(rewards, expected)


def test_orm_step_rewards_are_score_changes_between_step_ends():
    scores = torch.tensor([[0.0, 0.4, 0.5, 0.7, 0.6, 0.9]])  # prompt ends at column 1
    rewards = orm_step_rewards(scores, [[3, 5]], prompt_length=2)
    assert rewards[0].tolist() == pytest.approx([0, 0, 0, 0.7 - 0.4, 0, 0.9 - 0.7])
    assert rewards.sum().item() == pytest.approx(0.9 - 0.4)  # telescopes to last step end minus prompt end


def test_matched_results_credit_each_reference_once():
    references = [12.0, 10.0, 28.0]
    lines = ["9+3=<<9+3=12>>12\n"] * 10 + ["12-2=<<12-2=10>>10\n", "10+5=<<10+5=15>>15\n", "#### 15"]
    credits = matched_result_credits(lines, references)
    assert credits[0] == pytest.approx(1 / 3)
    assert credits[1:10] == [0.0] * 9  # the same right step, repeated: no more credit
    assert credits[10] == pytest.approx(1 / 3) and credits[11] == 0.0 and credits[12] == 0.0
    assert sum(credits) == pytest.approx(2 / 3)
    assert matched_result_credits(["1+1=<<1+1=2>>2"], []) == [0.0]
    # Two results in one line, both references: both count.
    assert matched_result_credits(["<<1+2=3>>3 and <<3*2=6>>6"], [3.0, 6.0]) == [pytest.approx(1.0)]


def test_heuristic_step_rewards_on_a_batch(char_tokenizer):
    prompt = char_tokenizer("Q\n").input_ids  # [BOS, Q, \n]
    responses = ["2+2=<<2+2=4>>4\n#### 4", "2+2=<<2+2=5>>5\n#### 5"]
    rows = [
        prompt + char_tokenizer(r, add_special_tokens=False).input_ids + [char_tokenizer.eos_token_id]
        for r in responses
    ]
    width = max(map(len, rows))
    input_ids = torch.zeros(2, width, dtype=torch.long)
    response_mask = torch.zeros(2, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        response_mask[i, len(prompt) : len(row)] = True
    steps = batch_steps(char_tokenizer, input_ids, response_mask, prompt_length=len(prompt))
    assert [text for _, text in steps[0]] == ["2+2=<<2+2=4>>4\n", "#### 4"]
    rewards = heuristic_step_rewards(steps, [[4.0], [4.0]], (2, width))
    first_newline = len(prompt) + responses[0].index("\n")
    assert rewards[0, first_newline].item() == 1.0 and rewards[0].sum().item() == 1.0
    assert rewards[1].sum().item() == 0.0  # 5 is not the reference's 4
    assert not rewards[~response_mask].any()  # never on prompt or padding


def test_kl_estimators_by_hand():
    logp, logq = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.4)])
    k1 = kl_penalty(logp, logq, "k1")
    assert k1.tolist() == pytest.approx([math.log(2), math.log(0.5)])
    assert kl_penalty(logp, logq, "k2").tolist() == pytest.approx([0.5 * math.log(2) ** 2, 0.5 * math.log(0.5) ** 2])
    assert kl_penalty(logp, logq, "k3").tolist() == pytest.approx([0.5 - 1 + math.log(2), 2.0 - 1 - math.log(2)])
    assert (kl_penalty(logp, logq, "k3") >= 0).all()
    assert kl_penalty(logp, logp, "k3").abs().max().item() == 0.0


def test_settings_out_of_their_range_are_refused():
    # A negative KL coefficient trained, rewarding drift away from the reference.
    with pytest.raises(ValueError, match=r"reward\.kl_coef must be >= 0 \(0: no KL penalty\), got -0\.5"):
        RewardConfig(kl_coef=-0.5)
    with pytest.raises(ValueError, match=r"GAE needs 0 <= gamma <= 1 and 0 <= lam <= 1, got gamma 2"):
        GAE(gamma=2)
    with pytest.raises(ValueError, match=r"the loss needs clip_ratio > 0.*got clip_ratio 0,"):
        PPOLoss(clip_ratio=0)
    with pytest.raises(ValueError, match=r"critic needs lr > 0 \(or null\).*got lr -1"):
        CriticConfig(lr=-1)


def test_a_dense_reward_without_a_weight_is_an_error_not_a_silent_no_op():
    with pytest.raises(
        ValueError, match=r"reward\.dense is heuristic but reward\.dense_coef is 0.*set reward\.dense_coef"
    ):
        RewardConfig(dense="heuristic")
    assert RewardConfig(dense="orm", dense_coef=0.5).dense_coef == 0.5


def test_k1_as_a_loss_term_is_refused_because_its_expected_gradient_is_zero():
    # The exact expectation over the policy's draws of each estimator's gradient, as a loss term differentiates
    # it: k1's is the score function's, 0; k2's is the KL's own gradient.
    logits, reference = torch.tensor([1.0, -0.5, 0.3, 2.0], requires_grad=True), torch.tensor([0.2, 0.1, -1.0, 0.5])
    logp, logq = logits.log_softmax(0), reference.log_softmax(0)
    kl = (logp.exp() * (logp - logq)).sum()
    (kl_gradient,) = torch.autograd.grad(kl, logits, retain_graph=True)
    for estimator, expected in (("k1", torch.zeros(4)), ("k2", kl_gradient)):
        # Draw probabilities are constants (detached): the loss term is differentiated through log p alone.
        expectation = (logp.exp().detach() * kl_penalty(logp, logq, estimator)).sum()
        (gradient,) = torch.autograd.grad(expectation, logits, retain_graph=True)
        assert torch.allclose(gradient, expected, atol=1e-6), estimator
    with pytest.raises(ValueError, match=r"kl_in: loss with reward\.kl_estimator: k1 regularises nothing.*use k2"):
        RewardConfig(kl_in="loss")
    assert RewardConfig(kl_in="loss", kl_coef=0.0).loss_kl_coef == 0  # no term at all: nothing to refuse
    assert RewardConfig(kl_in="loss", kl_estimator="k2").loss_kl_coef == 0.05


PROBLEMS = Arithmetic(train_size=4, validation_size=0, test_size=0).problems("train")[:2]


def samples(*texts: str) -> SimpleNamespace:
    """A SampleBatch's fields a reward reads: sample i answers problem i % 2."""
    return SimpleNamespace(prompt_index=torch.tensor([i % 2 for i in range(len(texts))]), texts=list(texts))


def test_a_reward_function_scores_each_response_or_a_whole_round():
    batch = samples("x = 4", "no number", f"#### {PROBLEMS[0].answer:g}")
    digits = RewardFunction(path="tests.helpers.rewards.contains_a_digit")
    assert digits(PROBLEMS, batch).tolist() == [1.0, 0.0, 1.0]
    shortness = RewardFunction(path="tests.helpers.rewards:shortness", batched=True)
    assert shortness(PROBLEMS, batch).tolist() == pytest.approx([0.95, 0.91, 1 - len(batch.texts[2]) / 100])
    assert successes(PROBLEMS, batch, digits).tolist() == [True, False, True]
    assert successes(PROBLEMS, batch, None).tolist() == [False, False, True]  # without one: the right answer
    half = RewardFunction(path="tests.helpers.rewards.shortness", batched=True, threshold=0.93)
    assert successes(PROBLEMS, batch, half).tolist() == [True, False, True]


def test_a_reward_function_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def always(problem, response):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert RewardFunction(path="my_rewards.always")(PROBLEMS, samples("a")).tolist() == [0.5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "raise KeyError('answer')",
            r"reward_fn rewards_under_test.reward raised KeyError: 'answer', on response 1 of "
            r"the round \(question \d+\): 'second'",
        ),
        ("return float('nan')", r"returned nan on response 0 of the round .*'first'.*a reward is a finite number"),
        ("return 'high'", r"returned 'high' on response 0 .*a reward is a finite number"),
    ],
    ids=["raises", "nan", "not-a-number"],
)
def test_errors_in_a_reward_function_name_it_and_the_sample(body, message, tmp_path, monkeypatch):
    source = (
        f"def reward(problem, response):\n    if response == 'first' and {'nan' not in body and 'high' not in body}:\n"
    )
    source += f"        return 1.0\n    {body}\n"
    (tmp_path / "rewards_under_test.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rewards_under_test", None)
    with pytest.raises((RuntimeError, ValueError), match=message):
        RewardFunction(path="rewards_under_test.reward")(PROBLEMS, samples("first", "second"))


NUMPY_REWARDS = """
import numpy as np
import torch

def float32(problem, response):
    return np.float32(0.5)

def int64(problem, response):
    return np.int64(2)

def one_element_array(problem, response):
    return np.array([0.25])

def batched_float32(problems, responses):
    return np.arange(len(responses), dtype=np.float32)

def batched_column(problems, responses):
    return torch.ones(len(responses), 1)

def nan_float32(problem, response):
    return np.float32("nan")

def two_elements(problem, response):
    return np.array([1.0, 2.0])
"""


def test_numpy_numbers_and_arrays_are_rewards(tmp_path, monkeypatch):
    (tmp_path / "numpy_rewards_under_test.py").write_text(NUMPY_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("numpy_rewards_under_test", None)
    batch = samples("first", "second")
    for name, batched, expected in [
        ("float32", False, [0.5, 0.5]),
        ("int64", False, [2.0, 2.0]),
        ("one_element_array", False, [0.25, 0.25]),
        ("batched_float32", True, [0.0, 1.0]),
        ("batched_column", True, [1.0, 1.0]),
    ]:
        reward = RewardFunction(path=f"numpy_rewards_under_test.{name}", batched=batched)
        assert reward(PROBLEMS, batch).tolist() == expected, name
    # Still a finite number, and one: NaN in any dress, or two numbers for one response, is refused.
    for name in ("nan_float32", "two_elements"):
        with pytest.raises(
            ValueError, match=rf"numpy_rewards_under_test.{name} returned .*a reward is a finite number"
        ):
            RewardFunction(path=f"numpy_rewards_under_test.{name}")(PROBLEMS, batch)


def test_a_batched_reward_must_score_every_response():
    wrong_length = RewardFunction(path="tests.helpers.rewards.shortness", batched=True)
    with pytest.raises(ValueError, match=r"reward_fn tests.helpers.rewards.shortness \(batched\) returned 1 rewards"):
        wrong_length(PROBLEMS, SimpleNamespace(prompt_index=torch.tensor([0, 1]), texts=["a"]))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_here.reward", r"cannot import 'no_such_module_here'"),
        ("tests.helpers.rewards.no_such_reward", r"tests.helpers.rewards \(.*rewards.py\) has no function 'no_such"),
        ("reward", r"name a function as module.function"),
    ],
)
def test_a_reward_function_that_cannot_be_found_is_a_clear_error(path, message):
    with pytest.raises(ValueError, match=message):
        RewardFunction(path=path)


def test_the_final_reward_and_the_reward_function_are_named_together():
    with pytest.raises(ValueError, match="reward.final: reward_fn and reward.reward_fn go together"):
        RewardConfig(final="reward_fn")
    with pytest.raises(ValueError, match="go together"):
        RewardConfig(reward_fn=RewardFunction(path="tests.helpers.rewards.contains_a_digit"))
