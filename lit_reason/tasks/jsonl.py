"""Your own problems from JSONL files: a question, an answer (a number or a text) and, optionally, a reference
solution on each line, in fields you name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_reason.files import jsonl_records
from lit_reason.tasks.base import PromptStyle, Split
from lit_reason.tasks.records import RecordFields, RecordTask


class JSONLTask(RecordTask):
    """Problems from JSONL files, one JSON object a line, e.g. ``{"question": "...", "answer": 42}``.

    A reference solution (SFT's target) gets a final ``#### <answer>`` line when it has none, and one with its
    own ``####`` line must grade correct against the answer; without a solution field the target is that line
    alone, so SFT learns only the answer format (RL algorithms need no solutions).

    Args:
        train_path: the training questions (RL rounds and SFT examples).
        test_path: the test questions (``lit-reason test``); None: no test split.
        validation_path: the validation questions; None: ``validation_size`` are carved from train.
        fields: which fields hold the question, the answer and a solution, and the kind of answer.
        validation_size: training questions held out for validation when there is no ``validation_path``.
        seed: fixes which training questions are held out.
        prompt_style: see ``Task``.
        num_shots: see ``Task``.
        instruction: see ``Task``; unset: it asks for a final ``#### <number>`` line, or ``#### <answer>`` for
            text answers.
    """

    def __init__(
        self,
        train_path: str,
        test_path: str | None = None,
        validation_path: str | None = None,
        fields: RecordFields | None = None,
        validation_size: int = 200,
        seed: int = 1234,
        prompt_style: PromptStyle = "plain",
        num_shots: int = 4,
        instruction: str | None = None,
    ) -> None:
        super().__init__(fields or RecordFields(), validation_size, seed, prompt_style, num_shots, instruction)
        self.paths = {"train": train_path, "validation": validation_path, "test": test_path}

    def source(self, split: Split) -> str:
        return str(self.paths[split])

    def records(self, split: Split) -> Iterable[tuple[str, Any]] | None:
        path = self.paths[split]
        if path is None:
            return None
        if not Path(path).is_file():
            raise FileNotFoundError(f"JSONLTask: {split}_path {path} does not exist")
        records = list(jsonl_records(path))
        if not records:
            raise ValueError(f"JSONLTask: {path} holds no questions (one JSON object a line)")
        return records
