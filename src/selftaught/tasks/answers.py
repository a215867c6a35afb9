"""Finding the final answer a completion commits to, and checking it against the ground truth.

A completion commits to an answer in its last line ("... Therefore, the answer is blotter (e).",
"#### 72"); an answer mentioned earlier in the rationale is not the final one. Anything
ambiguous ("(b) or maybe (c)") counts as no answer, which STaR treats as wrong.
"""

from __future__ import annotations

import importlib
import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import ClassVar

from selftaught.config import ConfigError
from selftaught.tasks.base import Example

_ANSWER_IS = re.compile(r"answer is|####", re.IGNORECASE)
_NUMBER = re.compile(
    r"\s*[:=]?\s*(?P<sign>[-−])?\s*\$?\s*(?P<num>\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*(?P<den>\d+)(?![\d.]))?"
)
_LETTER = re.compile(r"\(([A-Za-z])\)")
_BARE_LETTER = re.compile(r"\s*:?\s*\(?([A-Za-z])\)?\s*[.!]?\s*$")


def final_statement(completion: str, markers: re.Pattern = _ANSWER_IS) -> str | None:
    """What follows the last answer marker, if that marker is on the completion's last line."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    if not lines:
        return None
    found = list(markers.finditer(lines[-1]))
    if not found:
        return None
    return lines[-1][found[-1].end():].strip()


# --- numbers -----------------------------------------------------------------------------

def to_fraction(text: str) -> Fraction | None:
    """The exact value of a number written as "1,234.00", "$18.", "-3", "0.50" or "3/4"."""
    m = _NUMBER.match(text)
    if not m:
        return None
    value = Fraction(Decimal(m["num"].replace(",", "")))
    if m["den"]:
        if int(m["den"]) == 0:
            return None
        value /= int(m["den"])
    return -value if m["sign"] else value


def format_number(value: Fraction) -> str:
    """Canonical text: "1234", "0.5", "-3"; a fraction that is not a finite decimal as "1/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    if Fraction(exact) == value:
        return format(exact.normalize(), "f")
    return f"{value.numerator}/{value.denominator}"


def normalize_number(text: str) -> str | None:
    """A whole string read as one number (commas, "$", trailing zeros and "." removed)."""
    text = text.strip().rstrip(".").strip()
    m = _NUMBER.fullmatch(text)
    return format_number(to_fraction(text)) if m else None


def extract_number(completion: str) -> str | None:
    """The number right after the last "####" or "answer is" on the last line."""
    tail = final_statement(completion)
    if tail is None:
        return None
    value = to_fraction(tail)
    return None if value is None else format_number(value)


# --- multiple choice ---------------------------------------------------------------------

def extract_choice(completion: str, choices: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """The label of the chosen answer: "(e)", "e", or, given the choices, the choice's text.

    Without the choices a named text is returned as it is, for `letter_is_correct` to resolve.
    """
    tail = final_statement(completion)
    if not tail:
        return None
    sentence = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0]
    letters = {c.upper() for c in _LETTER.findall(sentence)}
    if len(letters) > 1:
        return None  # "(b) or maybe (c)": no commitment
    if letters:
        return _label(letters.pop(), choices)
    bare = _BARE_LETTER.fullmatch(sentence)
    if bare and (choices is None or _label(bare[1], choices)):
        return _label(bare[1], choices)
    if choices is None:
        return _normalize_text(sentence) or None
    return choice_named(sentence, choices)


def choice_named(text: str, choices: tuple[tuple[str, str], ...]) -> str | None:
    """The one choice whose text ``text`` names; the longest when one contains another."""
    said = f" {_normalize_text(text)} "
    named = [(label, t) for label, t in choices if f" {_normalize_text(t)} " in said]
    if not named:
        return None
    label, longest = max(named, key=lambda c: len(c[1]))
    if all(_normalize_text(t) in _normalize_text(longest) for _, t in named):
        return label
    return None  # two different choices named


def _label(letter: str, choices: tuple[tuple[str, str], ...] | None) -> str | None:
    if choices is None:
        return letter.upper()
    for label, _ in choices:
        if label.upper() == letter.upper():
            return label
    return None  # "(f)" when the choices are a-e


def _normalize_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def letter_is_correct(predicted: str | None, example: Example) -> bool:
    if predicted is None:
        return False
    if len(predicted) > 1 and example.choices:  # a choice named by its text
        predicted = choice_named(predicted, example.choices) or ""
    return predicted.upper() == example.answer.upper()


