import gc
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_reason.rewards import batch_steps, matched_result_credits
from lit_reason.tasks.answers import (
    MAX_TEXT_CHARS,
    answers_match,
    calculate,
    calculations,
    check_gradable_reference,
    evaluate_steps,
    extract_answer,
    extract_text_answer,
    intermediate_results,
    normalize_expression,
    normalize_text_answer,
    operation_signature,
    parse_number,
    parse_reference_answer,
    text_answers_match,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12+7=<<12+7=19>>19\n#### 19", 19.0),
        ("#### 1,234", 1234.0),
        ("#### -5", -5.0),
        ("#### $18.50", 18.5),
        ("The answer is 18.", 18.0),
        ("so the answer is: $1,200", 1200.0),
        ("The result is -3.5 degrees", -3.5),
        ("Therefore \\boxed{42}.", 42.0),
        ("She has 3 apples and buys 4 more, 3+4=7 apples in total.", 7.0),
        ("He earns 12 per hour.\nIn 5 hours he earns 12*5=<<12*5=60>>60 dollars out of 100", 60.0),
        ("First 2+2=4\nThen 4 times 3 is 12", 12.0),
        ("It costs .5 dollars", 0.5),
        ("#### 2e5", 200000.0),  # an exponent, not a 2 and a 5
        ("The answer is 1.5E-3", 0.0015),
        ("so x = 3e2", 300.0),
        ("She has 3eggs", 3.0),  # an "e" without digits after it is not an exponent
        ("answer is 7 ... #### 9", 9.0),  # the marker wins over earlier phrasing
        ("The result is 12 apples.\nSo she has $\\boxed{17}$", 17.0),  # the later statement wins
        ("\\boxed{12} is not it: the answer is 17", 17.0),
        ("#### **17**", 17.0),  # a chat model's bold
        ("#### \u22123", -3.0),  # the Unicode minus sign
        ("#### 3/4", 0.75),
        ("The answer is 1 / 2.", 0.5),
        ("#### 1,0000", None),  # not a number as people write it: no answer, rather than 1,000
        ("#### 1{,}000", 1000.0),  # LaTeX's thousands separator outside a box too (it read 1)
        ("The answer is $2\\,500$", 2500.0),  # and its thin space (it read 2)
        ("the answer is 10 + 5 = 15 apples", 15.0),  # a statement's calculation: its result (it read 10)
        ("The result is 3 \u00d7 4 = 12", 12.0),
        ("The answer is 15 = 10 + 5.", 15.0),  # the result first: it is the stated number
        ("The answer is 1/3 = 0.33.", 1 / 3),
        ("The answer is 12 - 3 of them were red.", 12.0),  # no result after it: the stated number
        ("the answer is 2 + 3 = 5 = 5", 5.0),
        ("The answer is 5 -" + " " * 50 + "x", 5.0),
        ("So the point is (3,\\,4)", 4.0),  # a thin space in a list, not between digit groups
        ("The values are $150,\\,200$", 200.0),
        ("The answer is $\\frac{3}{4}$", 0.75),  # inline mathematics, read as a box (it was no answer)
        ("The answer is $\\$1,200$.", 1200.0),
        ("The answer is 5 - that is all", 5.0),  # a dash, not a minus
        ("#### 2:30", None),  # a time, not 2
        ("#### 3/4/5", None),
        ("#### 5, 6 or 7", 5.0),
        ("#### 3/0", None),
        ("#### +5", 5.0),
        ("#### $-5", -5.0),
        ("The answer is -$5.", -5.0),
        ("The answer is +12", 12.0),
        ("#### 1 000", None),  # digits after a space: not 1
        ("The answer is 3 1/2 cups.", None),  # a mixed number: not 3
        ("#### 2e5 3", None),  # not the 2 before an exponent left out
        ("The answer is 4e2:30", None),
        ("The answer is 2:30 pm.", None),  # a stated number that is not whole is no answer, not the 30 after it
        ("So the answer is 1,0000.", None),
        ("The answer is 3/4/5 of it.", None),
        ("\\boxed{3/4/5}", None),
        ("The result is 2:30, so the answer is 17.", 17.0),
        ("The answer is \\boxed{5}.", 5.0),
        ("no numbers here", None),
        ("", None),
        ("####", None),
        ("#### banana", None),
        ("#### " + "9" * 400, None),  # not a finite number of sane size
        # A box holds one number, in LaTeX or not; an earlier statement or the denominator was read instead.
        ("The result is 5 apples. So the answer is \\boxed{\\frac{3}{4}}", 0.75),
        ("Half of 8 is 4, so \\boxed{\\dfrac{1}{2}}", 0.5),
        ("\\boxed{\\frac{3}{4}}", 0.75),
        ("\\boxed{-\\tfrac{ 1 }{ 2 }}", -0.5),
        ("The result is 7.\nFinal answer: \\boxed{\\text{12}}", 12.0),
        ("\\boxed{\\$18.50}", 18.5),
        ("\\boxed{18\\%}", 18.0),
        ("\\boxed{5 \\text{ apples}}", 5.0),
        ("\\boxed{1{,}000}", 1000.0),
        ("\\boxed{1\\,000}", 1000.0),
        ("The answer is 7. \\boxed{5 + 3}", None),  # more mathematics after the number
        ("The answer is 7. \\boxed{x = 7}", None),
        ("The answer is 7. \\boxed{7", None),  # never closed
        # The last "####" decides: a later one that is not a whole number was skipped for an earlier one.
        ("#### 5\n#### 2:30", None),
        ("#### 12\nWait, let me recheck.\n#### 1,0000", None),
        ("#### 5\nActually no.\n#### 3 1/2", None),
        ("Step: #### 12 apples\nSo the answer is 7\n#### The answer is 7", 7.0),
        ("#### \\boxed{7}", 7.0),
        ("#### Step 2\nThe answer is 7", 7.0),
        # The last number of the last line must be whole too: "4" was read from "3/4", "30" from "2:30".
        ("He ate 3/4", 0.75),
        ("The time is 2:30", None),
        ("x = 3 1/2", None),
        ("So 5 + 5 = 1,0000", None),  # not a calculation of 1,000
        ("So 5 + 5 = <<5+5=1,0000>>1,0000", None),
        ("So 5+5 = <<5+5=1 0>>", None),
        ("5 + 5 = 10e3", 10000.0),  # an exponent, not 10
        ("The total is 5, and that is it", 5.0),
        ("We have 3, 4", 4.0),
        ("It costs -$5", -5.0),
        # A label before the number is not part of it; a number refused after a digit is not read from its middle.
        ("Step 4: 42", 42.0),
        ("Week 2: -7", -7.0),
        ("Step 4: .5", 0.5),
        ("Step 4: 1e3", 1000.0),
        ("Option 2 -7", None),
        # LaTeX: a mixed number is no answer (not 21/2); fonts, styles, spacing and a group around it are read.
        ("\\boxed{2\\frac{1}{2}}", None),
        ("\\boxed{3\\,\\frac{1}{4}}", None),
        ("\\boxed{\\frac{1{,}000}{4}}", 250.0),
        ("\\boxed{\\$\\frac{1}{2}}", 0.5),
        ("\\boxed{\\mathbf{42}}", 42.0),
        ("\\boxed{\\boldsymbol{42}}", 42.0),
        ("\\boxed{\\displaystyle 42}", 42.0),
        ("\\boxed{\\bf 42}", 42.0),
        ("\\boxed{{42}}", 42.0),
        ("\\boxed{~42}", 42.0),
    ],
)
def test_extract_answer_hand_labelled(text, expected):
    assert extract_answer(text) == expected


