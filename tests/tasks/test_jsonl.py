import json

import pytest

from lit_reason.tasks import JSONLTask, RecordFields


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_problems_from_named_fields_with_and_without_solutions(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"q": f"What is {i} + 1?", "a": i + 1, "work": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}"} for i in range(10)],
    )
    test = write_jsonl(tmp_path / "test.jsonl", [{"q": "Half of 5?", "a": "#### 2.5"}, {"q": "Cost?", "a": "$1,234"}])
    with_solutions = JSONLTask(train, fields=RecordFields("q", "a", "work"), validation_size=3)
    train_problems = with_solutions.problems("train")
    assert len(train_problems) == 7 and len(with_solutions.problems("validation")) == 3
    first = train_problems[0]
    assert first.answer == first.intermediate_results[-1]
    assert first.solution.endswith(f"\n#### {first.answer:.0f}") and first.is_correct(first.solution)
    # Answers written as text are read as responses are graded; no solution field: the target is the answer line.
    answers_only = JSONLTask(train, test, fields=RecordFields("q", "a"), validation_size=3)
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


def test_repeated_questions_never_straddle_train_and_a_split_carved_from_it(tmp_path):
    # Every question twice (two reference solutions each), once with other spacing and case.
    rows = [{"question": f"What is {i} + 1?", "answer": i + 1} for i in range(10)]
    rows += [{"question": f"what is  {i} + 1? ", "answer": i + 1} for i in range(10)]
    task = JSONLTask(write_jsonl(tmp_path / "train.jsonl", rows), validation_size=4)
    train, validation = task.problems("train"), task.problems("validation")
    asked = {p.question.split()[2] for p in validation}
    assert len(validation) == len(asked) == 4  # each chosen question once
    assert len(train) == 12 and not asked & {p.question.split()[2] for p in train}


def test_a_split_that_repeats_a_training_question_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}?", "answer": i} for i in range(5)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "new?", "answer": 1}, {"question": "Q3? ", "answer": 3}])
    task = JSONLTask(train, test, validation_size=0)
    for _ in range(2):  # and again: the refused splits are not kept
        with pytest.raises(ValueError, match=r"JSONLTask: test question 6 \('Q3\?'\) is also train question 3"):
            task.problems("train")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q?"}', "no field 'answer'"),
        ('{"question": "q?", "answer": "many"}', "field 'answer' holds no number"),
        ('{"question": "q?", "answer": true}', "field 'answer' has the wrong type"),
        ('{"question": "q?", "answer": NaN}', "not a finite number"),
        ('{"question": "q?", "answer": 1' + "0" * 400 + "}", "not a finite number"),  # was a bare OverflowError
        ('{"question": "  ", "answer": 1}', "field 'question' is empty"),
        ("[1, 2]", "expected an object"),
        ('{"question": "q?", "answer": 1', "not valid JSON"),
    ],
)
def test_errors_name_the_file_line_and_field(tmp_path, line, message):
    train = write_jsonl(tmp_path / "train.jsonl", ['{"question": "fine?", "answer": 1}', line])
    with pytest.raises(ValueError, match=rf"train.jsonl:2: .*{message}"):
        JSONLTask(train, validation_size=0).problems("train")


def test_a_wrong_value_is_quoted_short(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ['{"question": ["' + "x" * 100_000 + '"], "answer": 1}'])
    with pytest.raises(ValueError, match=r"train.jsonl:1: field 'question' has the wrong type") as error:
        JSONLTask(train, validation_size=0).problems("train")
    assert len(str(error.value)) < len(train) + 200  # the whole value (2 MB in a review) was repeated


def test_missing_and_empty_files_say_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_path .*nope.jsonl does not exist"):
        JSONLTask(str(tmp_path / "nope.jsonl")).problems("train")
    with pytest.raises(ValueError, match="empty.jsonl holds no questions"):
        JSONLTask(write_jsonl(tmp_path / "empty.jsonl", [])).problems("train")


