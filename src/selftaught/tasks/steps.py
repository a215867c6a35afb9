"""Right for the right reason: find the arithmetic equations a rationale states and check them.

STaR's filter checks only the final answer, so rationalization keeps rationales whose steps are
false when the hint supplied the answer ("94 - 77 = 112." kept because the hint said 112). RFT
drops such reasoning paths; so does this checker, when on: a rationale with a false equation is
not kept.

We parse the equations ourselves rather than with ``eval`` (arbitrary code) or sympy (slow,
and it accepts far more than arithmetic): numbers, + - * / x × ÷ and parentheses, exact
fractions, capped sizes. Anything else is *unparseable* and never rejects a rationale: the
checker only rejects what it can prove false. An equation is read between two non-arithmetic
boundaries, so "3 dogs have 3 * 4 = 12 legs" checks "3 * 4 = 12" and "84*t + 4370 = 9410"
(a variable) checks nothing.

A step checker is any function ``fn(rationale: str) -> bool`` (True: keep), named by import path
like the answer checkers (``loop.step_checker=package.module:function``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from selftaught.config import ConfigError

_MAX_DIGITS = 40  # a longer literal is not arithmetic a rationale checks by hand
_MAX_VALUE = 10**80  # intermediate results past this are unparseable, not computed
_MAX_TOKENS = 200  # per expression; also bounds the parser's recursion

_TOKEN = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?|\d+(?:\.\d+)?)"  # 1,234.5 or 1234.5; "21." ends a sentence
    r"|(?P<op>[-+*/×÷·−–]|(?<![A-Za-z])[xX](?![A-Za-z]))"  # x as times, not inside a word
    r"|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)|(?P<space>[ \t]+)|(?P<other>.)",
    re.DOTALL,
)
_OPS = {"-": "-", "−": "-", "–": "-", "+": "+", "*": "*", "×": "*", "·": "*", "x": "*", "X": "*",
        "/": "/", "÷": "/"}
# Punctuation that may touch an equation without being part of it ("= 21.", "<<48/2=24>>"). Not
# ":" ("2:30 + 1 = 3:30" is a time) and, before one, not "." or "," (".5 + 1", "1,23 + 4").
_SOFT_BEFORE = set("\"'\n\r<[{")
_SOFT_AFTER = set(".,;!?\"'\n\r>]}")


class Unparseable(ValueError):
    """Not plain arithmetic (a variable, a power, a huge number): the equation is not checked."""


@dataclass(frozen=True)
class Equation:
    text: str  # "94 - 77 = 112"
    holds: bool | None  # None: could not be evaluated (it is not rejected)


def equations(text: str) -> list[Equation]:
    """Every equation ``a = b`` (chains a = b = c give two) between arithmetic expressions."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(text.replace("$", ""))]
    found: list[Equation] = []
    segment: list[tuple[str, str]] = []
    before = "\n"  # the character just before the segment
    for kind, value in tokens + [("other", "\n")]:
        if kind != "other":
            segment.append((kind, value))
            continue
        found += _segment_equations(segment, before, value)
        segment, before = [], value
    return found


def false_equation(text: str) -> str | None:
    """The first equation of ``text`` that is false, or None when none is."""
    return next((e.text for e in equations(text) if e.holds is False), None)


def steps_hold(rationale: str) -> bool:
    """The built-in step checker: True unless the rationale states a false equation."""
    return false_equation(rationale) is None


def signature(text: str) -> tuple[str, ...]:
    """RFT's signature of a reasoning path: its equations in order, spaces removed; without
    equations, the sequence of numbers it mentions. Two rationales with the same signature do
    the same computation in different words."""
    eqs = tuple(e.text.replace(" ", "") for e in equations(text))
    if eqs:
        return eqs
    return tuple(m.group().replace(",", "") for m in re.finditer(r"\d[\d,]*(?:\.\d+)?", text))


# --- one level down ------------------------------------------------------------------------

