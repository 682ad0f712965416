"""Reading answers and calculations out of solution text.

Model text is hostile input. Nothing here calls ``eval``; the calculator walks a parsed ``ast`` that may only
hold numbers, ``+ - * /`` and parentheses, and every entry point bounds the size of what it looks at, so a
100k-character string, a number with thousands of digits or parentheses nested a thousand deep never raise.

Every entry point runs in time linear in its input (first cut to its last ``MAX_TEXT_CHARS`` characters). For
the regular expressions that takes two rules. A whitespace run is only ever matched whole by one ``\\s*``, never
shared by quantifiers in a row as in ``\\s*\\$?\\s*``: a failing match tries every split of the run between them,
quadratic in its length (cubic for three). And a pattern that can scan far starts at a literal right before
what it scans ("####", "=", "answer is", "<<"), so ``findall`` never rescans one run from many starting points.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import string
import unicodedata
from typing import Literal

# Model text longer than this is cut from the front: answers come at the end.
MAX_TEXT_CHARS = 20_000
# Numbers with more digits than this are not answers (and would overflow a float).
MAX_NUMBER_DIGITS = 30
MAX_EXPRESSION_CHARS = 200
MAX_EXPRESSION_DEPTH = 20
MAX_MAGNITUDE = 1e15

# A number as people write it: optional sign and dollar sign, thousands separators, decimals, and an exponent
# ("2e5" is 200000, not a 2 and a 5).
_DIGITS = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_MINUS = "[-\u2212]"  # the hyphen-minus or the Unicode minus sign
NUMBER_RE = re.compile(_MINUS + r"?\$?\s?(?:" + _DIGITS + ")")
# A stated answer: the same number where a "\s*" precedes it (the space it may hold must follow a sign or dollar
# sign, so that "\s*" and the number cannot split one whitespace run between them; "+5", "$-5" and "-$5" all
# count), a fraction "a/b" included, and whole: not followed by more digits, a fraction, a time, digits after
# a space or an exponent it left out ("3/4" is 0.75; "1,0000", "3/4/5", "2:30", "1 000", "3 1/2" and
# "2e5 3" are no answer rather than 1, 3, 2, 1, 3 and 2).
# Each check looks a few characters ahead, so backing off a long digit run stays linear.
_SIGN_AND_DOLLAR = r"(?:(?:[-+\u2212]\$?|\$[-\u2212]?)\s?)?"
_SPACED_NUMBER = _SIGN_AND_DOLLAR + "(?:" + _DIGITS + r")(?: ?/ ?\d+)?(?!\d|,\d|\.\d| ?[/:] ?\d| \d|[eE][-+]?\d)"
_WHOLE_NUMBER_RE = re.compile(_SPACED_NUMBER + r"\.?")  # a sentence's full stop after it, as "#### 42." reads
# GSM8K's marker; "#### **17**" (a chat model's bold) counts.
_FINAL_MARK_RE = re.compile(r"####\s*(?:\*\*)?(" + _SPACED_NUMBER + ")")
# "answer is: \boxed{N}": the colon and the box each bring their own leading "\s*" rather than
# "\s*:?\s*(?:\\boxed\{)?\s*", so no whitespace run is split between quantifiers (that was cubic).
_ANSWER_IS = r"(?:answer|result)\s*(?:is|=|:|was|will be)(?:\s*:)?(?:\s*\\boxed\{)?\s*"
_ANSWER_IS_RE = re.compile(_ANSWER_IS + "(" + _SPACED_NUMBER + ")", re.IGNORECASE)
# Where an answer is stated, whole or not ("answer is 2:30"): one that is not whole states no answer.
_STATEMENT_RE = re.compile(_ANSWER_IS + r"(?=[-+\u2212$]|\.?\d)", re.IGNORECASE)
# The last number of a line is whole where no digit, "3/", "2:", "1," or "3 " stands right before it (the
# denominator of "3/4" or "3 / 4", the minutes of "2:30", the tail of "1,0000" or "3 1/2"; "Step 4: 42" is 42), nor
# a sign, dollar sign, point or a number's exponent (so that a number refused there is not read from its middle:
# not 7 of "2 -7", 5 of "3 .5", 3 of "1 1e3"), each look-behind of fixed width.
_NOT_AFTER_A_NUMBER = r"(?<!\d)(?<!\d[/:,. ])(?<!\d /)(?<!\d/ )(?<!\d / )(?<![-+\u2212$.])(?<!\d[eE])(?<!\d[eE][-+])"
_LAST_NUMBER_RE = re.compile(_NOT_AFTER_A_NUMBER + _SPACED_NUMBER)
# \text{Yes} inside a box (and the other commands that only set a font).
_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|boldsymbol|bm|mbox)\{([^{}]*)\}")
_TEXT_COMMAND_DEPTH = 4  # nested commands unwrapped, a bounded number of passes
_BOX = "\\boxed{"
# LaTeX a boxed number may be written in: \frac{3}{4} (and \dfrac, \tfrac) is 3/4 (a space before it, so that a
# mixed number "2\frac{1}{2}" is "2 1/2", no answer, not 21/2), "\$" a dollar sign, "{,}" a thousands comma, thin
# spaces ("1\,000") nothing, a style (\displaystyle, \bf) or a spacing command a space.
_FRACTION_COMMAND_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_LATEX_SYMBOLS = (
    ("\\$", "$"), ("\\%", "%"), ("{,}", ","), ("\\,", ""), ("\\!", ""), ("\\;", ""),
    ("\\displaystyle", " "), ("\\bf ", " "), ("\\quad", " "), ("\\ ", " "), ("~", " "),
)  # fmt: skip
# What may follow a boxed number: units and words ("5 \text{ apples}", "18\%"), not more mathematics.
_MORE_MATHEMATICS_RE = re.compile(r"[\d=+*/^\\{}]")
# A calculation that goes on after a stated number: "the answer is 10 + 5 = 15" (its answer is 15, not 10). The
# optional "(" or "$" carries its own spaces, so a run of spaces has one way to match.
_CALCULATION_GOES_ON_RE = re.compile(r"[ \t]*[-+*/×÷^\u2212][ \t]*(?:[($][ \t]*)?\d")
# LaTeX's thousands separator ("1{,}000") and thin spaces ("1\\,000") between a number's digit groups, read
# anywhere ("(3,\\,4)" is a list: its thin space stays).
_LATEX_THOUSANDS_RE = re.compile(r"(?<=\d)(?:\{,\}|\\[,!;])(?=\d{3}(?!\d))")
_ANNOTATION_RE = re.compile(rf"<<([^<>=]{{1,{MAX_EXPRESSION_CHARS}}})=([^<>]{{1,60}})>>")
# The result after an "=" of an equation written without annotations ("12 + 7 = 19", "3 x 4 = $12"). The "\s*"
# after a dollar sign sits in the dollar's optional group, so a whitespace run has one way to match
# ("=\s*\$?\s*" tried every split of it: quadratic). The result must be whole, as a stated answer: "= 3/4",
# "= 2:30" or "= 1,0000" is no calculation of 3, 2 or 1.
_EQUATION_RESULT_RE = re.compile(r"=\s*(?:\$\s*)?(-?" + _DIGITS + r")(?!\d|,\d|\.\d| ?[/:] ?\d| \d)")
_EXPRESSION_CHARS = frozenset("0123456789 ,.$+-*/x×()")
MAX_CALCULATIONS = 100


def parse_number(text: str) -> float | None:
    """Parse one number as written in text ("$1,234.5", "-3", "−3", ".5", "3/4"); ``None`` if it is not a
    finite number."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").replace("\u2212", "-")
    digits = sum(c.isdigit() for c in cleaned)
    if digits == 0 or digits > MAX_NUMBER_DIGITS:
        return None
    numerator, _, denominator = cleaned.partition("/")
    try:
        value = float(numerator) / float(denominator) if denominator else float(numerator)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def parse_reference_answer(text: str) -> float:
    """The number a data file gives as a problem's answer, read by the rules that grade a response's final
    ``#### N``: one whole number ("1,234", "$5", "-3", "3/4", "2e5", "42."; not "3 1/2", "4 2", "1_000" or "42
    apples") that ``check_gradable_reference`` accepts. Raises ``ValueError`` saying why ``text`` is none (the
    caller adds the file, line and field)."""
    text = text.strip()
    number = parse_number(text.removesuffix(".")) if _WHOLE_NUMBER_RE.fullmatch(text) else None
    if number is None:
        raise ValueError(
            f'{text!r:.80} is not one number of at most {MAX_NUMBER_DIGITS} digits (42, -3.5, 3/4, "$1,234")'
        )
    check_gradable_reference(number)
    return number