def test_text_answers_are_compared_after_normalization(tmp_path):
    rows = [
        {"q": "Who wrote it?", "a": "The Beatles"},
        {"q": "Capital?", "a": "#### Washington, D.C."},
        {"q": "Pick one", "a": 3},
        {"q": "Even?", "a": "yes", "work": "4 = 2 * 2"},
        {"q": "Serial?", "a": 12345678901234567890},  # past 2**53: kept as written, not rounded through a float
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    fields = RecordFields("q", "a", "work", answer_type="text")
    with pytest.raises(ValueError, match=r"train.jsonl:1: no field 'work'"):
        JSONLTask(train, fields=fields, validation_size=0).problems("train")
    problems = JSONLTask(train, fields=RecordFields("q", "a", answer_type="text"), validation_size=0).problems("train")
    assert [p.answer for p in problems] == ["The Beatles", "Washington, D.C.", "3", "yes", "12345678901234567890"]
    assert problems[0].solution == "#### The Beatles" and problems[0].is_correct(problems[0].solution)
    assert problems[0].is_correct("They were british.\n#### beatles!") and not problems[0].is_correct("#### Stones")
    assert problems[1].is_correct("So \\boxed{washington dc}") and not problems[1].is_correct("Washington, D.C.")
    assert problems[2].is_correct("#### 3") and not problems[2].is_correct("#### 3.0")  # text: no tolerance
    exact_fields = RecordFields("q", "a", answer_type="text", normalization="exact")
    exact = JSONLTask(train, fields=exact_fields, validation_size=0)
    assert not exact.problems("train")[0].is_correct("#### the beatles")
    yes_no = write_jsonl(tmp_path / "bool.jsonl", [{"q": "Is 4 even?", "a": True}, {"q": "Is 3 even?", "a": False}])
    assert [p.answer for p in JSONLTask(yes_no, fields=RecordFields("q", "a", answer_type="text"), validation_size=0)
            .problems("train")] == ["yes", "no"]  # fmt: skip
    # Chat prompts ask for the kind of answer that is graded.
    assert "'#### <answer>'" in JSONLTask(train, fields=RecordFields("q", "a", answer_type="text")).instruction
    assert "'#### <number>'" in JSONLTask(train).instruction
    with pytest.raises(ValueError, match="fields.answer_type must be number or text"):
        RecordFields(answer_type="string")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("two\nlines", "must be a one-line text answer"),
        ("x" * 201, "must be a one-line text answer"),
        (float("nan"), "is not a finite number"),
        (10**400, "must be a one-line text answer of 1 to 200 characters"),
        ("?!", "is nothing once normalized"),
    ],
)
def test_bad_text_answers_name_the_line_and_field(tmp_path, answer, message):
    train = tmp_path / "bad.jsonl"
    train.write_text(json.dumps({"q": "?", "a": answer}) + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:1: field 'a' {message}"):
        JSONLTask(str(train), fields=RecordFields("q", "a", answer_type="text"), validation_size=0).problems("train")


def test_a_validation_size_too_large_names_the_option_and_the_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"question": f"q{i}?", "answer": i} for i in range(3)])
    with pytest.raises(ValueError, match=r"validation_size is 200, but .*train\.jsonl holds 3 distinct questions"):
        JSONLTask(train).problems("train")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("3 1/2", "holds no number that responses are graded against"),  # was 31/2 = 15.5
        ("4 2", "holds no number that responses are graded against"),  # was 42
        ("1_000", "holds no number that responses are graded against"),  # was 1000, Python's digit grouping
        ("1e35", "holds no number that responses are graded against"),
        (10**32, r".*graded against: 1e\+32 is too large to grade"),  # a float does not hold it: near answers match
        (1e35, r".*graded against: 1e\+35 is too large to grade"),
        (12345678901234567890, r".*graded against: 1.2345678901234567e\+19 is too large"),  # stored as ...7168
        (4e-7, r".*graded against: 4e-07 is within 1e-6 of 0"),  # written "#### 0": a response of 0 graded correct
    ],
)
def test_numeric_answers_are_read_as_responses_are_graded(tmp_path, answer, message):
    rows = [{"question": "fine?", "answer": 1}, {"question": "q?", "answer": answer}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=rf"train\.jsonl:2: field 'answer' {message}"):
        JSONLTask(train, validation_size=0).problems("train")