def _segment_equations(segment: list[tuple[str, str]], before: str, after: str) -> list[Equation]:
    if not any(kind == "eq" for kind, _ in segment):
        return []
    # An expression touching a letter or symbol ("2^10", "4t", "50%") continues past what we can
    # read, so the part of the equation at that edge is unknown.
    open_start = not segment[0][0] == "space" and before not in _SOFT_BEFORE
    open_end = not segment[-1][0] == "space" and after not in _SOFT_AFTER
    parts: list[list[tuple[str, str]]] = [[]]
    for kind, value in segment:
        if kind == "eq":
            parts.append([])
        elif kind != "space":
            parts[-1].append((kind, value))
    if open_start:
        parts[0] = []
    if open_end:
        parts[-1] = []
    # "t - 3 = 5": a part that starts with a binary operator continues a variable's expression;
    # a minus touching its number ("Then -21 + 25 = 4") is a sign.
    lead = [t for t in segment if t[0] != "space"]
    if parts[0] and parts[0][0][0] == "op":
        i = segment.index(lead[0])
        signed = _OPS[lead[0][1]] == "-" and i + 1 < len(segment) and segment[i + 1][0] in ("num", "lp")
        if not signed:
            parts[0] = []
    if not any(_has_operator(p) for p in parts):
        return []  # "half of 20 = 10": bare numbers state no computation
    out = []
    for left, right in zip(parts, parts[1:]):  # a chain a = b = c states a = b and b = c
        if not left or not right:
            continue
        text = f"{_show(left)} = {_show(right)}"
        try:
            a, b = _value(left), _value(right)
        except Unparseable:
            continue
        except ZeroDivisionError:
            out.append(Equation(text, False))  # no number equals a quotient by zero
            continue
        out.append(Equation(text, _equal(a, b, left, right)))
    return out


def _has_operator(part: list[tuple[str, str]]) -> bool:
    # A leading minus is a sign ("-3"), not a computation.
    return any(kind == "op" for kind, _ in part[1:]) or any(kind in ("lp",) for kind, _ in part)


def _show(part: list[tuple[str, str]]) -> str:
    return " ".join(value for _, value in part).replace("( ", "(").replace(" )", ")")


def _equal(a: Fraction, b: Fraction, left: list, right: list) -> bool:
    if a == b:
        return True
    # "10 / 3 = 3.33": a decimal literal stands for the value rounded to its places.
    for literal, other in ((right, a), (left, b)):
        if len(literal) == 1 and literal[0][0] == "num" and "." in literal[0][1]:
            places = len(literal[0][1].split(".")[1])
            if abs(_number(literal[0][1]) - other) <= Fraction(1, 2 * 10**places):
                return True
    return False


def _number(text: str) -> Fraction:
    digits = text.replace(",", "")
    whole = digits.split(".")[0]
    if len(digits) > _MAX_DIGITS or (len(whole) > 1 and whole.startswith("0")):
        raise Unparseable(text)  # "05" is a date or a code, not a number in a sum
    return Fraction(digits)


def _value(part: list[tuple[str, str]]) -> Fraction:
    if len(part) > _MAX_TOKENS:
        raise Unparseable("too long")
    parser = _Parser(part)
    value = parser.sum()
    if parser.i != len(part):
        raise Unparseable("trailing tokens")
    return value


class _Parser:
    """Recursive descent over sum := product (('+'|'-') product)*, product := unary (('*'|'/')
    unary)*, unary := '-' unary | number | '(' sum ')'; every result checked for size."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.i = tokens, 0

    def _peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def _op(self, allowed: str) -> str | None:
        kind, value = self._peek()
        if kind == "op" and _OPS[value] in allowed:
            self.i += 1
            return _OPS[value]
        return None

    def sum(self) -> Fraction:
        value = self.product()
        while op := self._op("+-"):
            value = _check(value + self.product() if op == "+" else value - self.product())
        return value

    def product(self) -> Fraction:
        value = self.unary()
        while op := self._op("*/"):
            right = self.unary()
            value = _check(value * right if op == "*" else value / right)
        return value

    def unary(self) -> Fraction:
        if self._op("-"):
            return -self.unary()
        kind, value = self._peek()
        self.i += 1
        if kind == "num":
            return _number(value)
        if kind == "lp":
            inner = self.sum()
            if self._peek()[0] != "rp":
                raise Unparseable("unclosed parenthesis")
            self.i += 1
            return inner
        raise Unparseable(f"unexpected {value!r}")


def _check(value: Fraction) -> Fraction:
    if abs(value.numerator) > _MAX_VALUE or value.denominator > _MAX_VALUE:
        raise Unparseable("too large")
    return value


# --- choosing a step checker ---------------------------------------------------------------

def make_step_checker(spec: str | None) -> Callable[[str], bool] | None:
    """``equations`` (the built-in), ``none``, or ``package.module:function`` (imported, never
    evaluated) taking a rationale and returning whether to keep it."""
    if spec in (None, "none"):
        return None
    if spec == "equations":
        return steps_hold
    if ":" in spec:
        from selftaught.tasks.answers import import_function

        fn = import_function(spec, key="loop.step_checker", arguments=("rationale",))
        return lambda rationale: bool(fn(rationale))
    raise ConfigError(f"loop.step_checker must be auto, equations, none or an import path "
                      f"package.module:function; got {spec!r}")