def check_gradable_reference(number: float) -> None:
    """Refuse (``ValueError``, saying why) an answer that grading cannot tell from a wrong one: not finite; past
    2**53, where a float does not hold every whole number (12345678901234567890 is stored as ...7168, and answers
    a thousand off grade correct); or not 0 but within the 1e-6 that answers are compared with of it (a response
    of 0 grades correct)."""
    if not math.isfinite(number):
        raise ValueError(f"{number} is not a finite number")
    if abs(number) >= 2**53:
        raise ValueError(
            f"{number!r} is too large to grade: past 2**53 (about 9.0e15) a float does not hold every whole "
            "number, so answers near it would grade correct"
        )
    if number != 0 and answers_match(0.0, number):
        raise ValueError(
            f"{number!r} is within 1e-6 of 0, the tolerance answers are compared with: a response of 0 would "
            "grade correct"
        )


def extract_answer(text: str) -> float | None:
    """The final numeric answer of a solution, or ``None`` if it states none.

    In order of trust: the number after the last ``####`` (GSM8K's marker; "#### the answer is N" and
    "#### \\boxed{N}" are read as below, and a last ``####`` of anything else is no answer); the last stated one,
    "answer is N" (also "answer: N", "result is N") or ``\\boxed{...}``, whichever comes later (an intermediate
    "the result is 12" does not outrank a final box; a box holds one number, in LaTeX or not: ``\\frac{3}{4}``,
    ``\\$5``, ``18\\%``, ``5 \\text{ apples}``; a statement that a calculation follows, "the answer is 10 + 5 =
    15", states its result); failing those, the result of the last calculation on the last line
    with a number, or else that line's last number. A stated number must be whole: "3/4" is 0.75, but a last
    statement or number "2:30", "1,0000" or "3 1/2" is no answer (not 2, 1 or 3). LaTeX's thousands separators
    are read anywhere: "1{,}000" is 1000.
    """
    text = _without_latex_separators(text[-MAX_TEXT_CHARS:])
    mark = text.rfind("####")
    if mark >= 0:
        marked = _FINAL_MARK_RE.match(text, mark)
        if marked:
            return parse_number(marked.group(1))
        stated = _stated_answer(text[mark + 4 :])
        return None if stated is _NOT_STATED else stated
    stated = _stated_answer(text)
    if stated is not _NOT_STATED:
        return stated
    lines = [line for line in text.splitlines() if NUMBER_RE.search(line)]
    if not lines:
        return None
    # Worked solutions end on the line that computes the answer; its words may hold other numbers
    # ("... = <<9+6=15>>15 liters out of the 24 liters"), so that line's last calculation wins.
    steps = calculations(lines[-1])
    if steps:
        return steps[-1][1]
    return _last_number(lines[-1])