def test_answers_match_tolerance():
    assert answers_match(18.0, 18)
    assert answers_match(0.30000001, 0.3)
    assert not answers_match(18.1, 18)
    assert not answers_match(None, 18)
    assert answers_match(-5.0, -5)
    assert answers_match(0.1 + 0.2, 0.3) and answers_match(2_880_000 * 1.1 / 1.1, 2_880_000)  # float rounding
    # A near miss is wrong however large the answer (a relative tolerance of 1e-4 passed these).
    assert not answers_match(10_001, 10_000) and not answers_match(2_880_100, 2_880_000)


def test_whole_numbers_match_exactly_however_large():
    # A relative tolerance of 1e-12 passed these: one off in a trillion is a wrong answer, not float rounding.
    assert not answers_match(1_000_000_000_001, 1_000_000_000_000)
    assert not answers_match(extract_answer("#### 2,000,000,000,002"), 2_000_000_000_000)
    assert answers_match(extract_answer("#### 2,000,000,000,000"), 2e12)
    # Float rounding still matches, for decimals and for large results alike.
    assert answers_match(0.1 * 3, 0.3) and answers_match(0.1 * 3 * 1e12, 3e11)
    assert answers_match(1e20 + 2**14, 1e20)  # past 2**53: one unit in the last place
    assert not answers_match(3.5, 3) and not answers_match(1e12 + 0.5, 1e12)


