"""Outcome-based Reward Model (ORM): a token-level verifier, after Cobbe et al. 2021 as used by Havrilla et
al. 2024 (arXiv 2403.04642).

The ORM is a language-model trunk (initialised from a policy) with a scalar head read at every response
token; ``sigmoid`` of it estimates the probability that the sample's final answer is correct given the text
so far. It is trained with binary cross-entropy against the sample's final correctness on all response
tokens, optionally plus the language-modelling loss on the same responses (Cobbe et al.'s joint objective).
Training data are K samples per question from a frozen policy (by default the shared warm start), drawn
through the RolloutDataModule every round (or once), or read from a JSONL rollout file.

Validation samples K responses per held-out question with the shared evaluation settings and reports, on
samples with a parseable answer, the final-token loss, accuracy, AUROC, calibration error and the
within-question AUROC (pairs of samples of one question), plus rerank@K next to maj@K and pass@K.

Deviation: by default the head also reads the trunk's own log-probability of each response token and its
running mean, minimum and sum, with the count of tokens so far (``likelihood_features``). A trunk
initialised from the policy holds this signal (the generator's confidence separates right from wrong samples
of one question), but a tiny trunk does not learn to extract it from its hidden states in a few minutes of
training; given to the head, the ORM starts from it and learns the rest with the usual objective.
``likelihood_features: false`` is the plain ORM.

Deviation: ``reference_lm_coef`` adds a language-modelling loss on reference solutions of training questions
(one batch of them beside every batch of samples). Cobbe et al.'s joint objective models the samples
themselves, right and wrong; modelling correct solutions instead makes the trunk a better model of the task
than the policy it judges, so its own log-probabilities of the policy's mistakes fall and the likelihood
features separate right from wrong samples better. With ``trunk_training: language_model`` the
cross-entropy trains the head alone, which keeps the trunk a model of correct solutions (the README's ORM
section gives the measurements).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from lit_reason.algorithms.base import ReasoningModule
from lit_reason.batches import Example, LabelledBatch, batch_from_state, batch_state, fits_context, make_token_batch
from lit_reason.data import TrainData
from lit_reason.distributed import (
    equal_share,
    full_state_dict,
    gather_objects,
    gather_to_rank_zero,
    rank_and_world_size,
    this_ranks_share,
    token_mean_over_ranks,
)
from lit_reason.evaluation import GradedQuestions, markdown_table, trained_to
from lit_reason.files import jsonl_records
from lit_reason.metrics import WithinQuestionAUROC, first_answered_samples, score_classification
from lit_reason.policy import PolicySpec, disable_dropout, load_model
from lit_reason.rewards import grade
from lit_reason.run_logs import run_directory, run_log
from lit_reason.sampling import SampleBatch, SamplingConfig, encode_response_prefix
from lit_reason.tasks import Problem
from lit_reason.tensors import next_token_nll, take_rows
from lit_reason.value_model import ValueModel, freeze_unused_output_head


def orm_loss(
    values: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of every response token's value against its sample's label, summed over the
    response tokens of the batch, and how many there are (as ``next_token_nll``: ``token_mean_over_ranks``
    makes the mean over every rank's tokens).

    Args:
        values: (B, L) logits.
        labels: (B,) float in {0, 1}.
        response_mask: (B, L) bool.

    Returns:
        (scalar sum, scalar count).
    """
    targets = labels[:, None].expand_as(values).float()
    losses = torch.nn.functional.binary_cross_entropy_with_logits(values.float(), targets, reduction="none")
    return (losses * response_mask).sum(), response_mask.sum()


