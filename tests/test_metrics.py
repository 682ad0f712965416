import itertools
import math

import pytest
import torch

from lit_reason.metrics import (
    DistinctCorrect,
    MajorityAtK,
    PassAtK,
    RerankAtK,
    first_answered_samples,
    first_occurrence,
    majority_answer,
    pass_at_k,
    score_classification,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values_and_stability():
    assert pass_at_k(2, 1, 1) == 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 / 4) * (2 / 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k wrong samples
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    value = pass_at_k(200, 100, 96)  # C(200, 96) overflows floats; the product form does not
    assert 0.0 <= value <= 1.0 and value == pytest.approx(1.0, abs=1e-12)
    assert pass_at_k(200, 0, 96) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_metric_means_over_questions():
    metric = PassAtK(k=2)
    correct = torch.tensor([[True, False, False, False], [False, False, False, False], [True, True, True, True]])
    metric.update(correct)
    expected = (pass_at_k(4, 1, 2) + 0.0 + 1.0) / 3
    assert metric.compute().item() == pytest.approx(expected)
    any_correct = PassAtK(k=2, unbiased=False)
    any_correct.update(correct)  # first two samples only: [T, F] [F, F] [T, T]
    assert any_correct.compute().item() == pytest.approx(2 / 3)


def test_repeated_question_ids_count_once():
    metric = PassAtK(k=1)
    metric.update(torch.tensor([[True], [False]]), torch.tensor([7, 8]))
    metric.update(torch.tensor([[True]]), torch.tensor([8]))  # a padded repeat of question 8: ignored
    assert metric.compute().item() == pytest.approx(0.5)
    assert first_occurrence(torch.tensor([3, 1, 3, -1, -1, 1])).tolist() == [True, True, False, True, True, False]


def test_majority_tie_rule_tolerance_and_missing():
    assert majority_answer([3.0, 5.0, 5.0, 3.0]) == 3.0  # tie: the answer seen first wins
    assert majority_answer([None, 2.0, float("nan"), 4.0, 4.0]) == 4.0  # missing answers do not vote
    assert majority_answer([2.0, 1.0, 1.00000001]) == 1.0  # within tolerance counts as equal (else 2.0 wins the tie)
    assert majority_answer([None, float("nan")]) is None
    assert majority_answer([10_000.0, 10_001.0, 10_001.0]) == 10_001.0  # a near miss is another answer
    near_misses = MajorityAtK()
    near_misses.update(torch.tensor([[10_001.0, 10_001.0]]), torch.tensor([10_000.0]))
    assert near_misses.compute().item() == 0.0
    metric = MajorityAtK(k=4)
    nan = float("nan")
    answers = torch.tensor([[3.0, 5.0, 5.0, 3.0], [nan, nan, nan, nan], [2.0, 9.0, 9.0, 2.0], [1.0, 2.0, 2.0, 2.0]])
    metric.update(answers, torch.tensor([3.0, 1.0, 9.0, 1.0]))
    assert metric.compute().item() == pytest.approx(1 / 4)
    first_only = MajorityAtK(k=1)
    first_only.update(answers, torch.tensor([3.0, 1.0, 9.0, 1.0]))
    assert first_only.compute().item() == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="only 4 samples"):
        MajorityAtK(k=5).update(answers, torch.zeros(4))


def test_rerank_takes_the_top_scored_sample():
    metric = RerankAtK()
    correct = torch.tensor([[False, True, False], [True, False, False], [False, False, True]])
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.2, 0.8, 0.1], [0.5, 0.5, 0.4]])  # last row: tie -> first
    metric.update(correct, scores)
    assert metric.compute().item() == pytest.approx(1 / 3)
    diverged = RerankAtK()  # a NaN score (a diverged reward model) ranks last, not first as argmax has it
    diverged.update(torch.tensor([[True, False]]), torch.tensor([[0.9, float("nan")]]))
    assert diverged.compute().item() == 1.0
    # A confident ORM's probabilities differ past float32's 1 - 6e-8: cast to float32, both were 1 and tied.
    confident = RerankAtK()
    confident.update(torch.tensor([[False, True]]), torch.tensor([[1 - 1e-10, 1 - 1e-12]], dtype=torch.float64))
    assert confident.compute().item() == 1.0


def test_distinct_correct_counts_unique_signatures_of_correct_samples():
    metric = DistinctCorrect()
    correct = torch.tensor([[True, True, True, False], [False, False, False, False]])
    signatures = torch.tensor([[11, 11, 12, 13], [1, 2, 3, 4]])
    metric.update(correct, signatures)
    assert metric.compute().item() == pytest.approx((2 + 0) / 2)


def test_score_classification_by_hand():
    scores, correct = torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([True, False, False, True])
    values = {name: value.item() for name, value in score_classification(scores, correct).items()}
    assert values["orm_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + 2 * math.log(0.4)) / 4)
    assert values["orm_accuracy"] == 0.5  # 0.9 and 0.2 on the right side of 0.5
    assert values["orm_auroc"] == 0.75  # of the pairs (correct, wrong), 0.4 < 0.6 alone is ranked wrongly
    assert values["orm_calibration_error"] == pytest.approx((0.1 + 0.2 + 0.6 + 0.6) / 4)  # one sample per bin
    assert math.isnan(score_classification(scores[:1], correct[:1])["orm_auroc"].item())  # one class: undefined
    assert all(math.isnan(v.item()) for v in score_classification(torch.zeros(0), torch.zeros(0, dtype=bool)).values())


def test_a_question_padded_onto_two_ranks_counts_its_samples_once():
    gathered = [(0, [(0.9, True)]), (1, []), (2, [(0.3, False), (0.8, True)]), (0, [(0.9, True)])]
    assert first_answered_samples(gathered) == [(0.9, True), (0.3, False), (0.8, True)]


def test_empty_metric_is_nan():
    assert math.isnan(PassAtK(k=1).compute().item())


def _metric_on_rank(rank: int, world_size: int) -> float:
    metric = PassAtK(k=1)
    if rank == 0:
        metric.update(torch.tensor([[True], [False], [True]]), torch.tensor([0, 1, 2]))
    else:  # question 0 again: the padding that evens out the ranks, with a different outcome
        metric.update(torch.tensor([[True], [True], [False]]), torch.tensor([3, 4, 0]))
    return metric.compute().item()


@pytest.mark.slow
def test_metrics_reduce_per_question_across_two_processes():
    from tests.helpers.distributed import run_in_processes

    results = run_in_processes(_metric_on_rank, timeout=120)
    assert results == [pytest.approx(4 / 5)] * 2  # questions 0..4 once each: 1, 0, 1, 1, 1