def test_text_answers_in_markup_are_read_as_responses_are(tmp_path):
    rows = [{"q": "Which choice?", "a": "\\boxed{B}"}, {"q": "Capital of France?", "a": "\\text{Paris}"}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    problems = JSONLTask(train, fields=RecordFields("q", "a", answer_type="text"), validation_size=0).problems("train")
    assert [p.answer for p in problems] == ["B", "Paris"]
    assert all(p.is_correct(p.solution) for p in problems)  # the task's own reference solutions grade right
    assert problems[0].is_correct("#### B") and problems[1].is_correct("so \\boxed{\\text{Paris}}")


@pytest.mark.parametrize(
    ("solution", "reads"),
    [
        ("#### Step 1\n2+2=4\n#### Answer\nSo 4.", "no answer"),  # markdown headings, no final answer line
        ("2+2=4\n#### 5", "'5'"),  # a final line that disagrees with the answer field
    ],
    ids=["headings", "disagrees"],
)
def test_a_solution_that_grades_wrong_names_the_line_and_fields(tmp_path, solution, reads):
    rows = [{"q": "What is 1+1?", "a": 2, "work": "1+1=2"}, {"q": "What is 2+2?", "a": "4", "work": solution}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    message = rf"train\.jsonl:2: field 'work' does not grade correct against field 'a' \('4'\): .* reads {reads}"
    with pytest.raises(ValueError, match=message):
        JSONLTask(train, fields=RecordFields("q", "a", "work"), validation_size=0).problems("train")


def test_validation_and_test_files_may_leave_the_solution_out(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"q": f"What is {i} + 1?", "a": i + 1, "work": "..."} for i in range(3)]
    )
    validation = write_jsonl(tmp_path / "val.jsonl", [{"q": "Half of 5?", "a": 2.5}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"q": "Cost?", "a": "$1,234", "work": None}, {"q": "Two?", "a": 2}])
    task = JSONLTask(train, test, validation, fields=RecordFields("q", "a", "work"))
    assert [p.solution for p in task.problems("validation")] == ["#### 2.5"]
    assert [p.solution for p in task.problems("test")] == ["#### 1234", "#### 2"]
    assert task.problems("train")[0].solution == "...\n#### 1"


def test_a_question_again_with_another_answer_is_refused_and_a_key_given_twice_too(tmp_path):
    # Both were kept silently: the repeat graded the other answer correct, and the last key's value won.
    lines = [
        '{"question": "q?", "answer": 1, "solution": "#### 1"}',
        '{"question": " Q? ", "answer": 1.0, "solution": "1 #### 1"}',
    ]
    train = write_jsonl(tmp_path / "train.jsonl", lines)
    assert len(JSONLTask(train, validation_size=0).problems("train")) == 2  # the same answer: a second solution
    write_jsonl(tmp_path / "train.jsonl", [*lines, '{"question": "q?", "answer": 2, "solution": "#### 2"}'])
    with pytest.raises(ValueError, match=r"train.jsonl:3: the question of .*train.jsonl:1 again, with another answer"):
        JSONLTask(train, validation_size=0).problems("train")
    write_jsonl(tmp_path / "train.jsonl", ['{"question": "q?", "answer": 1, "answer": 2}'])
    with pytest.raises(ValueError, match=r"train.jsonl:1: not readable JSON \(key 'answer' twice in one object\)"):
        JSONLTask(train, validation_size=0).problems("train")


def test_a_text_answer_given_as_a_float_keeps_its_digits(tmp_path):
    rows = [
        '{"question": "Tiny?", "answer": 1e-7}',
        '{"question": "Long?", "answer": 0.1234567}',
        '{"question": "Two?", "answer": 2.0}',
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    task = JSONLTask(train, validation_size=0, fields=RecordFields(answer_type="text"))
    assert [p.answer for p in task.problems("train")] == ["1e-07", "0.1234567", "2"]  # were "0", "0.123457"