class OutcomeRewardModel(ReasoningModule):
    """Train an outcome reward model on samples from a frozen policy.

    Args:
        trunk: where the ORM's language-model trunk starts (default: the policy's weights).
        rollout: sampling of training responses: ``num_samples`` is K per question, plus temperature,
            top-k, top-p and the token limit.
        resample_every_round: sample afresh for every round's questions; if false, keep training on the
            first round's samples.
        rollout_file: train on responses from this JSONL file (one ``{"question_id": int, "response": str}``
            a line, ids of the task's training split, and optionally ``"truncated": true`` for a response cut off
            by the token limit, which gets no EOS; correctness is graded here) instead of sampling. Each run
            writes its rollouts in this format under ``<log_dir>/rollouts/``.
        lm_loss_coef: weight of the language-modelling loss on the training responses, added to the
            cross-entropy (0: off; Cobbe et al. found the joint objective better).
        reference_lm_coef: weight of a language-modelling loss on reference solutions of training questions,
            one batch of ``batch_size`` of them per step, added to the cross-entropy (0: off; see the module
            docstring). Needs a trunk that trains and a task whose problems have worked solutions.
        likelihood_features: the head also reads the trunk's log-probability of each response token, their
            running mean, minimum and sum, and the count of response tokens so far (see ``ValueModel``).
        trunk_training: what trains the trunk. ``joint``: the cross-entropy and the language-modelling
            losses (Cobbe et al.); ``language_model``: the language-modelling losses alone, the head reading
            the trunk's outputs without backpropagating into them; ``frozen``: nothing, only the head learns
            (a probe on the policy's own representations and likelihoods; the trunk's dropout is off).
        trunk_lr: learning rate of the trunk when it trains (``None``: the optimizer's, which the head uses);
            a head starting from zero wants a far larger one than a pretrained trunk.
        batch_size: responses per optimizer step on each rank.
        **kwargs: the shared options (``policy``: the frozen policy whose samples are judged; optimizer,
            lr_schedule, evaluation, text_samples, seed: shuffles the training responses). ``orm`` does not
            apply.
    """

    trains_reward_model = True

    def __init__(
        self,
        trunk: PolicySpec | None = None,
        rollout: SamplingConfig = SamplingConfig(num_samples=8, temperature=0.7, max_new_tokens=128),
        resample_every_round: bool = True,
        rollout_file: str | None = None,
        lm_loss_coef: float = 0.0,
        reference_lm_coef: float = 0.0,
        likelihood_features: bool = True,
        trunk_training: Literal["joint", "language_model", "frozen"] = "joint",
        trunk_lr: float | None = None,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("orm") is not None:
            raise ValueError("OutcomeRewardModel trains an ORM; it does not take another one (orm must be null)")
        for name, coef in (("lm_loss_coef", lm_loss_coef), ("reference_lm_coef", reference_lm_coef)):
            if coef > 0 and trunk_training == "frozen":
                raise ValueError(
                    f"{name} > 0 trains the trunk's language model: it needs trunk_training other than frozen"
                )
        if trunk_training == "language_model" and lm_loss_coef == 0 and reference_lm_coef == 0:
            raise ValueError(
                "trunk_training: language_model trains the trunk on language-modelling losses only, but "
                "lm_loss_coef and reference_lm_coef are both 0; set one, or use trunk_training: frozen"
            )
        if batch_size < 1:
            raise ValueError(f"model.init_args.batch_size must be at least 1, got {batch_size}")
        super().__init__(**kwargs)
        self.trunk_spec = trunk
        self.rollout = rollout
        self.resample_every_round = resample_every_round
        self.rollout_file = rollout_file
        self.lm_loss_coef = lm_loss_coef
        self.reference_lm_coef = reference_lm_coef
        self.likelihood_features = likelihood_features
        self.trunk_training = trunk_training
        self.trunk_lr = trunk_lr
        self.batch_size = batch_size
        self.network: ValueModel | None = None  # built in configure_model
        self._first_round: list[LabelledBatch] | None = None
        self._checkpointed_first_round: list[Any] | None = None  # every rank's, as a checkpoint holds them
        self._reference_pool: list[Example] | None = None  # encoded on first use
        self.within_question_auroc = WithinQuestionAUROC()
        # (question id, its answered samples' (score, correct)), gathered whole: a rank with no answered sample
        # has nothing to synchronise, and a question padded onto two ranks is counted once.
        self._answered: list[tuple[int, list[tuple[float, bool]]]] = []

    # ------------------------------------------------------------------------------------------- models
    def build_extra_models(self) -> None:
        self.policy.requires_grad_(False).eval()  # the policy only samples
        trunk = load_model(self.trunk_spec or self.policy_spec, self.tokenizer)
        uses_lm_head = self.lm_loss_coef > 0 or self.reference_lm_coef > 0 or self.likelihood_features
        freeze_unused_output_head(trunk, used=uses_lm_head)
        self.network = ValueModel(trunk.train(), likelihood_features=self.likelihood_features)
        if self.trunk_training == "frozen":  # its dropout (Lightning trains in train mode) would only add noise
            trunk.requires_grad_(False)
            disable_dropout(trunk)

    def networks_to_shard(self) -> list[torch.nn.Module]:
        return [self.policy, self.network]

    def reward_network(self) -> ValueModel:
        return self.network

    def trainable_parameters(self) -> list[dict[str, Any]]:
        """The head at the optimizer's learning rate; the trunk (when it trains) at ``trunk_lr``."""
        groups = [{"params": list(self.network.head.parameters())}]
        trunk = [p for p in self.network.trunk.parameters() if p.requires_grad]
        if trunk:
            groups.append({"params": trunk} if self.trunk_lr is None else {"params": trunk, "lr": self.trunk_lr})
        return groups

    # --------------------------------------------------------------------------------------------- data
    def make_train_data(self, problems: list[Problem], round_index: int) -> TrainData:
        if self._first_round is None and self._checkpointed_first_round is not None:  # a resumed fit
            self._first_round = self.first_round_from_checkpoint()
        if self.rollout_file is not None:
            if self._first_round is None:
                self._first_round = self._batches_from_file(round_index)
            return TrainData(self._shuffled_with_references(self._first_round, round_index), stats={"from_file": 1.0})
        if not self.resample_every_round and self._first_round is not None:
            return TrainData(self._shuffled_with_references(self._first_round, round_index))
        sampled = self.generate(problems, self.rollout, ("orm-rollout", round_index), "rollout")
        labels = grade(problems, sampled)
        self._save_rollout(problems, sampled, labels, round_index)
        # Trained on the response behind the prompt alone, as ``reward_scores`` scores it (not behind the
        # response prefix, e.g. a return token, that the policy sampled behind).
        prefix = encode_response_prefix(self.tokenizer, self.conditioning("rollout").response_prefix)
        batches = self._labelled_batches(sampled, labels.float(), prefix_columns=len(prefix))
        if not self.resample_every_round:
            self._first_round = batches
        stats = {"correct_fraction": labels.float().mean().item(), "responses": float(len(labels))}
        return TrainData(self._shuffled_with_references(batches, round_index), samples_drawn=len(sampled), stats=stats)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The first round's labelled samples, which later rounds re-use: a resumed run must not sample afresh
        # (other data, samples counted twice). Each rank has its own, gathered to rank 0, which writes it.
        if self._first_round is not None:
            checkpoint["orm_first_round_by_rank"] = gather_to_rank_zero([batch_state(b) for b in self._first_round])
        elif self._checkpointed_first_round is not None:  # loaded, not used yet
            checkpoint["orm_first_round_by_rank"] = self._checkpointed_first_round

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Kept as saved: only a fit that trains on them needs this rank's (testing a checkpoint needs none).
        by_rank = checkpoint.get("orm_first_round_by_rank")
        if by_rank is None and "orm_first_round" in checkpoint:  # checkpoints of lit-reason 0.1.0: one rank's
            saved = [{"type": "LabelledBatch", "fields": batch} for batch in checkpoint["orm_first_round"]]
            by_rank = [saved] * rank_and_world_size()[1]
        self._first_round, self._checkpointed_first_round = None, by_rank

    def first_round_from_checkpoint(self) -> list[LabelledBatch]:
        """This rank's first-round batches of the checkpoint the fit resumed from."""
        share = this_ranks_share(self._checkpointed_first_round, "the ORM's first-round samples")
        self._checkpointed_first_round = None
        return [batch_from_state(batch) for batch in share]

    def _labelled_batches(
        self, sampled: SampleBatch, labels: torch.Tensor, prefix_columns: int = 0
    ) -> list[LabelledBatch]:
        """Batches of ``batch_size`` shuffled responses with their labels, without the last ``prefix_columns``
        prompt columns (``SampleBatch.without_prompt_end``)."""
        input_ids, attention_mask = sampled.without_prompt_end(prefix_columns, self.tokenizer.pad_token_id)
        order = list(range(len(labels)))
        random.Random(f"{self.seed}-order").shuffle(order)
        batches = []
        for start in range(0, len(order), self.batch_size):
            rows = torch.tensor(order[start : start + self.batch_size])
            kept_mask, kept_ids, response_mask = take_rows(rows, attention_mask, input_ids, sampled.response_mask)
            batches.append(LabelledBatch(kept_ids, kept_mask, response_mask, labels[rows]))
        return batches

    def _shuffled_with_references(self, batches: list[LabelledBatch], round_index: int) -> list[LabelledBatch]:
        """The round's batches shuffled, each with a batch of reference solutions when those are trained on."""
        batches = list(batches)
        random.Random(f"{self.seed}-{round_index}").shuffle(batches)
        if self.reference_lm_coef == 0:
            return batches
        references = self._reference_examples(len(batches) * self.batch_size, round_index)
        return [
            replace(
                batch,
                references=make_token_batch(
                    references[i * self.batch_size : (i + 1) * self.batch_size], self.tokenizer.pad_token_id
                ),
            )
            for i, batch in enumerate(batches)
        ]

    def _reference_examples(self, count: int, round_index: int) -> list[Example]:
        """``count`` (prompt ids, solution ids) pairs of training questions that fit the context, drawn
        without replacement while they last, differently on every rank and round."""
        if self._reference_pool is None:  # the training split is encoded once, not every round
            # Without the policy's response prefix (an RCRL policy's return token), as the ORM reads responses.
            examples = [
                self.encode_example(p, self.task.target(p), response_prefix="")
                for p in self.task.problems("train")
                if p.solution
            ]
            self._reference_pool = [e for e in examples if fits_context(e, self.max_length)]
        if not self._reference_pool:
            raise ValueError(
                f"reference_lm_coef > 0 needs reference solutions of training questions within the context of "
                f"{self.max_length} tokens, but {type(self.task).__name__} has none; set reference_lm_coef: 0"
            )
        rng = random.Random(f"{self.seed}-references-{round_index}-{rank_and_world_size()[0]}")
        chosen = []
        while len(chosen) < count:
            chosen += rng.sample(self._reference_pool, min(len(self._reference_pool), count - len(chosen)))
        return chosen

    def _save_rollout(
        self, problems: list[Problem], sampled: SampleBatch, labels: torch.Tensor, round_index: int
    ) -> None:
        """Write this rank's samples where ``rollout_file`` can read them again (beside the run's logs; a
        Trainer without a logger has none: its ``log_dir`` is the working directory)."""
        if self._trainer is None or not self.trainer.loggers:
            return
        log_dir = run_directory(self.trainer)  # a broadcast from rank 0: every rank asks
        rank, _ = rank_and_world_size()
        path = log_dir / "rollouts" / f"round{round_index}-rank{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as file:
            for p, text, label, truncated in zip(
                sampled.prompt_index.tolist(), sampled.texts, labels.tolist(), sampled.truncated.tolist(), strict=True
            ):
                row = {"question_id": problems[p].id, "response": text, "correct": bool(label), "truncated": truncated}
                file.write(json.dumps(row) + "\n")

    def _batches_from_file(self, round_index: int) -> list[LabelledBatch]:
        problems = {p.id: p for p in self.task.problems("train")}
        # As many on every rank, so as many batches (the last one partial): a round runs the fewest any rank made.
        rows = equal_share(_read_rollout_file(Path(self.rollout_file), problems), f"{self.rollout_file}'s responses")
        answered = [problems[row.question_id] for row in rows]
        sampled = self._encode_responses(answered, rows)
        return self._labelled_batches(sampled, grade(answered, sampled).float())

    def _encode_responses(self, problems: list[Problem], rows: list[RolloutRow]) -> SampleBatch:
        """Responses given as text, laid out like the sampler's output: EOS behind each, except those cut off by
        the token limit (an empty response is just EOS)."""
        # The ORM judges responses without a policy's response prefix (as reward_scores masks it out).
        examples = [
            self.encode_example(p, row.response, response_prefix="") for p, row in zip(problems, rows, strict=True)
        ]
        return SampleBatch.from_token_lists(
            [prompt for prompt, _ in examples],
            [response[:-1] if row.truncated else response for (_, response), row in zip(examples, rows, strict=True)],
            [row.response for row in rows],
            pad_token_id=self.tokenizer.pad_token_id,
            truncated=[row.truncated for row in rows],
        )

    # ----------------------------------------------------------------------------------------- training
    def training_step(self, batch: LabelledBatch, batch_idx: int) -> torch.Tensor:
        values, logits = self.network(
            batch.input_ids,
            batch.attention_mask,
            batch.response_mask,
            lm_logits=self.lm_loss_coef > 0,
            detach_trunk=self.trunk_training == "language_model",
        )
        # Each term is a mean over every rank's tokens (``token_mean_over_ranks``); logged averaged over ranks.
        loss = token_mean_over_ranks(*orm_loss(values, batch.labels, batch.response_mask), device=self.device)
        self.log("train/orm_loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        if self.lm_loss_coef > 0:
            nll = next_token_nll(logits, batch.input_ids, batch.response_mask)
            lm_loss = token_mean_over_ranks(*nll, device=self.device)
            self.log("train/lm_loss", lm_loss, batch_size=len(batch), sync_dist=True)
            loss = loss + self.lm_loss_coef * lm_loss
        if self.reference_lm_coef > 0:
            references = batch.references
            _, logits = self.network(references.input_ids, references.attention_mask, lm_logits=True)
            nll = next_token_nll(logits, references.input_ids, references.loss_mask)
            reference_loss = token_mean_over_ranks(*nll, device=self.device)
            self.log("train/reference_lm_loss", reference_loss, batch_size=len(references), sync_dist=True)
            loss = loss + self.reference_lm_coef * reference_loss
        return loss

    # --------------------------------------------------------------------------------------- evaluation
    def update_reward_metrics(self, graded: GradedQuestions) -> None:
        scores, correct, answered = graded.scores, graded.correct, graded.answered
        self.within_question_auroc.update(scores, correct, answered, graded.question_ids)
        for question_id, row_scores, row_correct, row_answered in zip(
            graded.question_ids.tolist(), scores.tolist(), correct.tolist(), answered.tolist(), strict=True
        ):
            samples = zip(row_scores, row_correct, row_answered, strict=True)
            self._answered.append((question_id, [(s, c) for s, c, a in samples if a]))

    def log_evaluation(self, stage: str, extra: dict[str, torch.Tensor] | None = None) -> None:
        values, scores, labels = self.reward_metric_values(stage)
        log = run_log(self.trainer)
        if len(scores) and log is not None:
            step = trained_to(self.trainer)[1]
            for name, members in (("correct", scores[labels]), ("wrong", scores[~labels])):
                if len(members):  # a weak policy may have no correct (or no wrong) sample at all
                    log.histogram(f"{stage}/orm_score_{name}", members, step)
            log.text(f"{stage}/orm_reliability", reliability_table(scores, labels), step)
        super().log_evaluation(stage, {**values, **(extra or {})})

    def reward_metric_values(self, stage: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The evaluation's ORM metrics (every rank's samples; reset for the next), and the pooled scores (N,)
        and correctness (N,) of its answered samples. Every rank calls it."""
        values = {f"{stage}/orm_within_question_auroc": self.within_question_auroc.compute()}
        self.within_question_auroc.reset()
        samples = first_answered_samples(gather_objects(self._answered))
        self._answered.clear()
        scores = torch.tensor([s for s, _ in samples], dtype=torch.float32)
        labels = torch.tensor([c for _, c in samples], dtype=torch.bool)
        values |= {f"{stage}/{name}": value for name, value in score_classification(scores, labels).items()}
        return values, scores, labels

    # ------------------------------------------------------------------------------------------- export
    def export_policy(self, path: str | Path) -> None:
        """Export the ORM (trunk, head and tokenizer): what algorithms' ``orm`` option loads."""
        state = full_state_dict(self.network)
        if rank_and_world_size()[0] == 0:
            self.network.save(path, self.tokenizer, state)


def reliability_table(scores: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> str:
    """A Markdown reliability diagram: per score bin, the mean predicted probability, the observed fraction
    correct and the number of samples."""
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.clamp(torch.bucketize(scores, edges[1:-1]), 0, bins - 1)
    rows = [
        [
            f"{edges[b]:.1f}-{edges[b + 1]:.1f}",
            f"{scores[index == b].mean():.3f}",
            f"{labels[index == b].float().mean():.3f}",
            int((index == b).sum()),
        ]
        for b in range(bins)
        if (index == b).any()
    ]
    return markdown_table(["scores", "mean score", "fraction correct", "samples"], rows)


class RolloutRow(NamedTuple):
    """A line of a ``rollout_file``."""

    question_id: int
    response: str
    truncated: bool


def _read_rollout_file(path: Path, problems: dict[int, Problem]) -> list[RolloutRow]:
    if not path.is_file():
        raise FileNotFoundError(f"rollout_file {path} does not exist")
    rows = []
    for where, row in jsonl_records(path):
        question_id = row.get("question_id") if isinstance(row, dict) else None
        if (
            isinstance(question_id, bool)
            or not isinstance(question_id, int)
            or not isinstance(row.get("response"), str)
            or not isinstance(row.get("truncated", False), bool)
        ):
            raise ValueError(
                f'{where}: expected {{"question_id": int, "response": str}} (and optionally "truncated": bool), got '
                f"{row!r:.200}"
            )
        if question_id not in problems:
            raise ValueError(f"{where}: question_id {question_id} is not in the task's training split")
        rows.append(RolloutRow(question_id, row["response"], row.get("truncated", False)))
    if not rows:
        raise ValueError(f"{path} holds no responses")
    return rows
