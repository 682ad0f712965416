"""The shared evaluation's per-question records, and pairing two evaluations' prediction files question by
question."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from lit_reason.evaluation import Evaluator, answer_values, paired_outcomes, read_predictions
from lit_reason.sampling import SampleBatch
from lit_reason.tasks import Problem
from tests.helpers.fakes import logger_into


def test_predictions_pair_on_question_ids(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    row = {"question": "q", "greedy": "g", "samples": ["a", "b"]}
    baseline = write(
        "a.jsonl", [{**row, "id": i, "greedy_correct": False, "samples_correct": [False, i == 2]} for i in (1, 2, 3)]
    )
    candidate = write(
        "b.jsonl", [{**row, "id": i, "greedy_correct": True, "samples_correct": [True, True]} for i in (2, 3, 4)]
    )
    outcomes = paired_outcomes(read_predictions(baseline), read_predictions(candidate))
    assert outcomes["maj@1"][0].tolist() == [0.0, 0.0] and outcomes["maj@1"][1].tolist() == [1.0, 1.0]
    assert outcomes["pass@1"][0].tolist() == [0.5, 0.0] and outcomes["pass@2"][0].tolist() == [1.0, 0.0]
    other_task = write(
        "e.jsonl", [{**row, "question": "another", "id": 3, "greedy_correct": True, "samples_correct": []}]
    )
    with pytest.raises(ValueError, match=r"1 of the 1 question ids .* \(id 3: 'q' against 'another'\)"):
        paired_outcomes(read_predictions(baseline), read_predictions(other_task))
    broken = write("c.jsonl", [row])
    with pytest.raises(ValueError, match=r"c\.jsonl:1"):
        read_predictions(broken)
    for field, value in [("outcomes", [1, 2]), ("samples_correct", "TF"), ("greedy_correct", 1)]:
        wrong_type = write("f.jsonl", [{**row, "id": 1, "greedy_correct": True, "samples_correct": [], field: value}])
        with pytest.raises(ValueError, match=rf"f\.jsonl:1: not a lit-reason prediction record \({field} must"):
            read_predictions(wrong_type)
    infinite_id = tmp_path / "d.jsonl"
    infinite_id.write_text('{"id": Infinity, "greedy_correct": true, "samples_correct": []}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:1: not a lit-reason prediction record"):
        read_predictions(infinite_id)


def test_each_record_keeps_its_outcome_of_every_metric_and_they_average_to_the_metrics():
    problems = [Problem(id=i, question=f"q{i}", solution="", answer=float(i)) for i in range(3)]

    def batch(texts):
        per_question = len(texts) // len(problems)
        return SampleBatch.from_token_lists(
            [[1]] * len(texts), [[2]] * len(texts), texts, pad_token_id=0,
            prompt_index=[i // per_question for i in range(len(texts))],
        )  # fmt: skip

    # q0: greedy right, samples 0/0/5 (majority right), q1: greedy wrong, samples 1/7/7 (majority wrong, one
    # right), q2: nothing right
    greedy = batch(["#### 0", "#### 3", "#### 9"])
    sampled = batch(["#### 0", "#### 0", "#### 5", "#### 1", "#### 7", "#### 7", "#### 4", "none", "#### 8"])
    scores = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.1, 0.1, 0.5, 0.5, 0.5])
    evaluator = Evaluator(num_samples=3, rerank=True)
    evaluator.update(problems, greedy, sampled, scores)
    values, records = evaluator.compute()
    outcomes = {i: records[i]["outcomes"] for i in range(3)}
    assert [outcomes[i]["maj@1"] for i in range(3)] == [1.0, 0.0, 0.0]
    assert [outcomes[i]["maj@3"] for i in range(3)] == [1.0, 0.0, 0.0]
    assert [outcomes[i]["rerank@3"] for i in range(3)] == [0.0, 1.0, 0.0]  # q0's top score is the wrong 5
    assert [outcomes[i]["pass@3"] for i in range(3)] == [1.0, 1.0, 0.0]
    assert outcomes[0]["pass@1"] == pytest.approx(2 / 3) and outcomes[1]["pass@1"] == pytest.approx(1 / 3)
    for name, value in values.items():
        if name in outcomes[0]:
            assert value.item() == pytest.approx(sum(outcomes[i][name] for i in range(3)) / 3)


def test_a_question_evaluated_twice_keeps_the_first_outcome_in_its_record_as_in_the_metrics():
    """Padding puts a question on two ranks (or twice on one); the metrics count its first evaluation: so must
    the predictions file (it kept the last one)."""
    problem = [Problem(id=0, question="q", solution="", answer=1.0)]
    evaluator = Evaluator(num_samples=1, rerank=False)
    for text in ("#### 1", "#### 2"):  # the two copies answered differently
        batch = SampleBatch.from_token_lists([[1]], [[2]], [text], pad_token_id=0)
        evaluator.update(problem, batch, batch, None)
    values, records = evaluator.compute()
    assert values["maj@1"].item() == 1.0
    assert records[0]["greedy"] == "#### 1" and records[0]["outcomes"]["maj@1"] == 1.0


def test_with_one_sample_maj_at_1_stays_the_greedy_answer_and_no_metric_is_listed_twice():
    """At K = 1 the sampled maj@K is named maj@1 too: it replaced the greedy maj@1, so the predictions file
    (which paired comparisons and the study read) recorded the sampled answer's outcome as maj@1."""
    problem = [Problem(id=0, question="q", solution="", answer=1.0)]
    greedy = SampleBatch.from_token_lists([[1]], [[2]], ["#### 1"], pad_token_id=0)
    sampled = SampleBatch.from_token_lists([[1]], [[2]], ["#### 2"], pad_token_id=0)
    evaluator = Evaluator(num_samples=1, rerank=False)
    evaluator.update(problem, greedy, sampled, None)
    values, records = evaluator.compute()
    assert sorted(evaluator.metrics) == ["distinct_correct@1", "maj@1", "pass@1"]
    assert values["maj@1"].item() == 1.0 and values["pass@1"].item() == 0.0
    assert records[0]["outcomes"] == {"maj@1": 1.0, "pass@1": 0.0, "distinct_correct@1": 0.0}


