"""Per-token rewards for RL on sampled solutions: the final reward and the dense options of the paper.

All functions work on a ``SampleBatch``'s layout: R rows of L columns, responses starting at column P. A
solution's *steps* are its lines; a step's dense reward sits on the token that ends the line (its newline, or
the response's last token). The total per-token reward an algorithm uses (``RewardConfig``) is

    reward = (final reward - truncation penalty if cut off) on the last response token
             + dense_coef * dense reward on step-end tokens - kl_coef * KL(policy || reference) per token

with the final reward 1/0 correctness (``grade``, the one grading of samples), the ORM's final score or a
reward written in Python (``RewardFunction``).
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lit_reason.tasks import Problem
from lit_reason.tasks.answers import answers_match, calculations

KLEstimator = Literal["k1", "k2", "k3"]


@dataclass
class RewardFunction:
    """A reward written in Python, named by its import path.

    Args:
        path: ``module.function`` (or ``module:function``), importable where lit-reason runs (installed, on
            ``PYTHONPATH``, or a module in the working directory): ``function(problem, response) -> float``,
            with ``problem`` a ``lit_reason.tasks.Problem`` (``question``, ``solution``, ``answer``,
            ``is_correct(text)``) and ``response`` the sampled text. A reward is a finite real number: a Python
            or NumPy number (``np.float32``), or a tensor or array of one element.
        batched: the function scores a whole round in one call instead: ``function(problems, responses) ->
            rewards`` (a list, a NumPy array or a tensor), the i-th response answering ``problems[i]`` (e.g. to
            batch a reward model).
        threshold: Expert Iteration keeps, and RCRL conditions on ``[GOOD]``, the samples whose reward is at
            least this (PPO and GRPO use the reward itself).
    """

    path: str
    batched: bool = False
    threshold: float = 1.0
    function: Callable[..., Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.function = import_function(self.path, what="reward_fn")

    def __call__(self, problems: Sequence[Problem], samples) -> torch.Tensor:
        """(R,) float32 rewards of a ``SampleBatch``'s responses (``prompt_index`` (R,) into ``problems``)."""
        asked = [problems[p] for p in samples.prompt_index.tolist()]
        if self.batched:
            try:
                values = list(self.function(asked, list(samples.texts)))
            except Exception as error:
                raise RuntimeError(
                    f"reward_fn {self.path} (batched) raised {type(error).__name__}: {error}, scoring "
                    f"{len(asked)} responses"
                ) from error
            if len(values) != len(asked):
                raise ValueError(
                    f"reward_fn {self.path} (batched) returned {len(values)} rewards for {len(asked)} responses"
                )
        else:
            values = []
            for index, (problem, text) in enumerate(zip(asked, samples.texts, strict=True)):
                try:
                    values.append(self.function(problem, text))
                except Exception as error:
                    raise RuntimeError(
                        f"reward_fn {self.path} raised {type(error).__name__}: {error}, on "
                        f"{_describe_sample(index, problem, text)}"
                    ) from error
        return torch.tensor(
            [self._checked(v, i, asked[i], samples.texts[i]) for i, v in enumerate(values)], dtype=torch.float32
        )

    def _checked(self, value: Any, index: int, problem: Problem, text: str) -> float:
        number = _real_number(value)
        if number is not None and math.isfinite(number):
            return number
        raise ValueError(
            f"reward_fn {self.path} returned {value!r} on {_describe_sample(index, problem, text)}: a reward is a "
            "finite number"
        )


def _real_number(value: Any) -> float | None:
    """A reward as a float: a real number (Python's, NumPy's float32 or int64, a bool as 1 or 0), or a tensor or
    NumPy array of one real element (a row of a batched reward's (N, 1) array); None for anything else."""
    # NumPy is not a dependency of its own: its arrays (and its bool, not a numbers.Real) are known by the array
    # protocol they share. Its float and integer scalars are numbers.Real already.
    is_array = isinstance(value, torch.Tensor) or (hasattr(value, "__array__") and hasattr(value, "dtype"))
    if is_array and not isinstance(value, numbers.Real):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):  # strings, objects: no tensor, so no reward
            return None
        if value.numel() != 1 or value.is_complex():
            return None
        value = value.item()
    if not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer past float's range
        return math.inf


def _describe_sample(index: int, problem: Problem, text: str) -> str:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return f"response {index} of the round (question {problem.id}): {shown!r}"


