"""Expert Iteration (EI), after Havrilla et al. 2024, "Teaching Large Language Models to Reason with
Reinforcement Learning" (arXiv 2403.04642), and Anthony et al. 2017.

A round (one Lightning epoch):

1. sample K responses for each of the round's training questions from the current policy;
2. keep the correct ones, deduplicated (whitespace-normalised text, optionally also by the sequence of
   calculations), and add them to everything kept so far: D_i = R_i ∪ D_{i-1};
3. fine-tune on D_i (optionally mixed with reference solutions) for ``epochs_per_round`` passes, after
   re-starting from the base model, from the warm start, or continuing (``restart_from``); a re-start
   resets the weights, the optimizer state and the learning-rate schedule.

Deviation from the paper: it re-starts every round from the *pretrained* model (``restart_from: base``);
for a model trained from scratch, re-starting from the SFT warm start is the closest workable analogue, and
continuing is offered as well.

Kept data lives on every rank (each rank's new samples are gathered after sampling) and is checkpointed
with the round counter, so a resumed run continues with the same data.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lit_reason.adapters import with_adapter
from lit_reason.algorithms.sft import SFT
from lit_reason.batches import Example, TokenBatch, batch_examples
from lit_reason.data import TrainData, shard_evenly
from lit_reason.distributed import full_state_dict, gather_objects, load_full_state_dict, rank_and_world_size
from lit_reason.policy import PolicySpec
from lit_reason.rewards import RewardFunction, successes
from lit_reason.sampling import SampleBatch, SamplingConfig
from lit_reason.tasks import Problem
from lit_reason.tasks.answers import calculations

RestartFrom = Literal["base", "warm_start", "previous"]
Dedupe = Literal["text", "operations"]


@dataclass(frozen=True)
class KeptSample:
    """A sampled solution kept for training: the question's id, the response text exactly as sampled, and
    whether it succeeded: a right final answer, or a reward reaching ``reward_fn``'s threshold (Expert Iteration
    keeps only those)."""

    problem_id: int
    text: str
    correct: bool = True


def normalize_text(text: str) -> str:
    """Dedupe key of a response: whitespace runs collapsed, ends stripped (the kept text stays as sampled)."""
    return re.sub(r"\s+", " ", text).strip()


def dedupe_key(sample: KeptSample, dedupe: Dedupe) -> tuple:
    """Two samples of the same question with the same key are duplicates."""
    if dedupe == "operations":
        return (sample.problem_id, sample.correct, tuple(expression for expression, _ in calculations(sample.text)))
    return (sample.problem_id, sample.correct, normalize_text(sample.text))


class ExpertIteration(SFT):
    """Expert Iteration: sample, keep the correct solutions, fine-tune on all kept so far; repeat each round.

    Args:
        rollout: sampling of training solutions: ``num_samples`` is K per question, plus temperature,
            top-k, top-p and the token limit. Separate from ``evaluation``.
        epochs_per_round: passes over the kept data (and reference solutions) in each round.
        restart_from: what each round fine-tunes: ``base`` re-starts from ``base_policy`` (the paper),
            ``warm_start`` from the policy this run started from, ``previous`` continues. A re-start resets
            weights, optimizer state and LR schedule.
        base_policy: the model ``restart_from: base`` re-starts from (e.g. the pretrained model before SFT).
        dedupe: ``text`` drops samples whose whitespace-normalised text was kept before for the question;
            ``operations`` also drops those performing the same sequence of calculations.
        reference_solutions: training questions whose reference solutions are mixed into every round's data
            (0: kept samples only).
        reward_fn: a reward written in Python (``RewardFunction``): keep the samples whose reward reaches its
            threshold instead of those with the right final answer.
        **kwargs: ``SFT``'s options (batch_size) and the shared ones (policy, optimizer, lr_schedule,
            evaluation, text_samples, seed: also picks the reference solutions). The LR schedule restarts
            every round.
    """

    def __init__(
        self,
        rollout: SamplingConfig = SamplingConfig(num_samples=8, temperature=1.0, max_new_tokens=128),
        epochs_per_round: int = 1,
        restart_from: RestartFrom = "previous",
        base_policy: PolicySpec | None = None,
        dedupe: Dedupe = "text",
        reference_solutions: int = 0,
        reward_fn: RewardFunction | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if restart_from == "base" and base_policy is None:
            raise ValueError("restart_from='base' needs base_policy: the model each round re-starts from")
        self.rollout = rollout
        self.epochs_per_round = epochs_per_round
        self.restart_from = restart_from
        self.base_policy = base_policy
        if restart_from == "base":
            base_policy.resolved()  # a warm start trained now, not at the first restart, mid-run
        self.dedupe = dedupe
        self.reference_solutions = reference_solutions
        self.reward_fn = reward_fn
        self.kept: dict[tuple, KeptSample] = {}  # insertion-ordered D_i, identical on every rank
        self._problems_by_id: dict[int, Problem] | None = None

    # --------------------------------------------------------------------------------------------- round
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        batch = self.generate(problems, self.rollout, ("rollout", round_index), "rollout")
        correct = successes(problems, batch, self.reward_fn).tolist()
        new = self.add_to_kept(gather_objects(self.select_samples(problems, batch, correct)))
        if self.restart_from != "previous":
            self.restart()
        examples = self.round_examples(round_index)
        if not examples:
            raise RuntimeError(
                f"round {round_index}: no correct sample has been kept yet and there are no reference solutions to "
                "train on. Mix some in (reference_solutions), draw more samples (rollout.num_samples, "
                "questions_per_round) or start from a stronger policy."
            )
        batches = self.batches_of_round(examples, round_index)
        per_question = torch.tensor(correct, dtype=torch.float32).view(len(problems), -1)
        stats = {
            "correct_fraction": per_question.mean().item(),
            "questions_solved": (per_question.sum(-1) > 0).float().mean().item(),
            "new_unique_kept": float(new),
            "kept_total": float(len(self.kept)),
            "questions_with_kept": float(len({s.problem_id for s in self.kept.values()})),
            "train_examples": float(len(examples)),
        }
        return TrainData(batches, samples_drawn=len(batch), stats=stats)

    def select_samples(self, problems: list[Problem], batch: SampleBatch, correct: list[bool]) -> list[KeptSample]:
        """The samples worth keeping: correct, and not cut off at the token limit."""
        return [
            KeptSample(problems[int(p)].id, text)
            for p, text, ok, truncated in zip(
                batch.prompt_index, batch.texts, correct, batch.truncated.tolist(), strict=True
            )
            if ok and not truncated
        ]

    def add_to_kept(self, samples: list[KeptSample]) -> int:
        """Add samples not kept before (by ``dedupe``); returns how many were new."""
        before = len(self.kept)
        for sample in samples:
            self.kept.setdefault(dedupe_key(sample, self.dedupe), sample)
        return len(self.kept) - before

    def round_examples(self, round_index: int) -> list[tuple[Example, bool]]:
        """This rank's share of D_i plus reference solutions: (prompt ids, target ids) and whether correct."""
        by_id = self.problems_by_id()
        samples = list(self.kept.values())
        if self.reference_solutions:
            chosen = random.Random(f"{self.seed}-references").sample(
                sorted(by_id), min(self.reference_solutions, len(by_id))
            )
            samples += [KeptSample(i, self.task.target(by_id[i])) for i in chosen]
        random.Random(f"{self.seed}-{round_index}-shard").shuffle(samples)
        # Equal shares, so that every rank runs the same number of steps: a few samples repeat rather than
        # any being left out (with fewer samples than ranks, the rounded-down share was none at all).
        mine = shard_evenly(samples, *rank_and_world_size())
        return [(self.encode_sample(by_id[s.problem_id], s), s.correct) for s in mine]

    def encode_sample(self, problem: Problem, sample: KeptSample) -> Example:
        """The fine-tuning example of a kept sample: its prompt, then its text and EOS as the target."""
        return self.encode_example(problem, sample.text)

    def batches_of_round(self, examples: list[tuple[Example, bool]], round_index: int) -> list[TokenBatch]:
        """``epochs_per_round`` shuffled passes over the round's examples, in batches."""
        pairs = [example for example, _ in examples]
        return [
            batch
            for epoch in range(self.epochs_per_round)
            for batch in batch_examples(
                pairs, self.batch_size, self.max_length, self.tokenizer.pad_token_id, (self.seed, round_index, epoch)
            )
        ]

    def problems_by_id(self) -> dict[int, Problem]:
        if self._problems_by_id is None:
            self._problems_by_id = {p.id: p for p in self.task.problems("train")}
        return self._problems_by_id

    def restart(self) -> None:
        """Reset the policy's weights (to the base model or the warm start) and the optimizer state."""
        spec = self.base_policy if self.restart_from == "base" else self.policy_spec
        fresh = with_adapter(self.load_policy_network(spec), self.policy_spec.peft)  # a new adapter too
        load_full_state_dict(self.policy, full_state_dict(fresh))
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()

    # ------------------------------------------------------------------------------------------ training
    def lr_window(self, step: int) -> tuple[int, int]:
        """The LR schedule restarts every round: (place of optimizer step ``step`` in its round, the round's
        length)."""
        if self.steps.in_next_round(step):  # asked as this round ends, for the next round's first step
            return 0, 1  # (a window's first step has the same learning rate whatever its length)
        return step - self.steps.round_start, self.steps.round_steps

    # --------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kept_samples"] = [[s.problem_id, s.text, s.correct] for s in self.kept.values()]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.kept.clear()
        self.add_to_kept(
            [
                KeptSample(int(problem_id), str(text), bool(correct))
                for problem_id, text, correct in checkpoint.get("kept_samples", [])
            ]
        )
