"""Per-token rewards for RL on sampled solutions: the final reward and the dense options of the paper.

All functions work on a ``SampleBatch``'s layout: R rows of L columns, responses starting at column P. A
solution's *steps* are its lines; a step's dense reward sits on the token that ends the line (its newline, or
the response's last token). The total per-token reward an algorithm uses is

    reward = final reward on the last response token + dense_coef * dense reward on step-end tokens

with the final reward 1/0 correctness or the ORM's final score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_reason.tasks.answers import answers_match, calculations


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


def final_rewards(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Put each row's final reward on its last response token.

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
