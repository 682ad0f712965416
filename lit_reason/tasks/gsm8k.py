"""GSM8K (Cobbe et al. 2021): grade-school math word problems with worked, annotated solutions."""

from __future__ import annotations

from pathlib import Path

from lit_reason.files import jsonl_records
from lit_reason.tasks.answers import parse_reference_answer
from lit_reason.tasks.base import DEFAULT_INSTRUCTION, Problem, PromptStyle, Task, split_off

HUB_NAME = "openai/gsm8k"
# Problem ids: test questions keep their line number, train questions (and the validation questions carved
# from them) are offset so that ids stay unique across splits.
TRAIN_ID_OFFSET = 100_000


class GSM8K(Task):
    """GSM8K from local ``train.jsonl`` / ``test.jsonl`` files, or from the Hugging Face hub when online.

    Each line is ``{"question": ..., "answer": ...}`` whose answer ends with ``#### N``. Validation
    questions are carved from train by a seeded shuffle; test is the official test set.

    Args:
        path: directory holding ``train.jsonl`` and ``test.jsonl``; ``None`` downloads ``openai/gsm8k``
            (needs ``pip install datasets`` and a network).
        validation_size: training questions held out for validation.
        seed: fixes which training questions are held out.
        prompt_style: see ``Task``.
        num_shots: see ``Task``.
        instruction: see ``Task``.
    """

    def __init__(
        self,
        path: str | None = None,
        validation_size: int = 500,
        seed: int = 1234,
        prompt_style: PromptStyle = "few_shot",
        num_shots: int = 4,
        instruction: str = DEFAULT_INSTRUCTION,
    ) -> None:
        super().__init__(prompt_style, num_shots, instruction)
        self.path = path
        self.validation_size = validation_size
        self.seed = seed

    def load(self) -> dict[str, list[Problem]]:
        if self.path is None:
            train_rows, test_rows = _from_hub()
            train_source = f"{HUB_NAME}[train]"
        else:
            train_source = Path(self.path) / "train.jsonl"
            train_rows = _read_jsonl(train_source)
            test_rows = _read_jsonl(Path(self.path) / "test.jsonl")
        train = [_problem(TRAIN_ID_OFFSET + i, row, where) for i, (row, where) in enumerate(train_rows)]
        test = [_problem(i, row, where) for i, (row, where) in enumerate(test_rows)]
        train, validation = split_off(train, self.validation_size, self.seed, "validation_size", str(train_source))
        return {"train": train, "validation": validation, "test": test}


def _read_jsonl(path: Path) -> list[tuple[dict, str]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"GSM8K: {path} does not exist; point `path` at a folder with train.jsonl and test.jsonl"
        )
    rows = [(row, where) for where, row in jsonl_records(path)]
    if not rows:
        raise ValueError(f"GSM8K: {path} holds no questions (one JSON object a line)")
    return rows


def _from_hub() -> tuple[list[tuple[dict, str]], list[tuple[dict, str]]]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "GSM8K with path=None downloads from the Hugging Face hub and needs `pip install datasets`; "
            "or set `path` to a folder with train.jsonl and test.jsonl"
        ) from None
    data = datasets.load_dataset(HUB_NAME, "main")
    return tuple(
        [(row, f"{HUB_NAME}[{split}][{i}]") for i, row in enumerate(data[split])] for split in ("train", "test")
    )


def _problem(problem_id: int, row: dict, where: str) -> Problem:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise ValueError(f"{where}: expected an object with string fields 'question' and 'answer'")
    question = row["question"].strip()
    if not question:
        raise ValueError(f"{where}: the question is empty")
    if "####" not in row["answer"]:
        raise ValueError(f"{where}: the answer has no final '#### N' line")
    final = row["answer"].rsplit("####", 1)[1]
    try:
        answer = parse_reference_answer(final)
    except ValueError as error:
        raise ValueError(
            f"{where}: the text after '####' is not a number that responses are graded against: {error}"
        ) from None
    return Problem(id=problem_id, question=question, solution=row["answer"].strip(), answer=answer)
