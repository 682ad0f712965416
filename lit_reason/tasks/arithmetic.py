"""The built-in task: seeded synthetic multi-step arithmetic word problems with GSM8K-style solutions.

A problem is a chain: someone starts with some items and a few events change the count ("She buys 7 more.",
"He gives away 5."). The reference solution writes one calculation a line with a calculator annotation and
ends with ``#### N``, exactly like GSM8K, so the same answer parsing, dense rewards and diversity measure
apply. Problems are generated from a seed; two problems with the same computation (start value and the same
operations on the same numbers) never appear twice, so the test split holds computations never trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from lit_reason.tasks.base import DEFAULT_INSTRUCTION, Problem, PromptStyle, Task

Operation = Literal["+", "-", "*", "/"]

_PEOPLE = [
    ("Ann", "She"),
    ("Ben", "He"),
    ("Cara", "She"),
    ("Dan", "He"),
    ("Eva", "She"),
    ("Finn", "He"),
    ("Gia", "She"),
    ("Hugo", "He"),
    ("Ivy", "She"),
    ("Jack", "He"),
    ("Kim", "She"),
    ("Leo", "He"),
    ("Mia", "She"),
    ("Noah", "He"),
    ("Olga", "She"),
    ("Paul", "He"),
    ("Rosa", "She"),
    ("Sam", "He"),
    ("Tia", "She"),
    ("Omar", "He"),
]
_ITEMS = [
    "apples",
    "books",
    "coins",
    "stamps",
    "shells",
    "cards",
    "pens",
    "eggs",
    "marbles",
    "stickers",
    "plums",
    "toys",
    "rocks",
    "cups",
    "beads",
    "kites",
]
_EVENTS: dict[str, Sequence[str]] = {
    "+": ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.", "{p} is given {n} more."),
    "-": ("{p} gives away {n}.", "{p} sells {n}.", "{p} loses {n}.", "{p} gives {n} to a friend."),
    "*": ("{p} ends up with {n} times as many.", "Then {p2} has {n} times as many as before."),
    "/": (
        "{p} splits them into {n} equal piles and keeps one pile.",
        "{p} shares them equally in {n} boxes and keeps one box.",
    ),
}


class Arithmetic(Task):
    """Synthetic multi-step arithmetic word problems (the default task; no files or downloads).

    Args:
        min_steps: fewest operations in a problem.
        max_steps: most operations in a problem.
        operations: the operations drawn from: ``+``, ``-``, ``*`` (by 2..``max_factor``), ``/`` (exact,
            by 2..``max_factor``).
        max_operand: largest starting number and largest number added or subtracted.
        max_factor: largest multiplier or divisor.
        max_value: no intermediate or final result exceeds this (results are never negative).
        train_size: training problems.
        validation_size: validation problems (checkpoint selection).
        test_size: test problems (final numbers).
        seed: fixes every problem and the split; the same seed gives the same task everywhere.
        prompt_style: see ``Task``.
        num_shots: see ``Task``.
        instruction: see ``Task``.
    """

    def __init__(
        self,
        min_steps: int = 1,
        max_steps: int = 3,
        operations: list[Operation] | None = None,
        max_operand: int = 30,
        max_factor: int = 3,
        max_value: int = 120,
        train_size: int = 6_000,
        validation_size: int = 1_000,
        test_size: int = 1_000,
        seed: int = 1234,
        prompt_style: PromptStyle = "plain",
        num_shots: int = 4,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        super().__init__(prompt_style, num_shots, instruction)
        operations = list(operations or ["+", "-"])
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got min_steps={min_steps}, max_steps={max_steps}")
        unknown = set(operations) - set(_EVENTS)
        if not operations or unknown:
            raise ValueError(f"operations must be a non-empty list from {sorted(_EVENTS)}, got {operations}")
        if max_operand < 1 or max_factor < 2 or max_value < max_operand:
            raise ValueError("need max_operand >= 1, max_factor >= 2 and max_value >= max_operand")
        self.min_steps, self.max_steps = min_steps, max_steps
        self.operations = operations
        self.max_operand, self.max_factor, self.max_value = max_operand, max_factor, max_value
        if train_size < 1 or validation_size < 0 or test_size < 0:
            raise ValueError(
                f"need train_size >= 1 and validation_size, test_size >= 0, got train_size={train_size}, "
                f"validation_size={validation_size}, test_size={test_size}"
            )
        self.sizes = {"validation": validation_size, "test": test_size, "train": train_size}
        self.seed = seed

    def load(self) -> dict[str, list[Problem]]:
        rng = random.Random(self.seed)
        seen: set[tuple] = set()
        splits: dict[str, list[Problem]] = {}
        next_id = 0
        for split, size in self.sizes.items():  # held-out splits first: they never depend on train_size
            problems = []
            attempts = 0
            while len(problems) < size:
                attempts += 1
                if attempts > 50 * (size + 100):
                    raise ValueError(
                        f"Arithmetic task: could only make {len(problems)} distinct {split} problems of {size}; "
                        "widen max_operand, max_value, the steps or the operations, or ask for fewer problems"
                    )
                computation = self._draw_computation(rng)
                if computation is None or computation in seen:
                    continue
                seen.add(computation)
                problems.append(self._write_problem(next_id, *computation, rng))
                next_id += 1
            splits[split] = problems
        return splits

    def _draw_computation(self, rng: random.Random) -> tuple[int, tuple[tuple[str, int], ...]] | None:
        """A start value and operations whose every result stays in [0, max_value], or None when the draw
        reaches a value no operation applies to. One draw, not a retry loop: ``load`` counts every draw against
        its bound, so settings that never finish a computation (five halvings of at most 30) are an error, not
        a hang."""
        value = start = rng.randint(1, self.max_operand)
        steps = []
        for _ in range(rng.randint(self.min_steps, self.max_steps)):
            options = [op for op in self.operations if self._applicable(op, value)]
            if not options:
                return None
            op = rng.choice(options)
            number = self._draw_number(op, value, rng)
            value = _apply(op, value, number)
            steps.append((op, number))
        return start, tuple(steps)

    def _applicable(self, op: str, value: int) -> bool:
        if op == "+":
            return value + 1 <= self.max_value
        if op == "-":
            return value >= 1
        if op == "*":
            return value >= 1 and value * 2 <= self.max_value
        return value > 0 and any(value % d == 0 for d in range(2, self.max_factor + 1))

    def _draw_number(self, op: str, value: int, rng: random.Random) -> int:
        if op == "+":
            return rng.randint(1, min(self.max_operand, self.max_value - value))
        if op == "-":
            return rng.randint(1, min(self.max_operand, value))
        if op == "*":
            return rng.randint(2, min(self.max_factor, self.max_value // value))
        return rng.choice([d for d in range(2, self.max_factor + 1) if value % d == 0])

    def _write_problem(self, problem_id: int, start: int, steps: tuple[tuple[str, int], ...], rng) -> Problem:
        name, pronoun = rng.choice(_PEOPLE)
        items = rng.choice(_ITEMS)
        sentences = [f"{name} has {start} {items}."]
        lines = []
        value = start
        for op, number in steps:
            template = rng.choice(_EVENTS[op])
            sentences.append(template.format(p=pronoun, p2=pronoun.lower(), n=number))
            result = _apply(op, value, number)
            expression = f"{value}{op}{number}"
            lines.append(f"{expression}=<<{expression}={result}>>{result}")
            value = result
        sentences.append(f"How many {items} does {name} have now?")
        solution = "\n".join([*lines, f"#### {value}"])
        return Problem(id=problem_id, question=" ".join(sentences), solution=solution, answer=float(value))


def _apply(op: str, value: int, number: int) -> int:
    if op == "+":
        return value + number
    if op == "-":
        return value - number
    if op == "*":
        return value * number
    return value // number