def test_parse_number_forms():
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("-7") == -7.0
    assert parse_number("1e400") is None  # no digits-only overflow to inf
    assert parse_number("abc") is None


def test_reference_answers_are_read_by_the_rules_that_grade_responses():
    # parse_number drops spaces and takes Python's float syntax: "3 1/2" was 15.5, "4 2" 42, "1_000" 1000.
    readable = ("$1,234", " -3 ", "3/4", "2e5", "42.", "4.2.")  # "#### 4.2." in a response reads as 4.2 too
    assert [parse_reference_answer(text) for text in readable] == [1234, -3, 0.75, 2e5, 42, 4.2]
    assert [extract_answer(f"#### {text}") for text in readable[-2:]] == [42, 4.2]
    for text in ("3 1/2", "4 2", "1_000", "42 apples", "1,0000", "1e35", "9" * 31, "42.."):
        with pytest.raises(ValueError, match="is not one number of at most 30 digits|too large to grade"):
            parse_reference_answer(text)


def test_references_that_grading_cannot_tell_from_a_wrong_answer_are_refused():
    # 12345678901234567890 was stored as ...7168, and answers a thousand off graded correct against it; an
    # answer of 4e-7 was written "#### 0", and a response of 0 graded correct.
    for number in (12345678901234567890, 1e35, float(10**32), -2.5e29, 2.0**53):
        with pytest.raises(ValueError, match="too large to grade: past 2\\*\\*53"):
            check_gradable_reference(number)
    for number in (4e-7, -1e-9):
        with pytest.raises(ValueError, match="within 1e-6 of 0"):
            check_gradable_reference(number)
    with pytest.raises(ValueError, match="not a finite number"):
        check_gradable_reference(math.nan)
    for number in (0.0, 0.1234567, 2.0**53 - 1, -(2.0**53 - 1), 1e-5):
        check_gradable_reference(number)


def test_calculator_arithmetic_and_refusals():
    assert calculate("2*(3+4)/7-1") == 1.0
    assert calculate("12 x 3") == 36.0
    assert calculate("-(4-6)") == 2.0
    for hostile in [
        "__import__('os').system('true')",
        "10**10",
        "2**3",
        "1/0",
        "a+b",
        "(" * 30 + "1" + ")" * 30,
        "9" * 300,
    ]:
        assert calculate(hostile) is None


def test_calculations_read_latex_thousands_separators():
    assert calculations("1{,}200 + 300 = 1{,}500") == [("1200+300", 1500.0)]  # was ("200+300", 1.0)


def test_calculations_and_signatures():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert calculations(solution) == [("48/2", 24.0), ("48+24", 72.0)]
    assert intermediate_results(solution) == [24.0, 72.0]
    assert calculations("So 12 + 7 = 19 apples, then 3 x 4 = $12.") == [("12+7", 19.0), ("3*4", 12.0)]
    same_ops = "48 / 2 = 24 clips\n48 + 24 = 72\n#### 72"
    assert operation_signature(same_ops) == operation_signature(solution)
    assert operation_signature("48+24=72\n48/2=24") != operation_signature(solution)  # order matters
    assert operation_signature("#### 72") == operation_signature("the answer is 72")  # no calculations


def test_evaluate_steps_writes_innermost_first():
    assert evaluate_steps("( ( 29.0 - 13.0 ) * 2.0 )") == [("29-13", 16.0), ("16*2", 32.0)]
    assert evaluate_steps("8.0") == []
    assert evaluate_steps("( 1.0 / 0.0 )") is None


