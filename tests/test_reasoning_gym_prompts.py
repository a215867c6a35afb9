"""The hand-written rationale exemplars for reasoning-gym tasks: picked automatically, scored
right by each task's own score_answer, solved right by an independent solver, every equation
true; and the note for a task that has none."""

from __future__ import annotations

import math
import re

import pytest

from selftaught.tasks import get_task
from selftaught.tasks.data import prompt_file
from selftaught.tasks.steps import equations

rg = pytest.importorskip("reasoning_gym")

SHIPPED = sorted(p.stem.removeprefix("reasoning_gym_")
                 for p in prompt_file("addition.yaml").parent.glob("reasoning_gym_*.yaml"))


def _expression(question: str) -> str:
    return re.search(r"(?:Calculate|problem:|multiplication:)\s*(.*?)\s*(?:=|\.)?(?: Give only.*)?$",
                     question, re.DOTALL)[1]


def _arithmetic(question: str) -> str:
    """The answer, if our own parser (tested in test_steps) finds expression = answer true."""
    return question  # marker: checked with the exemplar's answer below


def _legs(question: str) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    total = 0
    for count, animal in re.findall(r"(\d+) ([a-z ]+?)s?(?:,|\?)", question.split("if you have")[1]):
        total += int(count) * ANIMALS[animal]
    return str(total)


def _letters(question: str) -> str:
    letter, text = re.search(r'letter "(.)" appear in the text: "(.*)"', question).groups()
    return str(text.lower().count(letter))


def _numbers(question: str) -> tuple[str, dict]:
    direction, numbers = re.search(r"in (\w+) order: (.*)\n", question).groups()
    ordered = sorted(numbers.split(", "), key=float, reverse=direction == "descending")
    return str(ordered), {"direction": direction}


def _words(question: str) -> tuple[str, dict]:
    direction, words = re.search(r"in (\w+) order .* list: (.*)$", question).groups()
    ordered = sorted(words.split(", "), reverse=direction == "descending")
    return ", ".join(ordered), {"sorted_words": ordered}


def _equation(question: str) -> str:
    var, equation = re.search(r"(?:for|of|value of) (\w)(?: in the equation| that satisfies)?: (.*)$", question).groups()
    left, right = equation.split(" = ")
    f = lambda v: eval(left.replace(var, f"({v})"), {"__builtins__": {}}) - eval(right, {"__builtins__": {}})  # noqa: E731,S307
    (root,) = [v for v in range(-1000, 1001) if f(v) == 0]
    return str(root)


def _gcd(question: str) -> str:
    return str(math.gcd(*map(int, re.search(r"numbers: (\d+), (\d+)", question).groups())))


def _lcm(question: str) -> str:
    return str(math.lcm(*map(int, re.search(r"numbers: (\d+), (\d+)", question).groups())))


SOLVERS = {
    "basic_arithmetic": _arithmetic, "chain_sum": _arithmetic, "products": _arithmetic,
    "leg_counting": _legs, "letter_counting": _letters, "number_sorting": _numbers,
    "word_sorting": _words, "simple_equations": _equation, "gcd": _gcd, "lcm": _lcm,
    "spell_backward": lambda q: q.rsplit(": ", 1)[1][::-1],
    "syllogism": None,  # logic by hand: checked against the task's own generator below
}


def test_at_least_ten_common_tasks_have_rationales():
    assert len(SHIPPED) >= 10 and set(SHIPPED) == set(SOLVERS)
    assert set(SHIPPED) <= set(rg.factory.DATASETS)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_rationales_are_picked_right_and_true(name):
    task = get_task("reasoning_gym", {"dataset": name})
    exemplars = task.exemplars()
    assert len(exemplars) == 3  # task.options.fewshot's default
    data = rg.create_dataset(name, seed=0, size=10)
    for x, rationale in exemplars:
        assert rationale.strip(), f"{name}: exemplar without a rationale"
        if SOLVERS[name] is _arithmetic:
            (check,) = equations(f"{_expression(x.question)} = {x.answer}")
            assert check.holds, check
        solver = SOLVERS[name] if SOLVERS[name] not in (None, _arithmetic) else (lambda q: x.answer)
        solved = solver(x.question)
        expected, metadata = solved if isinstance(solved, tuple) else (solved, {})
        assert x.answer == expected, (name, x.question)
        entry = {"question": x.question, "answer": x.answer, "metadata": metadata}
        assert data.score_answer(x.answer, entry) == 1.0
        # ...and extracted from its completion exactly as a model's answer would be.
        completion = task.format_completion(x, rationale) + "</answer>"
        assert task.extract_answer(completion) == x.answer
        stated = equations(rationale)
        assert all(e.holds for e in stated), [e.text for e in stated if not e.holds]
        if task.states_equations:
            assert stated, f"{name}: an arithmetic rationale with no equation to check"
    assert task.fewshot_prompt().count("\nAnswer: ") == 3


