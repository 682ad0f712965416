"""Per-question evaluation metrics: maj@K, pass@K, rerank@K and distinct correct solutions.

Each metric reduces a question's K samples to one number on the rank that sampled them and keeps
``(question id, value)`` pairs as tensor states reduced by concatenation. ``compute`` keeps the first value
of every question id and averages: answers never cross ranks as strings, and a question that was padded onto
two ranks (so that every rank runs the same number of batches) counts once.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error
from torchmetrics.utilities import dim_zero_cat

from lit_reason.tasks.answers import answers_match


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021).

    ``1 - C(n - c, k) / C(n, k)`` computed as ``1 - prod(1 - k / i for i in n-c+1..n)``, stable for large n;
    1.0 when fewer than k samples are wrong.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_answer(answers: list[float | None]) -> float | None:
    """The most frequent answer, answers that ``answers_match`` counting as equal; missing answers do not vote.

    Tie rule: among equally frequent answers, the one that appears first wins.
    """
    groups: list[list[float]] = []  # [representative, count] in order of first appearance
    for answer in answers:
        if answer is None or math.isnan(answer):
            continue
        for group in groups:
            if answers_match(answer, group[0]):
                group[1] += 1
                break
        else:
            groups.append([answer, 1])
    if not groups:
        return None
    return max(groups, key=lambda group: group[1])[0]  # max keeps the first of equal counts


class PerQuestionMetric(Metric):
    """Base: states are a value and an id per question; ``compute`` is the mean over distinct ids.

    Questions updated without ids (``question_ids=None``) are all counted.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, k: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if k is not None and k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("question_ids", default=[], dist_reduce_fx="cat")

    def _first_k(self, samples: torch.Tensor) -> torch.Tensor:
        """(Q, n) -> (Q, k): the first k samples of each question."""
        if samples.ndim != 2:
            raise ValueError(f"expected a (questions, samples) tensor, got shape {tuple(samples.shape)}")
        if self.k is None:
            return samples
        if samples.shape[1] < self.k:
            raise ValueError(f"{type(self).__name__}(k={self.k}) got only {samples.shape[1]} samples per question")
        return samples[:, : self.k]

    def _record(self, values: torch.Tensor, question_ids: torch.Tensor | None) -> None:
        if question_ids is None:
            question_ids = torch.full((len(values),), -1, dtype=torch.long, device=self.device)
        if len(question_ids) != len(values):
            raise ValueError(f"got {len(values)} questions but {len(question_ids)} question ids")
        self.values.append(values.detach().to(device=self.device, dtype=torch.float32))
        self.question_ids.append(question_ids.to(device=self.device, dtype=torch.long))

    def last_update(self) -> torch.Tensor:
        """(Q,) float: each question's value from the latest ``update`` (what a prediction file records)."""
        return self.values[-1]

    def compute(self) -> torch.Tensor:
        if isinstance(self.values, list) and not self.values:
            return torch.tensor(float("nan"), device=self.device)
        values, ids = dim_zero_cat(self.values), dim_zero_cat(self.question_ids)
        return values[first_occurrence(ids)].mean()