HOSTILE = [
    "9" * 100_000,
    "1+" * 50_000,
    "(" * 100_000,
    "=1" * 50_000,
    "1+1=" * 25_000,
    "<<" + "(" * 1000 + "1" + ")" * 1000 + "=1>>",
    "<<10**10**10**10=1>>" * 1000,
    "__import__('os').system('echo pwned') #### __import__",
    "The answer is " + "9" * 5000,
    "\\boxed{" * 10_000,
    "#### " * 20_000,
    "1,000," * 15_000,
    "x" * 100_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_is_bounded_and_never_raises(text):
    start = time.perf_counter()
    extract_answer(text)
    extract_text_answer(text)
    normalize_text_answer(text, "squad")
    calculations(text)
    operation_signature(text)
    calculate(text)
    evaluate_steps(text)
    assert time.perf_counter() - start < 2.0


def _padded(head: str, filler: str, tail: str = "x") -> Callable[[int], str]:
    """A builder of texts of n characters: ``head``, then ``filler`` repeated, then ``tail``."""

    def build(n: int) -> str:
        return (head + filler * (n // len(filler) + 1))[: n - len(tail)] + tail

    return build


# Model text that makes backtracking patterns slow: long whitespace runs after every keyword the patterns anchor
# on (a failing match tries every way to split such a run), and long runs of what they repeat over.
ADVERSARIAL = {
    "answer is, spaces": _padded("The answer is", " "),
    "answer is:, newlines and spaces": _padded("answer is:", " \n"),
    "result =, tabs and spaces": _padded("result =", "\t "),
    "result:, spaces": _padded("The result:", " "),
    "answer will be, spaces, }": _padded("answer will be", " ", "}"),
    "answer is boxed, spaces": _padded("answer is: \\boxed{", " "),
    "####, spaces": _padded("####", " "),
    "boxed, newlines and spaces": _padded("\\boxed{", " \n"),
    "boxed number, spaces": _padded("\\boxed{1", " "),
    "boxed thousands, spaces": lambda n: _padded("\\boxed{", "111,", "")(n // 2) + _padded("", " ")(n - n // 2),
    "=, spaces": _padded("1+1=", " "),
    "= $, spaces": _padded("1+1= $", " "),
    "$, spaces": _padded("$", " "),
    "answer is $, escaped dollars": _padded("The answer is $", "\\$"),
    "answer is, a statement's calculation": _padded("the answer is 1", " + 1 = 1"),
    "answer is 5 -, spaces": _padded("The answer is 5 -", " "),
    "answer is 5 - $, spaces": _padded("The answer is 5 - $", " "),
    "thin spaces between digits": _padded("", "1\\,"),
    "-, newlines": _padded("-", "\n"),
    "= run, spaces": lambda n: "=" * (n // 2) + _padded("", " ")(n - n // 2),
    "= run": _padded("", "="),
    "= space run": _padded("", "= "),
    "<< run": _padded("", "<<"),
    ">> run": _padded("", ">>"),
    "<< digits": _padded("<<", "1"),
    "( run": _padded("", "((((1+"),
    "{ run": _padded("", "{{{{"),
    "1,1,1": _padded("", "1,"),
    "1.1.1": _padded("", "1."),
    "-$-$-$": _padded("", "-$"),
    "#### run": _padded("", "#### "),
    "boxed run": _padded("", "\\boxed{ "),
    "1+1= run": _padded("", "1+1="),
    "annotation run": _padded("", "<<1+1=2>>"),
    "equation lines": _padded("", "\n1+1=2 "),
    "answer is run": _padded("", "answer is "),
    "digits": _padded("", "9"),
    "#### digits then a time": _padded("#### ", "9", ":5"),
    "#### digits, decimals, fractions": lambda n: (
        _padded("#### ", "1", "")(n // 2) + _padded(".", "2", "/3/4")(n - n // 2)
    ),
    "#### thousands then a digit": _padded("#### 1", ",000", "0"),
    "#### **, spaces": _padded("#### **", " "),
}
# Text lengths up to the cap, each 8 times the last: linear time grows 8-fold a step, quadratic 64, cubic 512.
LENGTHS = [MAX_TEXT_CHARS // 8**k for k in (3, 2, 1, 0)]
# Growth allowed per step: ~2.5x above linear for a loaded machine's noise, ~3x below quadratic.
MAX_GROWTH = 20
# Calls faster than this are too quick to time reliably and too quick to matter, at any length.
MEASURABLE_S = 0.005


def _seconds(call: Callable[[str], object], text: str, repeats: int = 3) -> float:
    """CPU seconds of the fastest of a few runs. CPU time of this thread, not wall time, so that other processes
    on a loaded machine do not count; the garbage collector is off (as in ``timeit``) because a full collection
    scans every object of the process (torch's included), at moments unrelated to the call's own cost."""
    best = math.inf
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.thread_time()
            call(text)
            best = min(best, time.thread_time() - start)
    finally:
        gc.enable()
    return best


def _assert_linear_time(call: Callable[[str], object], build: Callable[[int], str]) -> None:
    """Once ``call`` takes measurable time, it grew at most about linearly with the text since the last length.

    A growth check rather than a time limit keeps it independent of the machine's speed; short lengths come
    first so that super-linear code fails within seconds instead of running for hours at the cap.
    """
    previous = None
    for n in LENGTHS:
        text = build(n)
        assert len(text) == n
        elapsed = _seconds(call, text)
        if previous is not None and elapsed > MEASURABLE_S:
            growth = elapsed / previous
            assert growth < MAX_GROWTH, f"{call.__name__}: {previous:.4f} s at {n // 8} chars, {elapsed:.4f} s at {n}"
        previous = elapsed


def _line_credits(text: str) -> list[float]:
    """The heuristic dense reward's reading of a response: credits for the calculations of each line."""
    return matched_result_credits(text.splitlines(keepends=True), [2.0, 3.0])


def _reference_answer(text: str) -> float | str:
    """A data file's answer read, or why it is none."""
    try:
        return parse_reference_answer(text)
    except ValueError as error:
        return str(error)


@pytest.mark.parametrize("build", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_parsing_model_text_takes_linear_time(build):
    for call in (
        extract_answer,
        extract_text_answer,
        lambda text: normalize_text_answer(text, "squad"),
        calculations,
        _reference_answer,
        intermediate_results,
        operation_signature,
        normalize_expression,
        calculate,
        evaluate_steps,
        _line_credits,
    ):
        _assert_linear_time(call, build)


def test_splitting_responses_into_steps_takes_linear_time(char_tokenizer):
    def steps(text: str) -> list[list[tuple[int, str]]]:
        ids = torch.tensor([char_tokenizer(text, add_special_tokens=False).input_ids])
        return batch_steps(char_tokenizer, ids, torch.ones_like(ids, dtype=torch.bool), prompt_length=0)

    _assert_linear_time(steps, ADVERSARIAL["equation lines"])


@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="needs ../shared/data/gsm8k")
@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_references_and_fallback(split):
    rows = [json.loads(line) for line in (DATA / "gsm8k" / f"{split}.jsonl").open()]
    targets = [parse_number(row["answer"].rsplit("####", 1)[1]) for row in rows]
    assert all(answers_match(extract_answer(row["answer"]), t) for row, t in zip(rows, targets, strict=True))
    without_marker = sum(
        answers_match(extract_answer(row["answer"].rsplit("####", 1)[0]), t)
        for row, t in zip(rows, targets, strict=True)
    )
    assert without_marker / len(rows) >= 0.95


@pytest.mark.skipif(not (DATA / "svamp").is_dir(), reason="needs ../shared/data/svamp")
def test_svamp_answers_read():
    rows = json.loads((DATA / "svamp" / "SVAMP.json").read_text())
    assert len(rows) == 1000
    assert all(answers_match(extract_answer(f"#### {row['Answer']}"), row["Answer"]) for row in rows)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so\n#### The Beatles\n", "The Beatles"),
        ("#### one #### two\nmore", "two"),
        ("\\boxed{Paris} then \\boxed{ Rome }", "Rome"),
        ("so \\boxed{\\text{Yes}}.", "Yes"),
        ("#### \\boxed{Paris}.", "Paris"),
        ("#### $\\boxed{B}$", "B"),  # was "$\\boxed{B}$", which no answer matched
        ("#### **B**", "B"),  # a chat model's bold
        ("#### Paris.", "Paris"),  # a sentence's full stop
        ("#### Washington, D.C.", "Washington, D.C."),  # not an abbreviation's
        ("#### **B**.", "B"),
        ("\\boxed{\\textbf{\\text{A}}}", "A"),
        ("\\boxed{a {b} c}", "a {b} c"),
        ("#### \nno answer after the mark", None),
        ("\\boxed{never closed", None),
        ("#### " + "x" * 201, None),
        ("nothing here", None),
    ],
)
def test_extract_text_answer_hand_labelled(text, expected):
    assert extract_text_answer(text) == expected


def test_text_normalizations():
    assert normalize_text_answer("  The  Beatles ", "exact") == "The  Beatles"
    assert normalize_text_answer("  The  Beatles ", "casefold") == "the beatles"
    assert normalize_text_answer("The Beatles!", "squad") == "beatles"
    assert normalize_text_answer("Washington, D.C.", "squad") == "washington dc"
    assert normalize_text_answer("an apple a day", "squad") == "apple day"
    assert normalize_text_answer("Straße", "casefold") == "strasse"
    # A choice letter that is also an article stays itself; an answer that normalizes to nothing matches nothing.
    assert normalize_text_answer("(A)", "squad") == "a" and normalize_text_answer("The", "squad") == "the"
    assert text_answers_match("a", "A", "squad") and not text_answers_match("the", "A", "squad")
    assert not text_answers_match("!", "?", "squad")
    # SQuAD drops ASCII symbols too, not only Unicode punctuation.
    assert text_answers_match("$5", "5", "squad") and normalize_text_answer("a+b=c", "squad") == "abc"