def test_syllogism_exemplars_follow_the_generators_own_logic():
    """The Yes/No of each hand-written syllogism, by reasoning-gym's own rules: its validity check
    for a syllogism, its conversion rule ("No A are B" gives "No B are A") for an inversion."""
    from reasoning_gym.logic.syllogisms import Quantifier, SyllogismDataset, Term

    quantifiers = {"All": Quantifier.ALL, "No": Quantifier.NO, "Some": Quantifier.SOME}
    terms: dict[str, Term] = {}  # Term compares by identity: one object per word

    def parse(statement):
        m = re.fullmatch(r"(All|No|Some) (\w+) are (not )?(\w+)", statement.strip())
        q = Quantifier.SOME_NOT if m[3] else quantifiers[m[1]]
        return q, terms.setdefault(m[2], Term(m[2], m[2])), terms.setdefault(m[4], Term(m[4], m[4]))

    for x, _ in get_task("reasoning_gym", {"dataset": "syllogism"}).exemplars():
        lines = x.question.splitlines()
        p1, p2, c = parse(lines[1][3:]), parse(lines[2][3:]), parse(lines[5].rstrip("?"))
        inverted = [p for p in (p1, p2) if (p[2], p[1]) == (c[1], c[2])]
        if inverted:
            valid = inverted[0][0] in (Quantifier.NO, Quantifier.SOME) and inverted[0][0] == c[0]
        else:
            valid = SyllogismDataset._is_valid_syllogism(p1, p2, c)
        assert x.answer == ("Yes" if valid else "No"), x.question


def test_fewshot_and_a_users_file_still_decide(tmp_path):
    assert len(get_task("reasoning_gym", {"dataset": "products", "fewshot": 2}).exemplars()) == 2
    assert get_task("reasoning_gym", {"dataset": "products", "fewshot": 0}).exemplars() == []
    mine = tmp_path / "mine.yaml"
    mine.write_text("- {question: 'Solve: 2 * 3', answer: '6', rationale: 2 * 3 = 6.}\n")
    ((x, r),) = get_task("reasoning_gym", {"dataset": "products", "prompt_file": str(mine)}).exemplars()
    assert (x.question, r) == ("Solve: 2 * 3", "2 * 3 = 6.")


def test_an_exemplar_question_is_never_drawn_for_training(monkeypatch):
    task = get_task("reasoning_gym", {"dataset": "chain_sum", "config": {"min_terms": 2, "max_terms": 2,
                                                                         "min_digits": 1, "max_digits": 1}})
    train = task.load("train", 40, seed=0)
    # 1-digit sums repeat, so make an exemplar of a question the draw would otherwise give:
    (x, _), *rest = task.exemplars()
    taken = train[0].question
    task._exemplar_questions = {taken}
    assert taken not in {e.question for e in task._draw("train", 40)}


def test_a_task_without_rationales_says_so_once(capsys):
    import selftaught.tasks.reasoning_gym as module

    module._NOTED.discard("count_bits")
    task = get_task("reasoning_gym", {"dataset": "count_bits"})
    get_task("reasoning_gym", {"dataset": "count_bits"})
    err = capsys.readouterr().err
    assert err.count("note: reasoning-gym task 'count_bits' gives no worked solutions") == 1
    assert "task.options.prompt_file=" in err
    assert all(r == "" for _, r in task.exemplars())
    for name in ("gsm_symbolic", "leg_counting"):  # a worked solution, or ours: no note
        get_task("reasoning_gym", {"dataset": name})
        assert "note:" not in capsys.readouterr().err
    get_task("reasoning_gym", {"dataset": "count_bits", "fewshot": 0})  # no exemplars: nothing to say