_NOT_STATED = object()  # ``_stated_answer``'s answer for a text that states none


def _stated_answer(text: str) -> float | None | object:
    """The number of the last "answer is N" or ``\\boxed{...}`` in ``text``, ``None`` where that statement holds no
    whole number, ``_NOT_STATED`` where there is none."""
    statement = max((match.start() for match in _STATEMENT_RE.finditer(text)), default=-1)
    box = text.rfind(_BOX)
    if box > statement:
        return _boxed_number(_braced(text, box + len(_BOX)))
    if statement < 0:
        return _NOT_STATED
    stated = _ANSWER_IS_RE.match(text, statement)
    if not stated:  # inline mathematics, read as a box: "the answer is $\\frac{3}{4}$"
        start = _STATEMENT_RE.match(text, statement).end()
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        end = text.find("$", start + 1, line_end)
        while end > 0 and text[end - 1] == "\\":  # an escaped dollar sign inside: "$\\$1,200$"
            end = text.find("$", end + 1, line_end)
        return _boxed_number(text[start + 1 : end]) if text.startswith("$", start) and end > start + 1 else None
    if _CALCULATION_GOES_ON_RE.match(text, stated.end()):  # its first result on that line, where it states one
        line_end = text.find("\n", stated.end())
        result = _EQUATION_RESULT_RE.search(text, stated.end(), len(text) if line_end < 0 else line_end)
        if result:
            return parse_number(result.group(1))
    return parse_number(stated.group(1))


