import json

import pytest

from lit_reason.tasks import JSONLTask


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_problems_from_named_fields_with_and_without_solutions(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"q": f"What is {i} + 1?", "a": i + 1, "work": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}"} for i in range(10)],
    )
    test = write_jsonl(tmp_path / "test.jsonl", [{"q": "Half of 5?", "a": "#### 2.5"}, {"q": "Cost?", "a": "$1,234"}])
    with_solutions = JSONLTask(train, question_field="q", answer_field="a", solution_field="work", validation_size=3)
    train_problems = with_solutions.problems("train")
    assert len(train_problems) == 7 and len(with_solutions.problems("validation")) == 3
    first = train_problems[0]
    assert first.answer == first.intermediate_results[-1]
    assert first.solution.endswith(f"\n#### {first.answer:.0f}") and first.is_correct(first.solution)
    # Answers written as text are read as responses are graded; no solution field: the target is the answer line.
    answers_only = JSONLTask(train, test, question_field="q", answer_field="a", validation_size=3)
    assert [p.answer for p in answers_only.problems("test")] == [2.5, 1234.0]
    assert [p.solution for p in answers_only.problems("test")] == ["#### 2.5", "#### 1234"]
    ids = [p.id for split in ("train", "validation", "test") for p in answers_only.problems(split)]
    assert len(set(ids)) == len(ids)


def test_a_validation_file_replaces_the_carved_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": "a?", "answer": 1}])
    validation = write_jsonl(tmp_path / "val.jsonl", [{"question": "b?", "answer": 2}])
    task = JSONLTask(train, validation_path=validation)
    assert [p.question for p in task.problems("train")] == ["a?"]
    assert [p.answer for p in task.problems("validation")] == [2.0] and task.problems("test") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q?"}', "no field 'answer'"),
        ('{"question": "q?", "answer": "many"}', "field 'answer' holds no number"),
        ('{"question": "q?", "answer": true}', "field 'answer' has the wrong type"),
        ('{"question": "q?", "answer": NaN}', "not a finite number"),
        ('{"question": "  ", "answer": 1}', "field 'question' is empty"),
        ("[1, 2]", "expected a JSON object"),
        ('{"question": "q?", "answer": 1', "not valid JSON"),
    ],
)
def test_errors_name_the_file_line_and_field(tmp_path, line, message):
    train = write_jsonl(tmp_path / "train.jsonl", ['{"question": "fine?", "answer": 1}', line])
    with pytest.raises(ValueError, match=rf"train.jsonl:2: .*{message}"):
        JSONLTask(train, validation_size=0).problems("train")


def test_missing_and_empty_files_say_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_path .*nope.jsonl does not exist"):
        JSONLTask(str(tmp_path / "nope.jsonl")).problems("train")
    with pytest.raises(ValueError, match="empty.jsonl holds no questions"):
        JSONLTask(write_jsonl(tmp_path / "empty.jsonl", [])).problems("train")