def import_function(path: str, what: str) -> Callable[..., Any]:
    """The function named ``module.function`` or ``module:function``; a module in the working directory is
    found too (``lit-reason`` as a console script does not put it on the path). Errors say ``what`` it was for."""
    module_name, _, name = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError(f"{what} {path!r}: name a function as module.function (e.g. my_rewards.correct_format)")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if os.getcwd() in sys.path or missing.name != module_name.split(".")[0]:
                raise  # not on the path from here either, or the module imports something missing
            sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{what} {path!r}: cannot import {module_name!r} ({error}); it must be installed, on PYTHONPATH, or "
            f"a .py file in the working directory ({os.getcwd()})"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{what} {path!r}: {module_name} ({module.__file__}) has no function {name!r}")
    return function


def successes(problems: Sequence[Problem], samples, reward_fn: RewardFunction | None) -> torch.Tensor:
    """(R,) bool: the samples Expert Iteration keeps and RCRL labels good: a right final answer (``grade``), or
    with ``reward_fn`` a reward of at least its threshold."""
    if reward_fn is None:
        return grade(problems, samples)
    return reward_fn(problems, samples) >= reward_fn.threshold


@dataclass
class RewardConfig:
    """What an RL algorithm rewards.

    Args:
        final: the reward of a whole response, on its last token: ``correctness`` (1 if the final answer is
            right, else 0), ``orm`` (the ORM's score at the last token; needs ``orm``) or ``reward_fn``.
        reward_fn: the final reward written in Python (``final: reward_fn``).
        dense: ``none``; ``orm``: the change of the ORM's score at every step (line) end; or ``heuristic``:
            credit for intermediate results matching the reference's.
        dense_coef: weight of the dense reward.
        truncation_penalty: subtracted from the final reward of a response cut off at the token limit.
        kl_coef: weight of the per-token KL penalty to the reference policy (the paper: 0.05).
        kl_estimator: ``k1`` (log-ratio, the usual reward penalty), ``k2`` or ``k3`` (GRPO's loss term).
        kl_in: where the penalty goes: ``reward`` (a per-token reward, PPO's) or ``loss`` (a term of the loss,
            differentiated through the policy's log-probs, GRPO's; with ``k2`` or ``k3``: k1's gradient there is
            the score function, zero in expectation, so it would regularise nothing).
    """

    final: Literal["correctness", "orm", "reward_fn"] = "correctness"
    reward_fn: RewardFunction | None = None
    dense: Literal["none", "orm", "heuristic"] = "none"
    dense_coef: float = 0.0
    truncation_penalty: float = 0.0
    kl_coef: float = 0.05
    kl_estimator: KLEstimator = "k1"
    kl_in: Literal["reward", "loss"] = "reward"

    def __post_init__(self) -> None:
        if self.kl_coef < 0:  # it would reward drifting away from the reference
            raise ValueError(f"reward.kl_coef must be >= 0 (0: no KL penalty), got {self.kl_coef}")
        if (self.final == "reward_fn") != (self.reward_fn is not None):
            raise ValueError(
                "reward.final: reward_fn and reward.reward_fn go together: name the function (reward.reward_fn.path) "
                f"and make it the final reward (reward.final: reward_fn); got final {self.final!r} and reward_fn "
                f"{self.reward_fn.path if self.reward_fn else None!r}"
            )
        if self.kl_in == "loss" and self.kl_estimator == "k1" and self.kl_coef > 0:
            raise ValueError(
                "reward.kl_in: loss with reward.kl_estimator: k1 regularises nothing (k1's gradient, the score "
                "function, is zero in expectation): use k2 (the KL's own gradient) or k3 (GRPO's), or kl_in: reward "
                "(PPO, or GRPO's estimators dr_grpo, rloo and reinforce_pp)"
            )
        if self.dense != "none" and self.dense_coef == 0:
            raise ValueError(
                f"reward.dense is {self.dense} but reward.dense_coef is 0, so the dense reward would change nothing: "
                "set reward.dense_coef (e.g. 0.5)"
            )

    @property
    def needs_orm(self) -> bool:
        return self.final == "orm" or self.dense == "orm"

    @property
    def reward_kl_coef(self) -> float:
        """The KL penalty's weight in the per-token reward (0 when it is a loss term)."""
        return self.kl_coef if self.kl_in == "reward" else 0.0

    @property
    def loss_kl_coef(self) -> float:
        """The KL penalty's weight in the loss (0 when it is a reward term)."""
        return self.kl_coef if self.kl_in == "loss" else 0.0


