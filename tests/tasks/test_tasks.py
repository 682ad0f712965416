import json
import threading
from pathlib import Path

import pytest

from lit_reason.policy import build_char_tokenizer
from lit_reason.tasks import GSM8K, SVAMP, Arithmetic
from lit_reason.tasks.answers import calculate, calculations, extract_answer

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def small_task(**kwargs) -> Arithmetic:
    return Arithmetic(**{"train_size": 2000, "validation_size": 300, "test_size": 300, **kwargs})


def test_arithmetic_splits_are_disjoint_and_seeded():
    task = small_task()
    splits = {split: task.problems(split) for split in ("train", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 300, "test": 300}
    ids = [p.id for problems in splits.values() for p in problems]
    assert len(ids) == len(set(ids))
    computations = {
        split: {tuple(e for e, _ in calculations(p.solution)) + (p.answer,) for p in problems}
        for split, problems in splits.items()
    }
    assert not computations["train"] & computations["test"]
    assert not computations["train"] & computations["validation"]
    assert not computations["validation"] & computations["test"]
    questions = {split: {p.question for p in problems} for split, problems in splits.items()}
    assert not questions["train"] & questions["test"]
    again = small_task()
    assert [p.question for p in again.problems("test")] == [p.question for p in splits["test"]]
    other = small_task(seed=99)
    assert [p.question for p in other.problems("test")] != [p.question for p in splits["test"]]
    # Held-out splits do not depend on how many training problems there are.
    assert [p.question for p in small_task(train_size=500).problems("test")] == [p.question for p in splits["test"]]


def test_arithmetic_solutions_are_gsm8k_style_and_correct():
    task = small_task(operations=["+", "-", "*", "/"], max_steps=4)
    for problem in task.problems("train")[:500]:
        lines = problem.solution.splitlines()
        assert lines[-1] == f"#### {int(problem.answer)}"
        assert problem.is_correct(problem.solution)
        steps = calculations(problem.solution)
        assert 1 <= len(steps) == len(lines) - 1 <= 4
        for expression, result in steps:
            assert calculate(expression) == result
            assert 0 <= result <= task.max_value
        assert problem.intermediate_results == tuple(r for _, r in steps)
        assert extract_answer(problem.solution) == problem.answer


def test_arithmetic_knobs_are_validated():
    with pytest.raises(ValueError, match="operations"):
        Arithmetic(operations=["^"])
    with pytest.raises(ValueError, match="min_steps"):
        Arithmetic(min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="distinct"):
        Arithmetic(max_steps=1, max_operand=2, max_value=3, train_size=1000).problems("train")
    with pytest.raises(ValueError, match="need train_size >= 1"):  # a ZeroDivisionError in the first round
        Arithmetic(train_size=0)
    with pytest.raises(ValueError, match="validation_size, test_size >= 0"):
        Arithmetic(test_size=-1)
    with pytest.raises(ValueError, match="num_shots must be >= 0"):  # -3 made a 3.8M-character prompt
        Arithmetic(num_shots=-3)


def test_arithmetic_settings_that_never_finish_a_computation_are_an_error_not_a_hang():
    # Five halvings or thirdings of a start of at most 30 leave no whole number: every draw is a dead end.
    # In a thread, so that a regression (an unbounded retry loop) fails this test instead of hanging the suite.
    task = Arithmetic(operations=["/"], min_steps=5, max_steps=5, train_size=10, validation_size=10, test_size=10)
    errors: list[Exception] = []

    def load() -> None:
        try:
            task.problems("train")
        except ValueError as error:
            errors.append(error)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(timeout=60)
    assert not loading.is_alive(), "Arithmetic.load still running after 60 s: the draws are not bounded"
    assert len(errors) == 1 and "could only make 0 distinct validation problems of 10" in str(errors[0])


def test_prompt_styles():
    task = small_task()
    problem = task.problems("test")[0]
    assert task.prompt(problem) == problem.question + "\n"
    assert task.target(problem) == problem.solution
    few_shot = small_task(prompt_style="few_shot", num_shots=2)
    prompt = few_shot.prompt(problem)
    assert prompt.count("Question:") == 3 and prompt.endswith(f"Question: {problem.question}\nAnswer:")
    assert few_shot.stop_strings == ("\n\nQuestion:",)
    with pytest.raises(ValueError, match="chat template"):
        small_task(prompt_style="chat").prompt(problem, build_char_tokenizer())


@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="needs ../shared/data/gsm8k")
def test_gsm8k_from_local_files():
    task = GSM8K(path=str(DATA / "gsm8k"), validation_size=500)
    train, validation, test = (task.problems(s) for s in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (6973, 500, 1319)
    assert not {p.id for p in train} & {p.id for p in validation}
    assert not {p.question for p in train} & {p.question for p in validation}
    assert test[0].answer == 18.0 and test[0].intermediate_results == (9.0, 18.0)


def test_gsm8k_errors_name_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"question": "q", "answer": "1+1=2\\n#### 2"}\n{"question": "q2", "answer": "no marker"}\n'
    )
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 3"}\nnot json\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2: not valid JSON"):
        GSM8K(path=str(tmp_path), validation_size=0).problems("test")
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 3"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2: the answer has no final"):
        GSM8K(path=str(tmp_path), validation_size=0).problems("train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GSM8K(path=str(tmp_path / "missing")).problems("train")
    (tmp_path / "test.jsonl").write_bytes(b'{"question": "q", "answer": "#### 3"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 18\)"):
        GSM8K(path=str(tmp_path), validation_size=0).problems("test")
    (tmp_path / "test.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"test\.jsonl holds no questions"):
        GSM8K(path=str(tmp_path), validation_size=0).problems("test")


@pytest.mark.skipif(not (DATA / "svamp").is_dir(), reason="needs ../shared/data/svamp")
def test_svamp_from_local_file():
    task = SVAMP(path=str(DATA / "svamp" / "SVAMP.json"))
    splits = [task.problems(s) for s in ("train", "validation", "test")]
    assert [len(s) for s in splits] == [599, 100, 300]  # one row's Answer contradicts its Equation
    assert len({p.id for s in splits for p in s}) == 999
    for problem in splits[0]:
        assert extract_answer(problem.solution) == problem.answer


def test_svamp_reference_solution_from_equation(tmp_path):
    rows = [
        {
            "Body": "Paco had 26 cookies. He ate 13.",
            "Question": "Then he doubled them. How many?",
            "Equation": "( ( 26.0 - 13.0 ) * 2.0 )",
            "Answer": 26.0,
        }
    ]
    others = [{**rows[0], "Question": f"Then he doubled them {i} times. How many?"} for i in range(4)]
    (tmp_path / "svamp.json").write_text(json.dumps(rows + others))
    problem = SVAMP(path=str(tmp_path / "svamp.json"), validation_size=1, test_size=1).problems("train")[0]
    assert problem.solution == "26-13=<<26-13=13>>13\n13*2=<<13*2=26>>26\n#### 26"
    assert problem.intermediate_results == (13.0, 26.0)
    assert problem.question == "Paco had 26 cookies. He ate 13. Then he doubled them. How many?"
    (tmp_path / "bad.json").write_text(
        json.dumps([{"Body": "b", "Question": "q", "Equation": "( 1 + x )", "Answer": 2}])
    )
    with pytest.raises(ValueError, match=r"bad\.json\[0\]: cannot read Equation"):
        SVAMP(path=str(tmp_path / "bad.json"), validation_size=0, test_size=0).problems("train")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (float("nan"), r"Answer is not a finite number: 'nan'"),
        ("inf", r"Answer holds no number that responses are graded against: 'inf'"),
        (True, r"Answer is not a finite number: 'True'"),
        pytest.param(10**400, r"Answer is not a finite number: '1000", id="huge-int"),  # was an OverflowError
    ],
)
def test_svamp_answers_must_be_finite_numbers_that_agree_with_the_equation(tmp_path, answer, message):
    row = {"Body": "b", "Question": "q", "Equation": "( 26.0 + 2.0 )", "Answer": answer}
    (tmp_path / "svamp.json").write_text(json.dumps([row]))
    with pytest.raises(ValueError, match=r"svamp\.json\[0\]: " + message):
        SVAMP(path=str(tmp_path / "svamp.json"), validation_size=0, test_size=0).problems("train")


def test_svamp_reads_a_written_out_answer_and_refuses_fields_of_the_wrong_type(tmp_path):
    row = {"Body": "b", "Question": "q", "Equation": "( 1200.0 + 34.0 )", "Answer": "1,234"}
    (tmp_path / "svamp.json").write_text(json.dumps([row]))  # was float("1,234") failing in the equation check
    assert SVAMP(path=str(tmp_path / "svamp.json"), validation_size=0, test_size=0).problems("train")[0].answer == 1234
    (tmp_path / "svamp.json").write_text(json.dumps([{**row, "Body": None}]))  # was the question "None q"
    with pytest.raises(ValueError, match=r"svamp\.json\[0\]: Body is not a string: None"):
        SVAMP(path=str(tmp_path / "svamp.json"), validation_size=0, test_size=0).problems("train")


def test_svamp_rows_whose_answer_contradicts_the_equation_are_left_out_with_a_warning(tmp_path):
    rows = [{"Body": "b", "Question": f"q{i}", "Equation": f"( {i}.0 + 2.0 )", "Answer": i + 2.0} for i in range(6)]
    rows[3]["Answer"] = 27.0
    (tmp_path / "svamp.json").write_text(json.dumps(rows))
    task = SVAMP(path=str(tmp_path / "svamp.json"), validation_size=1, test_size=1)
    with pytest.warns(
        UserWarning,
        match=r"svamp\.json\[3\] left out: Answer 27\.0 contradicts Equation '\( 3\.0 \+ 2\.0 \)', which gives 5",
    ):
        kept = [p.id for split in ("train", "validation", "test") for p in task.problems(split)]
    assert sorted(kept) == [0, 1, 2, 4, 5]


def test_svamp_file_errors_name_the_file(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match=r"empty\.json: expected a non-empty JSON list"):
        SVAMP(path=str(tmp_path / "empty.json")).problems("train")
    (tmp_path / "latin1.json").write_bytes(b'[\n{"Body": "caf\xe9"}]')
    with pytest.raises(ValueError, match=r"latin1\.json:2: not UTF-8 text"):
        SVAMP(path=str(tmp_path / "latin1.json")).problems("train")


def test_the_readme_task_subclass_works_as_written():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [block for block in readme.split("```python")[1:] if "class Doubling(Task):" in block]
    namespace: dict = {}
    exec(block.split("```")[0], namespace)  # the README's own example, our text
    task = namespace["Doubling"](prompt_style="plain")
    assert [len(task.problems(split)) for split in ("train", "validation", "test")] == [900, 50, 50]
    problem = task.problems("test")[0]
    assert problem.is_correct(problem.solution) and problem.intermediate_results == (problem.answer,)
    assert task.prompt(problem) == "What is twice 950?\n"


def write_gsm8k(folder: Path, train: list[tuple[str, str]]) -> str:
    """A GSM8K folder of ``train`` (question, answer) rows and a one-question test set."""
    (folder / "train.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in train))
    (folder / "test.jsonl").write_text('{"question": "t", "answer": "#### 1"}\n')
    return str(folder)


def test_held_out_sizes_too_large_name_the_option_and_the_file(tmp_path):
    # Was "cannot split 200 questions off a set of 3 distinct ones": neither the option nor the file.
    gsm8k = write_gsm8k(tmp_path, [(f"q{i}", f"#### {i}") for i in range(3)])
    with pytest.raises(ValueError, match=r"validation_size is 200, but .*train\.jsonl holds 3 distinct questions.*"
                       r"set validation_size between 0 and 2"):  # fmt: skip
        GSM8K(path=gsm8k, validation_size=200).problems("train")
    rows = [{"Body": "b", "Question": f"q{i}", "Equation": "( 1.0 + 1.0 )", "Answer": 2} for i in range(5)]
    (tmp_path / "svamp.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"test_size is 300, but .*svamp\.json holds 5 distinct questions"):
        SVAMP(path=str(tmp_path / "svamp.json")).problems("train")
    with pytest.raises(ValueError, match=r"validation_size is 4, but .*svamp\.json, once test_size's are held out"):
        SVAMP(path=str(tmp_path / "svamp.json"), validation_size=4, test_size=1).problems("train")


def test_empty_questions_are_errors_naming_the_file_and_line(tmp_path):
    # JSONLTask refused them; GSM8K and SVAMP trained on a prompt with no question.
    gsm8k = write_gsm8k(tmp_path, [("q", "#### 2"), (" ", "#### 2")])
    with pytest.raises(ValueError, match=r"train\.jsonl:2: the question is empty"):
        GSM8K(path=gsm8k, validation_size=0).problems("train")
    rows = [{"Body": "b", "Question": "q", "Equation": "( 1.0 + 1.0 )", "Answer": 2}]
    (tmp_path / "svamp.json").write_text(json.dumps(rows + [{**rows[0], "Body": "", "Question": "  "}]))
    with pytest.raises(ValueError, match=r"svamp\.json\[1\]: the question \(Body and Question\) is empty"):
        SVAMP(path=str(tmp_path / "svamp.json"), validation_size=0, test_size=0).problems("train")


@pytest.mark.parametrize("answer", ["4 2", "3 1/2", "1e35"])
def test_gsm8k_and_svamp_answers_are_read_as_responses_are_graded(tmp_path, answer):
    # GSM8K read "4 2" as 42 and "3 1/2" as 15.5; 1e35's reference "#### 1000...0" graded wrong.
    gsm8k = write_gsm8k(tmp_path, [("q", "#### 2"), ("r", f"#### {answer}")])
    with pytest.raises(ValueError, match=r"train\.jsonl:2: the text after '####' is not a number that responses"):
        GSM8K(path=gsm8k, validation_size=0).problems("train")
    row = {"Body": "b", "Question": "q", "Equation": "( 1.0 + 1.0 )", "Answer": answer}
    (tmp_path / "svamp.json").write_text(json.dumps([row]))
    with pytest.raises(ValueError, match=r"svamp\.json\[0\]: Answer holds no number that responses are graded"):
        SVAMP(path=str(tmp_path / "svamp.json"), validation_size=0, test_size=0).problems("train")
    (tmp_path / "svamp.json").write_text(json.dumps([{**row, "Answer": 1e35}]))
    with pytest.raises(ValueError, match=r"svamp\.json\[0\]: Answer holds no number .*: 1e\+35 is too large to grade"):
        SVAMP(path=str(tmp_path / "svamp.json"), validation_size=0, test_size=0).problems("train")