def _without_latex_separators(text: str) -> str:
    """``text`` with LaTeX's separators between digit groups read: "1{,}000" and "1\\,000" are 1000."""
    return _LATEX_THOUSANDS_RE.sub(lambda match: "," if match.group() == "{,}" else "", text)


def _boxed_number(content: str) -> float | None:
    """The number a ``\\boxed{}`` holds, LaTeX read (``\\frac{3}{4}``, ``\\$5``, ``\\text{12}``, ``1{,}000``) and
    units or words after it allowed, or ``None`` (no number first, or more mathematics after it: "5 + 3")."""
    for _ in range(_TEXT_COMMAND_DEPTH):
        content = _TEXT_COMMAND_RE.sub(r"\1", content)
    for latex, plain in _LATEX_SYMBOLS:
        content = content.replace(latex, plain)
    content = _FRACTION_COMMAND_RE.sub(lambda match: f" {match.group(1).strip()}/{match.group(2).strip()}", content)
    content = content.strip()
    if content.startswith("{") and content.endswith("}"):  # a group around it all: {42}
        content = content[1:-1].strip()
    number = _WHOLE_NUMBER_RE.match(content)
    if not number or _MORE_MATHEMATICS_RE.search(content, number.end()):
        return None
    return parse_number(number.group().removesuffix("."))


def _last_number(line: str) -> float | None:
    """The last number of a line, ``None`` where it is not whole (the "4" of "3/4" is part of 0.75; the "30" of
    "2:30" no answer)."""
    last = list(NUMBER_RE.finditer(line))[-1]
    # Look-behinds and look-aheads see a few characters: a window around the number keeps this linear.
    window_start, window_end = max(0, last.start() - 64), min(len(line), last.end() + 8)
    for match in _LAST_NUMBER_RE.finditer(line, window_start, window_end):
        if match.start() < last.end() <= match.end():
            return parse_number(match.group())
    return None


# About 4.5 units in the last place of a float64: the rounding of a short calculation, far below any digit
# a person writes (a relative 1e-12 made 1000000000001 equal 1000000000000).
_FLOAT_ROUNDING = 1e-15


def answers_match(predicted: float | None, target: float) -> bool:
    """Whether two answers are the same number up to float rounding, never a near miss (10001 is not 10000, nor
    1000000000001 1000000000000): two whole numbers below 2**53 (where a float holds every integer) are equal,
    others within 1e-6 (0.1 * 3 is 0.3) or a few units in the last place of their size. A missing prediction
    is wrong."""
    if predicted is None:
        return False
    if _is_exact_integer(predicted) and _is_exact_integer(target):
        return predicted == target
    return math.isclose(predicted, target, rel_tol=_FLOAT_ROUNDING, abs_tol=1e-6)


def _is_exact_integer(value: float) -> bool:
    return float(value).is_integer() and abs(value) < 2**53


class _Calculator(ast.NodeVisitor):
    """Evaluates an ``ast`` of numbers, + - * / and unary minus; anything else raises ValueError."""

    def visit_Expression(self, node: ast.Expression) -> float:
        return self.visit(node.body)

    def visit_Constant(self, node: ast.Constant) -> float:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError("not a number")
        return self._bounded(float(node.value))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> float:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise ValueError("operator not allowed")

    def visit_BinOp(self, node: ast.BinOp) -> float:
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Add):
            return self._bounded(left + right)
        if isinstance(node.op, ast.Sub):
            return self._bounded(left - right)
        if isinstance(node.op, ast.Mult):
            return self._bounded(left * right)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise ValueError("division by zero")
            return self._bounded(left / right)
        raise ValueError("operator not allowed")

    def generic_visit(self, node: ast.AST) -> float:
        raise ValueError(f"{type(node).__name__} not allowed")

    @staticmethod
    def _bounded(value: float) -> float:
        if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
            raise ValueError("number out of range")
        return value


