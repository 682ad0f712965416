"""The task interface: problems in three splits, how to prompt for them, how to grade an answer."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from lit_reason.tasks.answers import (
    TextNormalization,
    answers_match,
    extract_answer,
    extract_text_answer,
    intermediate_results,
    text_answers_match,
)

Split = Literal["train", "validation", "test"]
PromptStyle = Literal["plain", "few_shot", "chat"]

DEFAULT_INSTRUCTION = (
    "Solve the math word problem step by step. Write each calculation on its own line and end with a line "
    "of the form '#### <number>'."
)


@dataclass(frozen=True)
class Problem:
    """One math word problem.

    Attributes:
        id: unique within the task, across all splits; keys per-question metrics and seeds sampling.
        question: the problem text shown to the model.
        solution: a reference solution in GSM8K style: one step a line, ``<<a+b=c>>`` annotations,
            a final ``#### N`` line.
        answer: the correct final answer: a number (compared with a tolerance) or a text (compared after
            ``normalization``).
        normalization: how a text answer and a response's are normalized before comparing them.
    """

    id: int
    question: str
    solution: str
    answer: float | str
    normalization: TextNormalization = "squad"

    @cached_property
    def intermediate_results(self) -> tuple[float, ...]:
        """The results of the reference's calculations, in order (dense rewards credit matching ones)."""
        return tuple(intermediate_results(self.solution))

    def is_correct(self, response: str) -> bool:
        """Whether a model's response states this problem's answer."""
        if isinstance(self.answer, str):
            return text_answers_match(extract_text_answer(response), self.answer, self.normalization)
        return answers_match(extract_answer(response), self.answer)

    def stated_answer(self, response: str) -> float | str | None:
        """The answer a response states, read as this problem's answers are (a number or a text)."""
        return extract_text_answer(response) if isinstance(self.answer, str) else extract_answer(response)


class Task(ABC):
    """A source of math word problems with train, validation and test splits.

    Subclasses load or generate problems; this base turns them into prompts. Problem ids are unique across
    splits and splits never share a question (checked on loading: ``question_key`` compares them).

    Args:
        prompt_style: ``plain`` is ``question + "\\n"`` (tiny models trained from scratch); ``few_shot`` puts
            ``num_shots`` solved training problems before the question ("Question: ...\\nAnswer: ...") for
            base models; ``chat`` wraps ``instruction`` and the question in the tokenizer's chat template
            for instruction-tuned models.
        num_shots: solved examples in a ``few_shot`` prompt.
        instruction: what a ``chat`` prompt asks for; keep the ``####`` line so answers parse reliably.
    """

    def __init__(
        self, prompt_style: PromptStyle = "plain", num_shots: int = 4, instruction: str = DEFAULT_INSTRUCTION
    ) -> None:
        if num_shots < 0:
            raise ValueError(f"num_shots must be >= 0 (solved examples in a few_shot prompt), got {num_shots}")
        self.prompt_style = prompt_style
        self.num_shots = num_shots
        self.instruction = instruction
        self._splits: dict[str, list[Problem]] | None = None

    @abstractmethod
    def load(self) -> dict[str, list[Problem]]:
        """All problems, keyed by split; called once, on first use."""

    def problems(self, split: Split) -> list[Problem]:
        """The problems of one split, in a fixed order."""
        if self._splits is None:
            splits = self.load()
            self._check_splits_share_no_question(splits)
            self._splits = splits  # only once checked: a second call must not return what the first refused
        return self._splits[split]

    def _check_splits_share_no_question(self, splits: dict[str, list[Problem]]) -> None:
        first_seen: dict[str, tuple[str, int]] = {}
        for split, problems in splits.items():
            for problem in problems:
                seen_in, seen_id = first_seen.setdefault(question_key(problem.question), (split, problem.id))
                if seen_in != split:
                    raise ValueError(
                        f"{type(self).__name__}: {split} question {problem.id} ({problem.question!r:.80}) is also "
                        f"{seen_in} question {seen_id}: a split that repeats another's questions measures "
                        "memory, not reasoning; remove the repeats from one split's data"
                    )

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends a response besides EOS: a few-shot model would go on to invent the next question."""
        return ("\n\nQuestion:",) if self.prompt_style == "few_shot" else ()

    def prompt(self, problem: Problem, tokenizer=None) -> str:
        """The text a policy continues to solve ``problem`` (``chat`` needs the tokenizer's template)."""
        if self.prompt_style == "plain":
            return problem.question + "\n"
        if self.prompt_style == "few_shot":
            shots = [p for p in self.problems("train")[: self.num_shots + 1] if p.id != problem.id][: self.num_shots]
            examples = "".join(f"Question: {p.question}\nAnswer: {p.solution}\n\n" for p in shots)
            return f"{examples}Question: {problem.question}\nAnswer:"
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_style='chat' needs a tokenizer with a chat template; use 'few_shot' or 'plain' for "
                "models without one"
            )
        messages = [{"role": "user", "content": f"{self.instruction}\n\n{problem.question}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def target(self, problem: Problem) -> str:
        """The training text that follows the prompt: the reference solution (with a space after few-shot
        prompts' "Answer:")."""
        return (" " if self.prompt_style == "few_shot" else "") + problem.solution


def question_key(question: str) -> str:
    """A question as compared for repeats: whitespace collapsed, case folded."""
    return " ".join(question.split()).casefold()


def split_off(
    problems: list[Problem], size: int, seed: int, option: str, source: str
) -> tuple[list[Problem], list[Problem]]:
    """Split ``size`` questions off a list by a seeded shuffle: (the rest in their order, the split-off part).

    Repeats of a question (one per reference solution, say) stay on one side: the split-off part asks each of
    its questions once (the chosen question's other copies are left out) and the rest keeps every copy of the
    others. Without repeats, this is a seeded sample of ``size`` problems. A size the problems cannot spare is
    an error naming ``option`` (the task's, e.g. ``validation_size``) and ``source`` (where they come from)."""
    copies: dict[str, list[int]] = {}
    for index, problem in enumerate(problems):
        copies.setdefault(question_key(problem.question), []).append(index)
    firsts = [indices[0] for indices in copies.values()]
    if not 0 <= size < len(firsts):
        raise ValueError(
            f"{option} is {size}, but {source} holds {len(firsts)} distinct questions and at least one must stay: "
            f"set {option} between 0 and {len(firsts) - 1}"
        )
    chosen = {firsts[i] for i in random.Random(seed).sample(range(len(firsts)), size)}
    chosen_keys = {question_key(problems[i].question) for i in chosen}
    rest = [p for p in problems if question_key(p.question) not in chosen_keys]
    return rest, [p for i, p in enumerate(problems) if i in chosen]
