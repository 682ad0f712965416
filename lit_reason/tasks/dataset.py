"""Your own problems from a Hugging Face dataset (``datasets.load_dataset``): on the hub, or local files in any
format ``datasets`` reads (JSON, CSV, Parquet), in fields you name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lit_reason.files import jsonl_records
from lit_reason.tasks.base import PromptStyle, Split
from lit_reason.tasks.records import RecordFields, RecordTask

# How an error's row number finds the row in a local file, by builder ("datasets" skips a JSONL file's blank
# lines, so its row is not always its line).
_ROW_COUNTING = {"csv": "1-based, after the header", "json": "1-based; in JSONL, blank lines not counted"}


class DatasetTask(RecordTask):
    """Problems from ``datasets.load_dataset(path, name, data_files=..., revision=...)``, one row a problem.

    Needs ``pip install "lit-reason[hub]"`` (``datasets``); a hub dataset also needs the network (or a
    ``datasets`` cache). See ``JSONLTask`` for solutions and answers.

    Args:
        path: a hub dataset ("openai/gsm8k") or a builder for local files ("json", "csv", "parquet").
        name: the dataset's configuration ("main"), if it has several.
        data_files: local files by split, for a builder path ({"train": "train.jsonl", "test": "test.jsonl"}).
        revision: the hub revision (a tag or commit) to load; pin it for reproducible runs.
        train_split: the split of training questions.
        validation_split: the split of validation questions; None: ``validation_size`` are carved from train.
        test_split: the split of test questions (``lit-reason test``); None: no test split.
        fields: which fields hold the question, the answer and a solution, and the kind of answer.
        validation_size: training questions held out for validation when there is no ``validation_split``.
        seed: fixes which training questions are held out.
        prompt_style: see ``Task``.
        num_shots: see ``Task``.
        instruction: see ``Task``; unset: it asks for a final ``#### <number>`` line, or ``#### <answer>`` for
            text answers.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        data_files: dict[str, str | list[str]] | None = None,
        revision: str | None = None,
        train_split: str = "train",
        validation_split: str | None = None,
        test_split: str | None = "test",
        fields: RecordFields | None = None,
        validation_size: int = 200,
        seed: int = 1234,
        prompt_style: PromptStyle = "plain",
        num_shots: int = 4,
        instruction: str | None = None,
    ) -> None:
        super().__init__(fields or RecordFields(), validation_size, seed, prompt_style, num_shots, instruction)
        self.path, self.name, self.data_files, self.revision = path, name, data_files, revision
        self.splits = {"train": train_split, "validation": validation_split, "test": test_split}

    def records(self, split: Split) -> Iterable[tuple[str, Any]] | None:
        split_name = self.splits[split]
        if split_name is None:
            return None
        try:
            import datasets
        except ImportError:
            raise ImportError('DatasetTask loads with `datasets`: pip install "lit-reason[hub]"') from None
        try:
            rows = datasets.load_dataset(
                self.path, self.name, data_files=self.data_files, revision=self.revision, split=split_name,
                **self._builder_options(),
            )  # fmt: skip
        except (ValueError, datasets.exceptions.DatasetGenerationError) as error:  # an unknown split, a bad file
            self._check_json_lines(split_name)  # names the line where datasets names none
            cause = error.__cause__ or error  # a generation error wraps the reader's
            raise ValueError(
                f"DatasetTask {self._label}, {split}_split {split_name!r} ({self.source(split)}): "
                f"{type(cause).__name__}: {cause}"
            ) from None
        if len(rows) == 0:
            raise ValueError(f"DatasetTask {self._label}: split {split_name!r} ({split}_split) holds no rows")
        return self._numbered(rows, split)

    def _numbered(self, rows: Iterable[dict[str, Any]], split: Split) -> Iterable[tuple[str, Any]]:
        source, counted = self.source(split), _ROW_COUNTING.get(self.path, "1-based")
        number = 0
        try:
            for number, row in enumerate(rows, start=1):
                yield f"{source} row {number} ({counted})", row
        except UnicodeDecodeError as error:  # datasets decodes a row's text only when it is read
            self._check_json_lines(self.splits[split])
            raise ValueError(
                f"{source} row {number + 1} ({counted}): not UTF-8 text ({error.reason}); save the file as UTF-8"
            ) from None

    def _builder_options(self) -> dict[str, Any]:
        """For CSV files, the named fields as written: pandas would read "007" as 7, "NA" as nothing and
        "True" as a boolean before lit-reason checks them. An empty cell is still nothing."""
        if self.path != "csv":
            return {}
        names = [self.fields.question, self.fields.answer, self.fields.solution]
        converters = {name: str for name in names if name is not None}
        return {"keep_default_na": False, "na_values": [""], "converters": converters}

    def _check_json_lines(self, split_name: str) -> None:
        """Read a split's local JSON Lines files line by line: an unreadable line is an error naming it."""
        files = self.data_files.get(split_name) if self.path == "json" and self.data_files else None
        for file in [files] if isinstance(files, str) else files or []:
            if str(file).endswith(".jsonl") and Path(file).is_file():
                for _ in jsonl_records(file):
                    pass

    @property
    def _label(self) -> str:
        return self.path if self.name is None else f"{self.path}/{self.name}"

    def source(self, split: Split) -> str:
        """Where a split's rows come from, for error messages: its local file(s), else the dataset and split."""
        split_name = self.splits[split]
        files = self.data_files.get(split_name) if self.data_files else None
        if isinstance(files, str) or (isinstance(files, list) and len(files) == 1):
            return files if isinstance(files, str) else files[0]
        if files:
            return f"{', '.join(files)} (rows counted across the files)"
        return f"{self._label}[{split_name}]"