def normalize_expression(expression: str) -> str | None:
    """Canonical text of an arithmetic expression ("12 x 3" -> "12*3", "$1,200/4" -> "1200/4"), or ``None``.

    Only digits, one decimal point per number, ``+ - * / ( )`` and the multiplication signs ``x`` and ``×``
    survive; anything else (letters, ``**``, ``__import__``) makes the expression invalid.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    cleaned = expression.replace(",", "").replace("$", "").replace(" ", "").replace("×", "*").replace("x", "*")
    if not cleaned or not re.fullmatch(r"[\d.+\-*/()]+", cleaned) or "**" in cleaned or "//" in cleaned:
        return None
    depth = max_depth = 0
    for char in cleaned:
        depth += (char == "(") - (char == ")")
        max_depth = max(max_depth, depth)
        if depth < 0:
            return None
    if depth != 0 or max_depth > MAX_EXPRESSION_DEPTH:
        return None
    return cleaned


def calculate(expression: str) -> float | None:
    """Value of an arithmetic expression of numbers, ``+ - * /`` and parentheses; ``None`` if invalid.

    Bounded: at most ``MAX_EXPRESSION_CHARS`` characters, ``MAX_EXPRESSION_DEPTH`` nested parentheses and
    magnitudes up to ``MAX_MAGNITUDE``; never raises, never calls ``eval``.
    """
    cleaned = normalize_expression(expression)
    if cleaned is None:
        return None
    try:
        return _Calculator().visit(ast.parse(cleaned, mode="eval"))
    except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError, OverflowError):
        return None


def calculations(text: str) -> list[tuple[str, float]]:
    """The calculations a solution performs, in order, as (normalised expression, stated result).

    Calculator annotations ``<<48/2=24>>`` are used when present; otherwise equations written in the text
    ("12 + 7 = 19"). Each needs an operator: "= 24" alone is not a calculation.
    """
    text = _without_latex_separators(text[-MAX_TEXT_CHARS:])
    found = _ANNOTATION_RE.findall(text) or _written_equations(text)
    steps = []
    for expression, result in found[-MAX_CALCULATIONS:]:
        normalized = normalize_expression(expression)
        value = parse_number(result) if _WHOLE_NUMBER_RE.fullmatch(result.strip()) else None  # "1,0000": none
        if normalized is not None and value is not None and re.search(r"\d\)?[+\-*/]", normalized):
            steps.append((normalized, value))
    return steps


def _written_equations(text: str) -> list[tuple[str, str]]:
    """(expression, result) of equations in plain text, scanning left from each "=" (linear time)."""
    found = []
    for match in _EQUATION_RESULT_RE.finditer(text):
        start = end = match.start()
        while start > 0 and end - start < MAX_EXPRESSION_CHARS and text[start - 1] in _EXPRESSION_CHARS:
            start -= 1
        expression = text[start:end].strip()
        if expression:
            found.append((expression, match.group(1)))
    return found


def intermediate_results(text: str) -> list[float]:
    """The stated results of a solution's calculations, in order (for dense rewards)."""
    return [value for _, value in calculations(text)]


def operation_signature(text: str) -> int:
    """A 63-bit hash of the sequence of calculations a solution performs.

    Two solutions with the same signature perform the same arithmetic in the same order (the paper's
    measure of distinct solutions). Solutions with no calculation share the signature of the empty
    sequence. The hash lets signatures travel between ranks as integers.
    """
    key = "|".join(expression for expression, _ in calculations(text))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def evaluate_steps(expression: str) -> list[tuple[str, float]] | None:
    """The binary operations of an expression, innermost first, as (normalised text, value).

    "( ( 29.0 - 13.0 ) * 2.0 )" -> [("29-13", 16.0), ("16*2", 32.0)]: what a worked solution of SVAMP's
    ``Equation`` writes one line at a time. ``None`` if the expression is invalid.
    """
    cleaned = normalize_expression(expression)
    if cleaned is None:
        return None
    try:
        tree = ast.parse(cleaned, mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        return None
    steps: list[tuple[str, float]] = []
    calculator = _Calculator()

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            value = calculator.visit(ast.BinOp(ast.Constant(left), node.op, ast.Constant(right)))
            symbol = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(node.op)]
            steps.append((f"{format_number(left)}{symbol}{format_number(right)}", value))
            return value
        return calculator.visit(node)

    try:
        walk(tree)
    except (ValueError, KeyError, RecursionError):
        return None
    return steps


