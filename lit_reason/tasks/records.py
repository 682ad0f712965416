"""Problems from records (JSON objects, dataset rows) whose fields you name: what ``JSONLTask`` and
``DatasetTask`` share."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from lit_reason.tasks.answers import (
    MAX_TEXT_ANSWER_CHARS,
    TextNormalization,
    answers_match,
    check_gradable_reference,
    extract_text_answer,
    format_number,
    normalize_text_answer,
    parse_reference_answer,
    text_answers_match,
)
from lit_reason.tasks.base import DEFAULT_INSTRUCTION, Problem, PromptStyle, Split, Task, question_key, split_off

TEXT_INSTRUCTION = (
    "Answer the question. Reason step by step if it helps, and end with a line of the form '#### <answer>'."
)


@dataclass
class RecordFields:
    """Where a record holds a problem, and what kind of answer it has.

    Args:
        question: the field holding the question text.
        answer: the field holding the final answer.
        solution: the field holding a worked solution (SFT's target), or None. Training records must have it;
            validation and test records may leave it out (or null). A solution without a ``####`` line gets
            ``#### <answer>``; one with its own must state the answer there (it is graded on loading).
        answer_type: ``number``: a number, or text whose number is read the way responses are graded
            (``"$1,234"``, ``"... #### 42"``: the number after the last ``####``), compared with a tolerance;
            ``text``: a word or phrase of at most 200 characters (a name, yes / no, a choice letter; a
            true / false value reads "yes" / "no"), compared after ``normalization`` with what a response
            states after its last ``####`` (or in its last ``\\boxed{}``).
        normalization: for text answers: ``exact`` (surrounding whitespace aside), ``casefold`` (also case and
            whitespace runs) or ``squad`` (SQuAD's: also punctuation and the articles a / an / the; "-3" then
            equals "3", so prefer ``casefold`` for answers like that).
    """

    question: str = "question"
    answer: str = "answer"
    solution: str | None = None
    answer_type: Literal["number", "text"] = "number"
    normalization: TextNormalization = "squad"

    def __post_init__(self) -> None:
        if self.answer_type not in ("number", "text"):
            raise ValueError(f"fields.answer_type must be number or text, got {self.answer_type!r}")
        if self.normalization not in ("exact", "casefold", "squad"):
            raise ValueError(f"fields.normalization must be exact, casefold or squad, got {self.normalization!r}")

    def problem(self, problem_id: int, row: Any, where: str, solution_required: bool = True) -> Problem:
        """The problem a record holds; ``where`` (file and line, dataset and row) starts every error. Without
        ``solution_required`` (the splits that are never trained on), a record without the solution field, or
        with a null one, has the final answer line alone as its solution."""
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
        question = _field(row, self.question, str, where).strip()
        if not question:
            raise ValueError(f"{where}: field {self.question!r} is empty")
        answer, final_line = self._answer(row, where)
        written = self._written_solution(row, where, solution_required)
        # A solution without a '####' line gets the answer line; one with its own is kept as written, and checked
        # below: its '####' may be a heading, or state another answer than the answer field's.
        if written is not None and "####" not in written:
            written = f"{written}\n{final_line}"
        solution = final_line if written is None else written
        problem = Problem(
            id=problem_id, question=question, solution=solution, answer=answer, normalization=self.normalization
        )
        self._check_solution_grades_correct(problem, where, from_solution_field=written is not None)
        return problem

    def _written_solution(self, row: dict, where: str, solution_required: bool) -> str | None:
        """The record's worked solution, or None where it has none to give."""
        if self.solution is None or (not solution_required and row.get(self.solution) is None):
            return None
        return _field(row, self.solution, str, where).strip()

    def _answer(self, row: dict, where: str) -> tuple[float | str, str]:
        """A record's answer and the ``#### <answer>`` line that states it."""
        if self.answer_type == "text":
            value = _field(row, self.answer, (str, int, float, bool), where)
            answer = _text(value, self.answer, self.normalization, where)
            return answer, f"#### {answer}"
        value = _field(row, self.answer, (str, int, float), where)
        answer = number_answer(value, f"field {self.answer!r}", where, "use other units or fields.answer_type: text")
        return answer, f"#### {format_number(answer)}"

    def _check_solution_grades_correct(self, problem: Problem, where: str, from_solution_field: bool) -> None:
        """Refuse a problem whose own solution grades wrong: SFT would train on a wrong or missing final answer
        (a written solution's "#### Step 1" heading, or a "#### 5" that is not the answer field's 4)."""
        if problem.is_correct(problem.solution):
            return
        stated, answer = _shown(problem.stated_answer(problem.solution)), _shown(problem.answer)
        if from_solution_field:
            raise ValueError(
                f"{where}: field {self.solution!r} does not grade correct against field {self.answer!r} ({answer}): "
                f"graded as a response is, its final answer reads {stated}; end it with '#### <the answer>' and "
                "write no other line starting with '####' (a heading)"
            )
        raise ValueError(
            f"{where}: field {self.answer!r} ({answer}) does not grade correct against itself: a response ending "
            f"{problem.solution!r:.80} reads {stated}; write the answer without markup"
        )


class RecordTask(Task):
    """Problems read from records, split by split: ids run on across the splits (unique in the task), and
    without a validation split ``validation_size`` training questions are held out for it.

    Subclasses say where each split's records come from (``records``). Without an ``instruction``, a chat
    prompt asks for a final ``#### <number>`` line, or ``#### <answer>`` for text answers.
    """

    def __init__(
        self,
        fields: RecordFields,
        validation_size: int,
        seed: int,
        prompt_style: PromptStyle = "plain",
        num_shots: int = 4,
        instruction: str | None = None,
    ) -> None:
        if instruction is None:
            instruction = TEXT_INSTRUCTION if fields.answer_type == "text" else DEFAULT_INSTRUCTION
        super().__init__(prompt_style, num_shots, instruction)
        self.fields = fields
        self.validation_size = validation_size
        self.seed = seed

    @abstractmethod
    def records(self, split: Split) -> Iterable[tuple[str, Any]] | None:
        """(where, record) pairs of a split, ``where`` naming it in errors; None: the task has no such split
        (validation: carved from train)."""

    def load(self) -> dict[str, list[Problem]]:
        splits, first_id, carve = {}, 0, False
        for split in ("train", "validation", "test"):
            records = self.records(split)
            carve |= split == "validation" and records is None
            # Only training trains on solutions: a validation or test record may leave its solution out.
            located = [
                (where, self.fields.problem(first_id + i, row, where, solution_required=split == "train"))
                for i, (where, row) in enumerate(records or [])
            ]
            _refuse_conflicting_answers(located)
            problems = [problem for _, problem in located]
            if records is not None and not problems:
                raise ValueError(f"{type(self).__name__}: the {split} split holds no questions")
            splits[split] = problems
            first_id += len(problems)
        if carve:
            splits["train"], splits["validation"] = split_off(
                splits["train"], self.validation_size, self.seed, "validation_size", self.source("train")
            )
        return splits

    def source(self, split: Split) -> str:
        """Where a split's records come from (a file, a dataset), for error messages."""
        return f"the {split} split of {type(self).__name__}"


def _refuse_conflicting_answers(located: list[tuple[str, Problem]]) -> None:
    """A question may come again (with another solution), but with the same answer: one of the two is wrong."""
    first: dict[str, tuple[str, Problem]] = {}
    for where, problem in located:
        earlier_where, earlier = first.setdefault(question_key(problem.question), (where, problem))
        if isinstance(problem.answer, str):
            same = text_answers_match(problem.answer, str(earlier.answer), problem.normalization)
        else:
            same = answers_match(problem.answer, float(earlier.answer))
        if not same:
            raise ValueError(
                f"{where}: the question of {earlier_where} again, with another answer ({problem.answer!r:.40} "
                f"against {earlier.answer!r:.40}): correct or remove one of them"
            )


def _field(row: dict, name: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if name not in row:
        raise ValueError(f"{where}: no field {name!r} (fields: {sorted(row)})")
    value = row[name]
    allows_bool = bool in (kinds if isinstance(kinds, tuple) else (kinds,))
    if (isinstance(value, bool) and not allows_bool) or not isinstance(value, kinds):
        raise ValueError(f"{where}: field {name!r} has the wrong type: {value!r:.80}")
    return value


def number_answer(value: object, name: str, where: str, advice: str = "use other units") -> float:
    """A data file's numeric answer (a number, or text such as "$1,234" or "... #### 42") as a float, read by the
    rules that grade a response (``parse_reference_answer``); otherwise an error naming ``where`` (the file and
    line) and ``name`` (the field), with ``advice`` on what to do instead."""
    number = None if isinstance(value, str) else _finite(value, name, where)
    try:
        if number is None:
            return parse_reference_answer(str(value).rsplit("####", 1)[-1])
        check_gradable_reference(number)
        return number
    except ValueError as error:
        raise ValueError(
            f"{where}: {name} holds no number that responses are graded against: {error}; {advice}"
        ) from None


def _finite(value: object, name: str, where: str) -> float:
    """``value`` as a float; an error naming the field where it is not a number (a bool), NaN, infinite or an
    integer too large for a float (JSON's integers have no bound)."""
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{where}: {name} is not a finite number: {str(value)[:40]!r}")
    return number


def _shown(answer: float | str | None) -> str:
    """An answer as error messages quote it: a number as written in a solution (4, not 4.0)."""
    if answer is None:
        return "no answer"
    return repr(format_number(answer) if isinstance(answer, float) else answer)


def _text(value: str | int | float | bool, field: str, normalization: TextNormalization, where: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        # The one line after the last "####" (or the whole value), read as a response's "#### ..." line is:
        # \boxed{B} is B and \text{Paris} Paris, or a response stating them would never match.
        written = value.rsplit("####", 1)[-1].strip()
        text = "" if "\n" in written else extract_text_answer(f"#### {written}") or ""
    elif isinstance(value, int):  # as written (a float would round one past 2**53)
        text = str(value)
    else:  # a whole float as an integer; any other as Python writes it (six places made 1e-7 "0")
        number = _finite(value, f"field {field!r}", where)
        text = format_number(number) if number.is_integer() else repr(number)
    if not text or len(text) > MAX_TEXT_ANSWER_CHARS:
        raise ValueError(
            f"{where}: field {field!r} must be a one-line text answer of 1 to 200 characters: {value!r:.80}"
        )
    if not normalize_text_answer(text, normalization):
        raise ValueError(f"{where}: field {field!r} is nothing once normalized ({normalization}): {value!r:.80}")
    return text
