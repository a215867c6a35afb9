"""The step checker: true, false and unparseable equations, hostile strings; choosing one."""

from __future__ import annotations

import sys
import time

import pytest

from selftaught.config import ConfigError
from selftaught.tasks import get_task
from selftaught.tasks.steps import equations, false_equation, make_step_checker, signature, steps_hold


@pytest.mark.parametrize("text, expected", [
    # false steps seen in rationalization on a reasoning-gym arithmetic task
    ("94 - 77 = 112.", [("94 - 77 = 112", False)]),
    ("98 - 63 = 21. 21 - 63 = 35.", [("98 - 63 = 21", False), ("21 - 63 = 35", False)]),
    ("98 - 63 = 35. 35 + 4 = 39.", [("98 - 63 = 35", True), ("35 + 4 = 39", True)]),
    ("Each dog has 4 legs, so three dogs have 3 * 4 = 12 legs.", [("3 * 4 = 12", True)]),
    ("3 × 4 = 12, and 12 ÷ 4 = 3; 2 x 5 = 10", [("3 × 4 = 12", True), ("12 ÷ 4 = 3", True), ("2 x 5 = 10", True)]),
    ("(3 + 4) * 2 = 14", [("(3 + 4) * 2 = 14", True)]),
    ("3 + 4 * 2 = 14", [("3 + 4 * 2 = 14", False)]),  # precedence
    ("3 + 4 = 7 = 8", [("3 + 4 = 7", True), ("7 = 8", False)]),  # a chain states each link
    ("t = 5040 / 84 = 60", [("5040 / 84 = 60", True)]),  # the variable's side is not read
    ("1,234 + 5 = 1,239", [("1,234 + 5 = 1,239", True)]),  # thousands separators
    ("1,234 + 5 = 1,240", [("1,234 + 5 = 1,240", False)]),
    ("−3 + 5 = 2", [("− 3 + 5 = 2", True)]),  # unicode minus
    ("−3 + 5 = 3", [("− 3 + 5 = 3", False)]),
    ("-6 + -77 = -83 and -(-3) = 3", [("- 6 + - 77 = - 83", True), ("- (- 3) = 3", True)]),
    ("10 / 3 = 3.33", [("10 / 3 = 3.33", True)]),  # a decimal stands for the rounded value
    ("10 / 3 = 3.2", [("10 / 3 = 3.2", False)]),
    ("0.1 + 0.2 = 0.3", [("0.1 + 0.2 = 0.3", True)]),  # exact fractions, not floats
    ("$5 + $3 = $8", [("5 + 3 = 8", True)]),
    ("<<48/2=24>>", [("48 / 2 = 24", True)]),  # GSM8K's calculator annotation
    ("5 / 0 = 0", [("5 / 0 = 0", False)]),  # no number is a quotient by zero
])
def test_equations_are_found_and_checked(text, expected):
    assert [(e.text, e.holds) for e in equations(text)] == expected


@pytest.mark.parametrize("text", [
    "84*t + 4370 = 9410", "t - 3 = 5", "2x + 3 = 7", "2 + 2 = 4t",  # variables
    "2^10 = 1024", "9**99999999 = 1", "10 ** 1000000 = 5",  # powers: not read, never computed
    "On 12-05-2020 = today", "12-05-2020", "12-05-2020 = 12 - 5 - 2020",  # dates
    "half of 20 = 10", "50% of 20 = 10", "x = 7 = 8",  # no computation stated
    "2:30 + 1 = 3:30", "v.5 + 1 = 1.5", "1,23 + 4 = 5,23",  # times, stray decimals
    "box 3 = 4", "(((1)) + 1 = 2", "3 + = 7", "= 4", "", "no numbers at all = none",
    "9" * 50 + " + 1 = 2",  # a literal too long to be a hand computation
    "(" * 5000 + "1" + ")" * 5000 + " + 1 = 2",  # deep nesting: no recursion blow-up
])
def test_unparseable_equations_are_never_rejected(text):
    assert all(e.holds is not False for e in equations(text)), equations(text)
    assert steps_hold(text)


def test_hostile_strings_are_fast():
    started = time.perf_counter()
    for text in ["9" * 100_000 + " * 9 = 1", "1 * " * 20_000 + "1 = 1", "= " * 50_000, "(" * 100_000,
                 "99999999999999999999 * " * 30 + "1 = 1"]:
        equations(text)
    assert time.perf_counter() - started < 5
    assert sys.getrecursionlimit() >= 1000  # nothing lowered it


def test_false_equation_names_the_first():
    assert false_equation("2 + 2 = 4. 4 * 3 = 13. 1 + 1 = 3.") == "4 * 3 = 13"
    assert false_equation("2 + 2 = 4.") is None


@pytest.mark.parametrize("a, b, same", [
    ("3 * 4 = 12, so 12 + 1 = 13.", "First 3*4=12; then 12+1=13!", True),
    ("3 * 4 = 12, so 12 + 1 = 13.", "12 + 1 = 13 after 3 * 4 = 12.", False),  # order matters
    ("It is 1,300 then 12.", "1300 and then 12", True),  # no equations: the numbers
    ("", "nothing", True),
])
def test_rft_signature(a, b, same):
    assert (signature(a) == signature(b)) is same


def test_step_checker_choice(tmp_path, monkeypatch):
    assert make_step_checker("none") is None
    assert make_step_checker("equations")("7 + 8 = 15.") is True
    assert make_step_checker("equations")("7 + 8 = 14.") is False
    (tmp_path / "my_steps.py").write_text(
        "def short(rationale):\n    return len(rationale) < 10\n"
        "def two(a, b):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mine = make_step_checker("my_steps:short")
    assert mine("short") and not mine("much too long")
    with pytest.raises(ConfigError, match="loop.step_checker 'my_steps:two' must take"):
        make_step_checker("my_steps:two")
    with pytest.raises(ConfigError, match="loop.step_checker must be auto, equations, none"):
        make_step_checker("sympy")


def test_auto_is_on_for_the_arithmetic_tasks():
    assert get_task("addition").states_equations
    pytest.importorskip("reasoning_gym")
    assert get_task("reasoning_gym", {"dataset": "basic_arithmetic"}).states_equations
    assert not get_task("reasoning_gym", {"dataset": "word_sorting"}).states_equations
