"""SVAMP (Patel et al. 2021): one- and two-step arithmetic word problems with varied wording."""

from __future__ import annotations

import json
from pathlib import Path

from lit_reason.tasks.answers import evaluate_steps, format_number
from lit_reason.tasks.base import DEFAULT_INSTRUCTION, Problem, PromptStyle, Task, split_off


class SVAMP(Task):
    """SVAMP from its ``SVAMP.json`` file (a list of ``Body``, ``Question``, ``Equation``, ``Answer``).

    The question is ``Body + " " + Question``. SVAMP has no worked solutions, so the reference solution is
    written from ``Equation``: one line per operation, innermost first, with calculator annotations, then
    ``#### Answer``; those lines are also the intermediate results for dense rewards. SVAMP has no official
    split: test and validation are drawn by a seeded shuffle, the rest is train.

    Args:
        path: the ``SVAMP.json`` file.
        validation_size: problems held out for validation.
        test_size: problems held out for testing.
        seed: fixes the split.
        prompt_style: see ``Task``.
        num_shots: see ``Task``.
        instruction: see ``Task``.
    """

    def __init__(
        self,
        path: str,
        validation_size: int = 100,
        test_size: int = 300,
        seed: int = 1234,
        prompt_style: PromptStyle = "few_shot",
        num_shots: int = 4,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        super().__init__(prompt_style, num_shots, instruction)
        self.path = path
        self.validation_size = validation_size
        self.test_size = test_size
        self.seed = seed

    def load(self) -> dict[str, list[Problem]]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"SVAMP: {path} does not exist; point `path` at SVAMP.json")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of problems")
        problems = [_problem(i, row, f"{path}[{i}]") for i, row in enumerate(rows)]
        rest, test = split_off(problems, self.test_size, self.seed)
        train, validation = split_off(rest, self.validation_size, self.seed + 1)
        return {"train": train, "validation": validation, "test": test}


def _problem(problem_id: int, row: dict, where: str) -> Problem:
    fields = ("Body", "Question", "Equation", "Answer")
    if not isinstance(row, dict) or any(field not in row for field in fields):
        raise ValueError(f"{where}: expected an object with fields {', '.join(fields)}")
    try:
        answer = float(row["Answer"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: Answer is not a number: {row['Answer']!r}") from None
    steps = evaluate_steps(str(row["Equation"]))
    if steps is None:
        raise ValueError(f"{where}: cannot read Equation {row['Equation']!r}")
    lines = [
        f"{expression}=<<{expression}={format_number(value)}>>{format_number(value)}" for expression, value in steps
    ]
    solution = "\n".join([*lines, f"#### {format_number(answer)}"])
    question = f"{str(row['Body']).strip()} {str(row['Question']).strip()}"
    return Problem(id=problem_id, question=question, solution=solution, answer=answer)