def grade(problems: Sequence[Problem], samples) -> torch.Tensor:
    """(R,) bool: whether each sampled response's final answer is right for its problem.

    Args:
        problems: the P problems the samples answer.
        samples: a ``SampleBatch`` (its ``prompt_index`` (R,) into ``problems`` and its R ``texts``).
    """
    pairs = zip(samples.prompt_index.tolist(), samples.texts, strict=True)
    return torch.tensor([problems[p].is_correct(text) for p, text in pairs], dtype=torch.bool)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of the sampled tokens. (B, T) each.

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2; k3 = q/p - 1 - log(q/p)
    (unbiased, non-negative), with p the policy and q the reference (Schulman's estimators).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.expm1(-log_ratio) + log_ratio


def step_ends(tokenizer, response_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(index in the response of the token that ends each line, the line's text), in order.

    A line ends at a token whose text holds a newline; the last line ends at the response's last token (EOS
    included). Lines are decoded segment by segment, so their texts join back to the response.
    """
    ends = [i for i, token in enumerate(response_ids) if "\n" in tokenizer.decode([token])]
    if response_ids and (not ends or ends[-1] != len(response_ids) - 1):
        ends.append(len(response_ids) - 1)
    lines, start = [], 0
    for end in ends:
        lines.append((end, tokenizer.decode(list(response_ids[start : end + 1]), skip_special_tokens=True)))
        start = end + 1
    return lines


def reward_on_last_token(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Put each row's reward of the whole response on its last response token.

    Args:
        values: (R,) float, the reward of each whole response.
        response_mask: (R, L) bool, True on sampled tokens.

    Returns:
        (R, L) float: ``values[r]`` at row r's last sampled token, 0 elsewhere (0 for a row with no token).
    """
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    lengths = response_mask.sum(-1)
    has_tokens = lengths > 0
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    last = torch.where(response_mask, positions, -1).max(-1).values
    rows = torch.nonzero(has_tokens)[:, 0]
    rewards[rows, last[rows]] = values[rows].float()
    return rewards


def orm_step_rewards(scores: torch.Tensor, step_columns: Sequence[Sequence[int]], prompt_length: int) -> torch.Tensor:
    """Dense reward from an ORM: at each step's end, the change in its score since the previous step's end.

    The first step is measured from the last prompt column (the ORM's estimate before any solution
    text), so a row's dense rewards sum to ``score(last step end) - score(prompt end)``.

    Args:
        scores: (R, L) float, the ORM's probability of a correct final answer at every column.
        step_columns: for every row, the columns (absolute, increasing) of its step-end tokens.
        prompt_length: P, the first response column.

    Returns:
        (R, L) float32.
    """
    rewards = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device)
    for row, columns in enumerate(step_columns):
        previous = prompt_length - 1
        for column in columns:
            rewards[row, column] = scores[row, column] - scores[row, previous]
            previous = column
    return rewards


def matched_result_credits(lines: Sequence[str], references: Sequence[float]) -> list[float]:
    """Heuristic dense credit per line: ``1 / len(references)`` for every intermediate result the line
    computes that equals a reference intermediate result not credited before (each reference result is
    credited at most once, so repeating a right step earns nothing more). All zeros without references."""
    remaining = list(references)
    credits = []
    for line in lines:
        credit = 0.0
        for _, result in calculations(line):
            match = next((i for i, reference in enumerate(remaining) if answers_match(result, reference)), None)
            if match is not None:
                credit += 1.0 / len(references)
                del remaining[match]
        credits.append(credit)
    return credits


def batch_steps(
    tokenizer, input_ids: torch.Tensor, response_mask: torch.Tensor, prompt_length: int
) -> list[list[tuple[int, str]]]:
    """For every row of a sampled batch: (column of each step-end token, the step's text).

    Args:
        tokenizer: decodes the response tokens.
        input_ids: (R, L) long.
        response_mask: (R, L) bool, sampled tokens (they start at ``prompt_length``).
        prompt_length: P.
    """
    steps = []
    for ids, mask in zip(input_ids.tolist(), response_mask.tolist(), strict=True):
        response = [token for token, sampled in zip(ids, mask, strict=True) if sampled]
        steps.append([(prompt_length + index, text) for index, text in step_ends(tokenizer, response)])
    return steps


def heuristic_step_rewards(
    steps: Sequence[Sequence[tuple[int, str]]], references: Sequence[Sequence[float]], shape: tuple[int, int]
) -> torch.Tensor:
    """Dense reward from matching the reference's intermediate results (``matched_result_credits``), on each
    step's end token.

    Args:
        steps: per row, (column, text) of its steps (``batch_steps``).
        references: per row, the reference solution's intermediate results.
        shape: (R, L).

    Returns:
        (R, L) float32.
    """
    rewards = torch.zeros(shape, dtype=torch.float32)
    for row, (row_steps, row_references) in enumerate(zip(steps, references, strict=True)):
        credits = matched_result_credits([text for _, text in row_steps], row_references)
        for (column, _), credit in zip(row_steps, credits, strict=True):
            rewards[row, column] = credit
    return rewards