def format_number(value: float) -> str:
    """Shortest plain text for a number: 16.0 -> "16", 0.25 -> "0.25", -3.5 -> "-3.5"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


# Text answers (tasks whose answers are words: a name, a yes/no, a multiple-choice letter).
TextNormalization = Literal["exact", "casefold", "squad"]
MAX_TEXT_ANSWER_CHARS = 200
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")
_SQUAD_PUNCTUATION = frozenset(string.punctuation)  # SQuAD drops these ASCII symbols ($, +, =, ...) too


def extract_text_answer(text: str) -> str | None:
    """The final answer of a solution as text, or ``None`` if it states none: what follows the last ``####``
    on its line, else the content of the last ``\\boxed{...}`` (to its matching brace); unwrapped from a box,
    ``\\text{...}``-style commands, ``**bold**`` and ``$...$``, and a last full stop dropped ("Paris."); at most
    ``MAX_TEXT_ANSWER_CHARS`` characters (longer is no answer)."""
    text = text[-MAX_TEXT_CHARS:]
    mark = text.rfind("####")
    if mark >= 0:
        answer = text[mark + 4 :].split("\n", 1)[0].strip()
    else:
        box = text.rfind(_BOX)
        answer = _braced(text, box + len(_BOX)) if box >= 0 else ""
    for _ in range(_TEXT_COMMAND_DEPTH):  # a bounded number of wrappers, outermost first: $\boxed{\textbf{A}}$
        unwrapped = _TEXT_COMMAND_RE.sub(r"\1", answer).strip()
        for left, right in (("**", "**"), ("$", "$")):  # a chat model's bold, inline mathematics
            if len(unwrapped) > len(left + right) and unwrapped.startswith(left) and unwrapped.endswith(right):
                unwrapped = unwrapped[len(left) : -len(right)].strip()
        if unwrapped.startswith(_BOX):  # "#### \boxed{Paris}"
            unwrapped = _braced(unwrapped, len(_BOX)).strip()
        if unwrapped.endswith(".") and unwrapped.count(".") == 1:  # a sentence's full stop, not "D.C."
            unwrapped = unwrapped[:-1].rstrip()
        if unwrapped == answer:
            break
        answer = unwrapped
    return answer if answer and len(answer) <= MAX_TEXT_ANSWER_CHARS else None


def _braced(text: str, start: int) -> str:
    """The text from ``start`` to the brace that closes the one opened just before it ("" if none does)."""
    depth = 1
    for index in range(start, min(len(text), start + 4 * MAX_TEXT_ANSWER_CHARS)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return ""


def normalize_text_answer(text: str, normalization: TextNormalization) -> str:
    """The form two text answers are compared in: ``exact`` strips surrounding whitespace; ``casefold`` also
    ignores case and collapses whitespace runs; ``squad`` (SQuAD's answer normalisation) also drops
    punctuation (ASCII's symbols, as SQuAD does, and Unicode's) and the articles a / an / the, unless nothing
    else is left (so a choice "A" stays "a"). Note that ``squad`` makes "-3" equal "3" and "2.5" equal "25":
    use ``casefold`` for answers like those."""
    if normalization == "exact":
        return text.strip()
    text = text.casefold()
    if normalization == "squad":
        text = "".join(c for c in text if c not in _SQUAD_PUNCTUATION and not unicodedata.category(c).startswith("P"))
        without_articles = _ARTICLES_RE.sub(" ", text)
        text = without_articles if without_articles.strip() else text
    return " ".join(text.split())


def text_answers_match(predicted: str | None, target: str, normalization: TextNormalization) -> bool:
    """Whether a text answer equals the target once both are normalized; a missing prediction, or one with
    nothing left once normalized (only punctuation), is wrong."""
    if predicted is None:
        return False
    normalized = normalize_text_answer(predicted, normalization)
    return bool(normalized) and normalized == normalize_text_answer(target, normalization)