def first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """(N,) bool mask: the first position of every id; negative ids (unknown) are always kept."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(unique),), len(ids), device=ids.device, dtype=torch.long)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    keep = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    keep[first] = True
    return keep | (ids < 0)


class PassAtK(PerQuestionMetric):
    """pass@k: the probability that at least one of k samples is correct.

    Args:
        k: samples allowed per question.
        unbiased: the unbiased estimator of Chen et al. 2021 over all n >= k samples of a question; if
            False, whether any of the first k samples is correct.

    ``update(correct, question_ids=None)``: correct is a (questions, n) bool tensor.
    """

    def __init__(self, k: int, unbiased: bool = True, **kwargs) -> None:
        super().__init__(k=None if unbiased else k, **kwargs)
        self.pass_k = k
        self.unbiased = unbiased

    def update(self, correct: torch.Tensor, question_ids: torch.Tensor | None = None) -> None:
        correct = self._first_k(correct.bool())
        if self.unbiased:
            n = correct.shape[1]
            values = torch.tensor([pass_at_k(n, int(c), self.pass_k) for c in correct.sum(-1).tolist()])
        else:
            values = correct.any(-1).float()
        self._record(values, question_ids)


class MajorityAtK(PerQuestionMetric):
    """maj@k: whether the majority answer of k samples is correct (ties go to the answer seen first).

    Args:
        k: samples that vote (the first k); ``None``: all of them.

    ``update(answers, targets, question_ids=None)``: answers (questions, n) float, NaN where a sample
    states no answer; targets (questions,) float.
    """

    def update(self, answers: torch.Tensor, targets: torch.Tensor, question_ids: torch.Tensor | None = None) -> None:
        answers = self._first_k(answers.double())
        values = []
        for row, target in zip(answers.tolist(), targets.tolist(), strict=True):
            values.append(float(answers_match(majority_answer(row), target)))
        self._record(torch.tensor(values), question_ids)


class RerankAtK(PerQuestionMetric):
    """rerank@k: whether the sample with the highest score (e.g. an ORM's) among k is correct.

    Args:
        k: candidates (the first k); ``None``: all of them. Ties go to the first; a NaN score ranks last.

    ``update(correct, scores, question_ids=None)``: correct (questions, n) bool; scores (questions, n) float.
    """

    def update(self, correct: torch.Tensor, scores: torch.Tensor, question_ids: torch.Tensor | None = None) -> None:
        # In float64: probabilities of confident samples that differ only past float32's 1 - 6e-8 stay apart.
        correct, scores = self._first_k(correct.bool()), self._first_k(scores.double())
        best = scores.nan_to_num(nan=-torch.inf).argmax(-1, keepdim=True)
        self._record(correct.gather(-1, best)[:, 0].float(), question_ids)


class DistinctCorrect(PerQuestionMetric):
    """Distinct correct solutions per question: correct samples that perform different sequences of
    calculations (see ``operation_signature``), averaged over questions.

    ``update(correct, signatures, question_ids=None)``: correct (questions, n) bool; signatures
    (questions, n) long.
    """

    def update(self, correct: torch.Tensor, signatures: torch.Tensor, question_ids: torch.Tensor | None = None) -> None:
        correct, signatures = self._first_k(correct.bool()), self._first_k(signatures.long())
        values = [
            float(len({s for s, ok in zip(row_signatures, row_correct, strict=True) if ok}))
            for row_signatures, row_correct in zip(signatures.tolist(), correct.tolist(), strict=True)
        ]
        self._record(torch.tensor(values), question_ids)


def concordant_pairs(scores: list[float], labels: list[bool]) -> tuple[float, int]:
    """Pairs (positive, negative) of one question's samples ranked the right way (ties count half), and how
    many such pairs there are."""
    positives = [s for s, label in zip(scores, labels, strict=True) if label]
    negatives = [s for s, label in zip(scores, labels, strict=True) if not label]
    concordant = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return float(concordant), len(positives) * len(negatives)


def first_answered_samples(per_question: list[tuple[int, list[tuple[float, bool]]]]) -> list[tuple[float, bool]]:
    """The (score, correct) samples of every question, each question's from its first entry: a question padded
    onto two ranks (gathered in rank order) counts once."""
    kept: dict[int, list[tuple[float, bool]]] = {}
    for question_id, samples in per_question:
        kept.setdefault(question_id, samples)
    return [sample for samples in kept.values() for sample in samples]


def score_classification(scores: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """How scores in (0, 1) classify correctness, over all samples pooled: ``orm_loss`` (binary cross-entropy),
    ``orm_accuracy`` (at 0.5), ``orm_auroc`` (NaN while every sample is correct, or none is) and
    ``orm_calibration_error`` (expected, 10 equal-width bins).

    Args:
        scores: (N,) float (NaN for every metric when N is 0).
        correct: (N,) bool.
    """
    if not len(scores):
        return dict.fromkeys(("orm_loss", "orm_accuracy", "orm_auroc", "orm_calibration_error"), torch.tensor(math.nan))
    labels = correct.long()
    logits = torch.logit(scores.clamp(1e-6, 1 - 1e-6))
    return {
        "orm_loss": torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()),
        "orm_accuracy": ((scores > 0.5) == correct).float().mean(),
        "orm_auroc": binary_auroc(scores, labels) if 0 < labels.sum() < len(labels) else torch.tensor(math.nan),
        "orm_calibration_error": binary_calibration_error(scores, labels, n_bins=10),
    }


class WithinQuestionAUROC(Metric):
    """AUROC over pairs of samples of the same question (one correct, one wrong): how often the score ranks
    the correct one higher, pooled over all such pairs. What reranking K samples of a question needs.

    ``update(scores, correct, keep=None, question_ids=None)``: scores and correct (questions, n); ``keep``
    (questions, n) bool excludes samples (e.g. those with no parseable answer).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("concordant", default=[], dist_reduce_fx="cat")
        self.add_state("pairs", default=[], dist_reduce_fx="cat")
        self.add_state("question_ids", default=[], dist_reduce_fx="cat")

    def update(
        self,
        scores: torch.Tensor,
        correct: torch.Tensor,
        keep: torch.Tensor | None = None,
        question_ids: torch.Tensor | None = None,
    ) -> None:
        keep = torch.ones_like(correct, dtype=torch.bool) if keep is None else keep.bool()
        counts = []
        for row_scores, row_correct, row_keep in zip(
            scores.tolist(), correct.bool().tolist(), keep.tolist(), strict=True
        ):
            kept = [(s, c) for s, c, k in zip(row_scores, row_correct, row_keep, strict=True) if k]
            counts.append(concordant_pairs([s for s, _ in kept], [c for _, c in kept]))
        if question_ids is None:
            question_ids = torch.full((len(counts),), -1, dtype=torch.long)
        self.concordant.append(torch.tensor([c for c, _ in counts], dtype=torch.float64, device=self.device))
        self.pairs.append(torch.tensor([p for _, p in counts], dtype=torch.float64, device=self.device))
        self.question_ids.append(question_ids.to(device=self.device, dtype=torch.long))

    def compute(self) -> torch.Tensor:
        if isinstance(self.pairs, list) and not self.pairs:
            return torch.tensor(float("nan"), device=self.device)
        keep = first_occurrence(dim_zero_cat(self.question_ids))
        pairs = dim_zero_cat(self.pairs)[keep].sum()
        if pairs == 0:
            return torch.tensor(float("nan"), device=self.device)
        return (dim_zero_cat(self.concordant)[keep].sum() / pairs).float()
