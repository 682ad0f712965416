"""Your own math problems from JSONL files: a question, a numeric answer and, optionally, a reference solution
on each line, in fields you name."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lit_reason.files import jsonl_records
from lit_reason.tasks.answers import format_number, parse_number
from lit_reason.tasks.base import DEFAULT_INSTRUCTION, Problem, PromptStyle, Task, split_off


class JSONLTask(Task):
    """Problems from JSONL files, one JSON object a line, e.g. ``{"question": "...", "answer": 42}``.

    The answer is a number, or text whose number is read the way responses are graded (``"$1,234"``,
    ``"... #### 42"``: the number after the last ``####``). A reference solution (SFT's target) gets a final
    ``#### N`` line when it has none; without a solution field the target is that line alone, so SFT learns
    only the answer format (RL algorithms need no solutions).

    Args:
        train_path: the training questions (RL rounds and SFT examples).
        test_path: the test questions (``lit-reason test``); None: no test split.
        validation_path: the validation questions; None: ``validation_size`` are carved from train.
        question_field: the field holding the question text.
        answer_field: the field holding the final answer.
        solution_field: the field holding a worked solution, or None.
        validation_size: training questions held out for validation when there is no ``validation_path``.
        seed: fixes which training questions are held out.
        prompt_style: see ``Task``.
        num_shots: see ``Task``.
        instruction: see ``Task``.
    """

    def __init__(
        self,
        train_path: str,
        test_path: str | None = None,
        validation_path: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        solution_field: str | None = None,
        validation_size: int = 200,
        seed: int = 1234,
        prompt_style: PromptStyle = "plain",
        num_shots: int = 4,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        super().__init__(prompt_style, num_shots, instruction)
        self.paths = {"train": train_path, "validation": validation_path, "test": test_path}
        self.question_field = question_field
        self.answer_field = answer_field
        self.solution_field = solution_field
        self.validation_size = validation_size
        self.seed = seed

    def load(self) -> dict[str, list[Problem]]:
        splits, first_id = {}, 0
        for split, path in self.paths.items():  # ids run on across the files: unique in the task
            splits[split] = self._read(split, path, first_id) if path else []
            first_id += len(splits[split])
        if self.paths["validation"] is None:
            splits["train"], splits["validation"] = split_off(splits["train"], self.validation_size, self.seed)
        return splits

    def _read(self, split: str, path: str, first_id: int) -> list[Problem]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"JSONLTask: {split}_path {path} does not exist")
        problems = [
            self._problem(first_id + index, row, where) for index, (where, row) in enumerate(jsonl_records(path))
        ]
        if not problems:
            raise ValueError(f"JSONLTask: {path} holds no questions (one JSON object a line)")
        return problems

    def _problem(self, problem_id: int, row: Any, where: str) -> Problem:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        question = self._field(row, self.question_field, str, where).strip()
        if not question:
            raise ValueError(f"{where}: field {self.question_field!r} is empty")
        answer = _number(self._field(row, self.answer_field, (str, int, float), where), self.answer_field, where)
        solution = f"#### {format_number(answer)}"
        if self.solution_field is not None:
            written = self._field(row, self.solution_field, str, where).strip()
            solution = written if "####" in written else f"{written}\n{solution}"
        return Problem(id=problem_id, question=question, solution=solution, answer=answer)

    @staticmethod
    def _field(row: dict, name: str, kinds: type | tuple[type, ...], where: str) -> Any:
        if name not in row:
            raise ValueError(f"{where}: no field {name!r} (fields: {sorted(row)})")
        value = row[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{where}: field {name!r} has the wrong type: {value!r}")
        return value


def _number(value: str | int | float, field: str, where: str) -> float:
    if isinstance(value, str):
        text = value.rsplit("####", 1)[-1].strip()
        number = parse_number(text)
        if number is None:
            raise ValueError(f"{where}: field {field!r} holds no number: {value!r}")
        return number
    if not math.isfinite(value):
        raise ValueError(f"{where}: field {field!r} is not a finite number: {value!r}")
    return float(value)