def test_text_answers_vote_by_their_normalized_form_and_records_keep_what_was_stated():
    problems = [
        Problem(id=0, question="Band?", solution="", answer="The Beatles"),
        Problem(id=1, question="Sum?", solution="", answer=4.0),
    ]
    greedy = SampleBatch.from_token_lists([[1]] * 2, [[2]] * 2, ["#### beatles.", "#### 5"], pad_token_id=0)
    # q0: "Stones" once, the Beatles written two ways twice: the majority is right though no two texts agree.
    texts = ["#### Stones", "#### the Beatles", "#### BEATLES", "#### 4", "#### 4.00001", "none"]
    sampled = SampleBatch.from_token_lists([[1]] * 6, [[2]] * 6, texts, pad_token_id=0, prompt_index=[0, 0, 0, 1, 1, 1])
    evaluator = Evaluator(num_samples=3, rerank=False)
    evaluator.update(problems, greedy, sampled, None)
    values, records = evaluator.compute()
    assert records[0]["outcomes"]["maj@1"] == 1.0 and records[0]["outcomes"]["maj@3"] == 1.0
    assert records[0]["samples_correct"] == [False, True, True]
    assert records[0]["greedy_answer"] == "beatles"  # its full stop a sentence's
    assert records[0]["sample_answers"] == ["Stones", "the Beatles", "BEATLES"]
    assert records[1]["sample_answers"] == [4.0, 4.00001, None] and records[1]["outcomes"]["maj@3"] == 1.0
    assert values["answered"].item() == pytest.approx((1 + 2 / 3) / 2)


def test_answer_values_code_text_answers_by_their_normal_form():
    paris = Problem(id=0, question="Capital of France?", solution="", answer="Paris", normalization="squad")
    seven = Problem(id=1, question="3 + 4?", solution="", answer=7.0)
    values, targets = answer_values([paris, seven], [["the Paris", None, "Rome", "rome!"], [7.0, None, 6.0, 7.0]], 4)
    assert torch.equal(values.isnan(), torch.tensor([[False, True, False, False], [False, True, False, False]]))
    assert values.nan_to_num(nan=-1).tolist() == [[0.0, -1.0, 1.0, 1.0], [7.0, -1.0, 6.0, 7.0]]
    assert targets.tolist() == [0.0, 7.0]
    empty_values, empty_targets = answer_values([], [], 4)  # a rank's empty share of a batch
    assert empty_values.shape == (0, 4) and empty_targets.shape == (0,)


