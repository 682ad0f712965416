"""Return-Conditioned RL (RCRL), as compared in Havrilla et al. 2024 (arXiv 2403.04642), after decision-
transformer-style return conditioning for language models.

Rounds run as in Expert Iteration (K samples per question, data kept across rounds, ``restart_from``), but
both correct and incorrect samples are kept, each behind a token for its return — ``[GOOD]`` or ``[BAD]``
— placed between the prompt and the response. Fine-tuning on ``prompt + return token + response`` teaches
what each return looks like; sampling and evaluation condition on the good token (the sampler's response
prefix), so maj@1 / maj@K / pass@K mean the same as for every other algorithm. Until the policy has trained
on the good return token (a round that trained on data holding a correct sample) it samples unconditioned:
the first round keeps the starting policy's own samples (a warm start has never seen a return token, whose
fresh embedding would derail it), and validation before training measures the starting policy as it is. The
share of positive samples in each training batch is set by ``positive_ratio`` (the paper found a balanced ratio
worse than a skewed one), or left natural.

The return tokens are added to the tokenizer and the embeddings before anything is sharded; exported
policies carry them, and record the token evaluation conditions on as their ``Conditioning`` (the response
prefix in ``lit_reason.json``), which lit-reason's evaluation of an exported policy applies. Return tokens are never
generated (the sampler suppresses them; exported policies list them in ``suppress_tokens``, which
``model.generate`` honours too).

Addition, not in the paper: with ``guidance_scale`` above 1, evaluation contrasts the return token it
conditions on with the other one at every token, as classifier-free guidance with a negative prompt (Sanchez
et al. 2023, "Stay on topic with Classifier-Free Guidance", arXiv 2306.17806; Hugging Face's
``guidance_scale`` with ``negative_prompt_ids``). A small policy learns only a slight difference between the
two returns, spread over the steps where its mistakes fall, too slight to change a greedy choice; guidance
amplifies what it learned. Rollouts sample without it. The export records it (``guidance`` in
``lit_reason.json``); 1 (the default) turns it off.

Deviation: the new tokens' embedding rows start at the mean row plus noise of the existing rows' spread
(``return_token_spread``), not at the mean alone as Hugging Face's resizing leaves them. From the mean both
rows are the same vector, and fine-tuning at the usual learning rate hardly separates them (measured in the
README): the policy cannot tell ``[GOOD]`` from ``[BAD]`` and learns the incorrect samples as if they were
good ones.
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Literal

import torch

from lit_reason.algorithms.expert_iteration import ExpertIteration, KeptSample
from lit_reason.batches import Example, TokenBatch, fits_context, make_token_batch
from lit_reason.conditioning import Conditioning, Guidance, Stage
from lit_reason.data import TrainData
from lit_reason.policy import PolicySpec, load_model
from lit_reason.sampling import SampleBatch, encode_response_prefix
from lit_reason.tasks import Problem


class ReturnConditionedRL(ExpertIteration):
    """Return-conditioned fine-tuning on correct and incorrect samples, conditioned on the good return.

    Args:
        good_token: the return token of correct samples, and what sampling conditions on.
        bad_token: the return token of incorrect samples.
        positive_ratio: share of correct samples in every training batch, by subsampling the larger side
            (``None``: the natural ratio of the kept data).
        train_return_token: also train the policy to predict the return token itself.
        return_token_spread: newly added return tokens' embedding rows start at the mean row plus Gaussian
            noise of this many standard deviations of the existing rows (per dimension), so the two returns
            look different from the first step (0: both at the mean, nearly the same vector).
        condition_on: which return evaluation (and rollouts) condition on: ``good`` (the algorithm) or
            ``bad`` (to measure what conditioning does).
        guidance_scale: once conditioned, evaluation contrasts the return token it conditions on with the
            other one, as classifier-free guidance with the other return as the negative prompt:
            ``log p_other + guidance_scale * (log p - log p_other)`` at every token (Hugging Face's
            ``guidance_scale``); exported policies record it. Rollouts sample without it: the policy learns
            what each return looks like from its own conditioned samples. 1: no guidance; above 1 each
            evaluation forward pass also runs the other return's rows (about twice the cost).
        **kwargs: Expert Iteration's options (rollout, epochs_per_round, restart_from, base_policy, dedupe,
            reference_solutions) and the shared ones. Reference solutions count as correct samples.
    """

    def __init__(
        self,
        good_token: str = "[GOOD]",
        bad_token: str = "[BAD]",
        positive_ratio: float | None = None,
        train_return_token: bool = False,
        return_token_spread: float = 1.0,
        condition_on: Literal["good", "bad"] = "good",
        guidance_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.policy_spec.peft is not None:
            raise ValueError(
                "RCRL with policy.peft: its return tokens are new embedding rows, which a LoRA adapter leaves "
                "untrained; train RCRL's whole policy (drop policy.peft)"
            )
        if positive_ratio is not None and not 0 < positive_ratio < 1:
            raise ValueError(f"positive_ratio must be in (0, 1) or null, got {positive_ratio}")
        if positive_ratio is not None and self.batch_size < 2:
            raise ValueError(
                f"positive_ratio needs batches of at least one correct and one incorrect sample: batch_size must "
                f"be >= 2, got {self.batch_size}"
            )
        if positive_ratio is not None:
            per_batch = positives_per_batch(positive_ratio, self.batch_size)
            if abs(per_batch / self.batch_size - positive_ratio) > 0.05:
                warnings.warn(
                    f"positive_ratio {positive_ratio:g} with batch_size {self.batch_size}: each batch holds "
                    f"{per_batch} correct samples of {self.batch_size} ({per_batch / self.batch_size:.2f}), the "
                    "nearest share with one of each kind; a larger batch_size comes closer",
                    stacklevel=2,
                )
        if good_token == bad_token:
            raise ValueError(f"good_token and bad_token must differ, both are {good_token!r}")
        self.good_token, self.bad_token = good_token, bad_token
        self.positive_ratio = positive_ratio
        self.train_return_token = train_return_token
        if return_token_spread < 0:
            raise ValueError(f"return_token_spread must be >= 0, got {return_token_spread}")
        self.return_token_spread = return_token_spread
        self.condition_on = condition_on
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1: no guidance), got {guidance_scale}")
        self.guidance_scale = guidance_scale
        # Added before the model exists: configure_model grows the embeddings to the tokenizer's size.
        added = [t for t in (good_token, bad_token) if t not in self.tokenizer.get_vocab()]
        self.tokenizer.add_tokens(added, special_tokens=True)
        self.added_token_ids = tuple(self.tokenizer.convert_tokens_to_ids(added))
        # Whether the policy has been trained on return tokens, the good one among them: until then its row is
        # untrained, and conditioning on it would only derail the policy.
        self.conditioned = False
        self._round_teaches_good_return = False  # whether this round's data holds a correct sample

    def configure_model(self) -> None:
        super().configure_model()
        # An exported return-conditioned policy records its good token: it is conditioned already.
        self.conditioned = self.conditioned or self.recorded_conditioning.response_prefix == self.good_token

    def load_policy_network(self, spec: PolicySpec) -> torch.nn.Module:
        """The policy, with the return tokens' rows spread apart where they are new to it."""
        return load_model(spec, self.tokenizer, self.return_token_spread, new_token_ids=self.added_token_ids)

    def conditioning(self, stage: Stage) -> Conditioning:
        """Return tokens condition a response and are never generated. Once the policy has learned them,
        sampling conditions on the ``condition_on`` token and evaluation, with ``guidance_scale`` other than 1,
        contrasts it with the other one. Before that (round 0's rollout, the validation before training) the
        policy samples as it was trained: the warm start's own samples seed the first round, and the curves
        start at the warm start."""
        if not self.conditioned:
            return Conditioning(suppressed_token_ids=self._return_token_ids())
        return self._conditioned_on(self.condition_on, guided=stage == "evaluation")

    def export_conditioning(self) -> Conditioning:
        """An export conditions on the good return (with the evaluation's guidance), whatever was measured."""
        return self._conditioned_on("good", guided=True) if self.conditioned else self.conditioning("evaluation")

    def _conditioned_on(self, which: Literal["good", "bad"], guided: bool) -> Conditioning:
        token, other = (self.good_token, self.bad_token)[:: 1 if which == "good" else -1]
        guidance = Guidance(other, self.guidance_scale) if guided and self.guidance_scale != 1 else None
        return Conditioning(token, self._return_token_ids(), guidance)

    def _return_token_ids(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.convert_tokens_to_ids([self.good_token, self.bad_token]))

    # ------------------------------------------------------------------------------------------- rounds
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        data = super().make_train_data(problems, round_index)
        # The kept samples are the same on every rank, so every rank decides alike.
        self._round_teaches_good_return = self.reference_solutions > 0 or any(s.correct for s in self.kept.values())
        return data

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Once a round trains (a round can make no batch, or only ``[BAD]`` ones) on data that holds the good
        return, sample behind it from then on."""
        self.conditioned = self.conditioned or self._round_teaches_good_return

    def select_samples(self, problems: list[Problem], batch: SampleBatch, correct: list[bool]) -> list[KeptSample]:
        """Every sample not cut off at the token limit, correct or not."""
        return [
            KeptSample(problems[int(p)].id, text, ok)
            for p, text, ok, truncated in zip(
                batch.prompt_index, batch.texts, correct, batch.truncated.tolist(), strict=True
            )
            if not truncated
        ]

    def encode_sample(self, problem: Problem, sample: KeptSample) -> Example:
        """``prompt + return token`` then ``response + EOS``; the return token joins the target when it is
        trained on."""
        token = self.good_token if sample.correct else self.bad_token
        prompt_ids, target_ids = self.encode_example(problem, sample.text, response_prefix=token)
        if self.train_return_token:
            token_length = len(encode_response_prefix(self.tokenizer, token))
            return prompt_ids[:-token_length], prompt_ids[-token_length:] + target_ids
        return prompt_ids, target_ids

    def batches_of_round(self, examples: list[tuple[Example, bool]], round_index: int) -> list[TokenBatch]:
        if self.positive_ratio is None:
            return super().batches_of_round(examples, round_index)
        positives = [e for e, correct in examples if correct and fits_context(e, self.max_length)]
        negatives = [e for e, correct in examples if not correct and fits_context(e, self.max_length)]
        batches = []
        for epoch in range(self.epochs_per_round):
            batches += ratio_batches(
                positives,
                negatives,
                self.positive_ratio,
                self.batch_size,
                self.tokenizer.pad_token_id,
                (self.seed, round_index, epoch),
            )
        return batches

    # --------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # A save in a callback's on_train_batch_end comes before this module's: a batch of the round has trained.
        data = self._trainer.datamodule if self._trainer is not None else None
        trained = data is not None and data.batches_started > 0
        checkpoint["return_conditioned"] = self.conditioned or (self._round_teaches_good_return and trained)
        checkpoint["round_teaches_good_return"] = self._round_teaches_good_return  # a mid-round checkpoint's

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints of lit-reason 0.1.0 hold no flag: keep what the policy's export recorded.
        self.conditioned = bool(checkpoint.get("return_conditioned", self.conditioned))
        self._round_teaches_good_return = bool(checkpoint.get("round_teaches_good_return", False))


def ratio_batches(
    positives: list[Example], negatives: list[Example], positive_ratio: float, batch_size: int, pad_token_id: int, seed
) -> list[TokenBatch]:
    """Batches with ``round(positive_ratio * batch_size)`` positives each (at least one of each kind), the
    rest negatives, drawn without replacement until either kind runs out; the surplus is left out."""
    rng = random.Random(repr(seed))
    positives, negatives = rng.sample(positives, len(positives)), rng.sample(negatives, len(negatives))
    per_batch = positives_per_batch(positive_ratio, batch_size)
    count = min(len(positives) // per_batch, len(negatives) // (batch_size - per_batch))
    batches = []
    for i in range(count):
        members = (
            positives[i * per_batch : (i + 1) * per_batch]
            + negatives[i * (batch_size - per_batch) : (i + 1) * (batch_size - per_batch)]
        )
        rng.shuffle(members)
        batches.append(make_token_batch(members, pad_token_id))
    return batches


def positives_per_batch(positive_ratio: float, batch_size: int) -> int:
    """Correct samples in a batch of ``batch_size`` at ``positive_ratio``: rounded, at least one of each kind."""
    return min(batch_size - 1, max(1, round(positive_ratio * batch_size)))
