"""SVAMP (Patel et al. 2021): one- and two-step arithmetic word problems with varied wording."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from lit_reason.tasks.answers import evaluate_steps, format_number, parse_number
from lit_reason.tasks.base import DEFAULT_INSTRUCTION, Problem, PromptStyle, Task, split_off
from lit_reason.tasks.records import number_answer


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
        except UnicodeDecodeError as error:
            line = path.read_bytes()[: error.start].count(b"\n") + 1
            raise ValueError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{path}: expected a non-empty JSON list of problems")
        problems = [_problem(i, row, f"{path}[{i}]") for i, row in enumerate(rows)]
        rest, test = split_off(problems, self.test_size, self.seed, "test_size", str(path))
        after_test = f"{path}, once test_size's are held out,"
        train, validation = split_off(rest, self.validation_size, self.seed + 1, "validation_size", after_test)
        splits = {"train": train, "validation": validation, "test": test}
        # Rows whose Answer contradicts their Equation are left out after splitting, so the others keep their
        # split; which answer is right cannot be told.
        contradictions = {p.id: why for p in problems if (why := _contradiction(rows[p.id], p.answer))}
        for problem_id, why in contradictions.items():
            warnings.warn(f"SVAMP: {path}[{problem_id}] left out: {why}", stacklevel=2)
        return {name: [p for p in split if p.id not in contradictions] for name, split in splits.items()}


def _contradiction(row: dict, answer: float) -> str | None:
    """Why a row's Answer (read as ``answer``) disagrees with its Equation, or None when they agree."""
    steps = evaluate_steps(row["Equation"])
    # An equation without an operation ("8.0") is its number.
    value = steps[-1][1] if steps else parse_number(row["Equation"].replace("(", "").replace(")", ""))
    if value is not None and math.isclose(value, answer, rel_tol=1e-4, abs_tol=1e-6):
        return None
    shown = format_number(value) if value is not None else "no number"
    return f"Answer {row['Answer']!r} contradicts Equation {row['Equation']!r}, which gives {shown}"


def _problem(problem_id: int, row: dict, where: str) -> Problem:
    fields = ("Body", "Question", "Equation", "Answer")
    if not isinstance(row, dict) or any(field not in row for field in fields):
        raise ValueError(f"{where}: expected an object with fields {', '.join(fields)}")
    for field in fields[:3]:
        if not isinstance(row[field], str):
            raise ValueError(f"{where}: {field} is not a string: {row[field]!r:.80}")
    answer = number_answer(row["Answer"], "Answer", where)
    steps = evaluate_steps(row["Equation"])
    if steps is None:
        raise ValueError(f"{where}: cannot read Equation {row['Equation']!r}")
    lines = [
        f"{expression}=<<{expression}={format_number(value)}>>{format_number(value)}" for expression, value in steps
    ]
    solution = "\n".join([*lines, f"#### {format_number(answer)}"])
    question = f"{row['Body'].strip()} {row['Question'].strip()}".strip()
    if not question:
        raise ValueError(f"{where}: the question (Body and Question) is empty")
    return Problem(id=problem_id, question=question, solution=solution, answer=answer)