def test_a_crash_while_writing_predictions_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    from lit_reason import evaluation
    from lit_reason.evaluation import PREDICTION_FIELDS, write_predictions

    def records(correct: bool) -> dict:
        fields = {field: None for field in PREDICTION_FIELDS} | {"greedy_correct": correct, "samples_correct": []}
        return {i: fields | {"id": i} for i in range(3)}

    path = tmp_path / "val-step4.jsonl"
    write_predictions(path, records(True))
    before = path.read_text()
    written = []

    def dumps_then_crash(value, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed after two lines
        written.append(value)
        return json.dumps(value, *args, **kwargs)

    monkeypatch.setattr(evaluation.json, "dumps", dumps_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_predictions(path, records(False))
    monkeypatch.undo()
    assert path.read_text() == before and len(read_predictions(path)) == 3


def test_a_validate_or_test_of_a_checkpoint_is_recorded_at_the_checkpoint_s_step(tmp_path):
    # Lightning restores no loop state outside a fit: a test of a step-40 checkpoint was written as
    # test-step0.jsonl and step 0 in metrics.json. The data module's checkpointed progress says where it is.
    from types import SimpleNamespace

    from lit_reason.data import RolloutDataModule
    from lit_reason.evaluation import PREDICTION_FIELDS, write_outputs

    fitting = SimpleNamespace(current_epoch=2, global_step=40, state=SimpleNamespace(fn="fit"))
    data = RolloutDataModule()
    data.trainer = fitting
    state = data.state_dict()
    restored = RolloutDataModule()
    restored.load_state_dict(state)
    trainer = SimpleNamespace(
        loggers=[logger_into(tmp_path)],  # not TensorBoard's: metrics.json and the predictions, files
        strategy=SingleDeviceStrategy(),
        datamodule=restored,
        current_epoch=0,
        global_step=0,
        state=SimpleNamespace(fn="test"),
    )
    records = {1: {field: None for field in PREDICTION_FIELDS} | {"id": 1, "lengths": [3]}}
    write_outputs(trainer, "test", {"test/maj@1": torch.tensor(0.5)}, records, seconds=12.34, text_samples=0)
    (entry,) = json.loads((tmp_path / "metrics.json").read_text())
    assert (entry["stage"], entry["epoch"], entry["step"], entry["seconds"]) == ("test", 2, 40, 12.3)
    assert (tmp_path / "predictions" / "test-step40.jsonl").is_file()
    restored.setup("test")  # a later test without a checkpoint evaluates the weights as they are now
    assert restored.restored_progress is None


def test_an_evaluation_pass_is_timed_from_its_first_batch_s_generation():
    # The clock started at the first grading, after the first batch's responses were generated: a study that
    # takes validations off a run's wall time would have counted that generation as training.
    import time

    problem = Problem(id=0, question="q", solution="", answer=1.0)
    batch = SampleBatch.from_token_lists([[1]], [[2]], ["#### 1"], pad_token_id=0)
    evaluator = Evaluator(num_samples=1, rerank=False)
    evaluator.start_batch()
    time.sleep(0.05)  # generating the batch's responses
    evaluator.update([problem], batch, batch, None)
    evaluator.start_batch()  # the next batch: the pass's clock goes on
    assert evaluator.seconds_since_start() >= 0.05


def test_a_fit_records_where_it_ended_and_warns_when_its_final_policy_was_not_validated(tmp_path, recwarn):
    # With check_val_every_n_epoch=2 and max_epochs=3 (or a max_steps mid-round) the last validation is of an
    # earlier policy, and nothing said so: a study reported it as the run's result.
    from types import SimpleNamespace

    from lit_reason.evaluation import record_training_end

    validated = {"stage": "val", "step": 2, "epoch": 1, "samples_drawn": 16, "metrics": {}}
    (tmp_path / "metrics.json").write_text(json.dumps([validated]))
    trainer = SimpleNamespace(
        loggers=[logger_into(tmp_path)],
        strategy=SingleDeviceStrategy(),
        global_step=5,
        current_epoch=2,
        datamodule=None,
    )
    with pytest.warns(UserWarning, match="training ended at step 5, its last validation was at step 2"):
        record_training_end(trainer)
    (_, ended) = json.loads((tmp_path / "metrics.json").read_text())
    assert ended == {"stage": "fit_end", "step": 5, "epoch": 2, "samples_drawn": 0}
    (tmp_path / "metrics.json").write_text(json.dumps([validated]))
    trainer.global_step = 2
    record_training_end(trainer)  # validated at its end: nothing to say
    assert not [w for w in recwarn if "training ended" in str(w.message)]
