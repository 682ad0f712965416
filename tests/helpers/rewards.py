"""Rewards written in Python, as a user's ``reward_fn`` module holds them."""

from __future__ import annotations


def contains_a_digit(problem, response: str) -> float:
    """1 for a response with a digit in it (a format reward), else 0."""
    return float(any(character.isdigit() for character in response))


def shortness(problems, responses: list[str]) -> list[float]:
    """Batched: shorter responses earn more."""
    return [1.0 - min(len(response), 100) / 100 for response in responses]