# --- checkers for the user's own data ----------------------------------------------------

class Checker(ABC):
    """How the custom task reads an answer out of a completion and compares it."""

    name: ClassVar[str]

    def extract(self, completion: str, example: Example | None = None) -> str | None:
        tail = final_statement(completion)
        if tail is None:
            return None
        tail = tail.strip().removesuffix(".").strip()
        return tail or None

    @abstractmethod
    def is_correct(self, predicted: str | None, example: Example) -> bool: ...


class ExactChecker(Checker):
    """The same text, after collapsing whitespace and dropping a final period."""

    name = "exact"

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return predicted is not None and _squash(predicted) == _squash(example.answer)


class NumericChecker(Checker):
    """The same number: 1,234.00 == 1234 == $1234; 12 is not 123."""

    name = "numeric"

    def extract(self, completion: str, example: Example | None = None) -> str | None:
        return extract_number(completion)

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        if predicted is None:
            return False
        gold = normalize_number(example.answer)
        return gold is not None and normalize_number(predicted) == gold


class LetterChecker(Checker):
    """The same choice label, also when the completion names the choice's text."""

    name = "letter"

    def extract(self, completion: str, example: Example | None = None) -> str | None:
        return extract_choice(completion, example.choices if example else None)

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return letter_is_correct(predicted, example)


class MathChecker(Checker):
    """Mathematical equivalence by math-verify (LaTeX or plain expressions: \\frac{1}{2} == 0.5)."""

    name = "math"

    def __init__(self) -> None:
        try:
            import math_verify
        except ImportError:
            raise ConfigError(
                "task.options.checker=math needs math-verify: pip install 'selftaught[math]'"
            ) from None
        self._parse, self._verify = math_verify.parse, math_verify.verify

    def _read(self, text: str) -> list:
        # math-verify finds LaTeX only between delimiters; a bare "\sqrt{2}" needs them added.
        return self._parse(text) or self._parse(f"${text}$")

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        if predicted is None:
            return False
        gold, guess = self._read(example.answer), self._read(predicted)
        return bool(gold and guess and self._verify(gold, guess))


class FunctionChecker(Checker):
    """A function of yours, ``fn(predicted: str, answer: str) -> bool``, named by import path."""

    name = "function"

    def __init__(self, path: str, fn: Callable[[str, str], bool] | None = None) -> None:
        self.path = path
        self.fn = fn or import_function(path)  # fn: a callable given in Python (selftaught.STaR)

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return predicted is not None and bool(self.fn(predicted, example.answer))


_CHECKERS: dict[str, Callable[[], Checker]] = {
    "exact": ExactChecker, "numeric": NumericChecker, "letter": LetterChecker, "math": MathChecker,
}
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def make_checker(spec: str) -> Checker:
    """exact | numeric | letter | math | package.module:function (imported, never evaluated)."""
    if spec in _CHECKERS:
        return _CHECKERS[spec]()
    if ":" in spec:
        return FunctionChecker(spec)
    raise ConfigError(
        f"task.options.checker must be one of {', '.join(_CHECKERS)} or an import path "
        f"package.module:function; got {spec!r}"
    )


def import_function(
    path: str, key: str = "task.options.checker", arguments: tuple[str, ...] = ("predicted", "answer")
) -> Callable:
    """``package.module:function`` imported with importlib; no string is ever evaluated."""
    if not _IMPORT_PATH.fullmatch(path):
        raise ConfigError(f"{key} {path!r} must look like package.module:function")
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{key} {path!r}: cannot import {module_name} ({e}); make sure it is "
            "installed or on PYTHONPATH (e.g. PYTHONPATH=. for a file in this folder)"
        ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{key} {path!r}: {module_name} has no {attr}")
    if not callable(obj):
        raise ConfigError(f"{key} {path!r} is not a function")
    try:
        inspect.signature(obj).bind(*arguments)
    except TypeError:
        what = {("predicted", "answer"): "two arguments, (predicted, answer), and return whether "
                "the prediction is right"}.get(arguments, f"({', '.join(arguments)}) and return a bool")
        raise ConfigError(f"{key} {path!r} must take {what}") from None
    except ValueError:  # a builtin without a signature: it will be called as documented
        pass
    return obj


def _squash(text: str) -> str:
    return " ".join(text.split()).removesuffix(".")
