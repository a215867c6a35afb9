"""Tasks: prompts, answer extraction on hostile completions, checkers, and bad data."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest
import yaml

from selftaught.cli import main
from selftaught.config import ConfigError
from selftaught.tasks import DataError, Example, get_task, task_names
from selftaught.tasks.addition import scratchpad
from selftaught.tasks.answers import extract_choice, extract_number, normalize_number
from selftaught.tasks.data import prompt_file

DATA = Path(__file__).parent / "data"
CSQA = {"train": str(DATA / "commonsenseqa_train.jsonl"), "validation": str(DATA / "commonsenseqa_dev.jsonl")}
GSM = {"train": str(DATA / "gsm8k_train.jsonl"), "test": str(DATA / "gsm8k_test.jsonl")}
CHOICES = (("A", "shirt pocket"), ("B", "calligrapher's hand"), ("C", "inkwell"), ("D", "desk drawer"),
           ("E", "blotter"))
INK = Example("q", "What do people use to absorb extra ink from a fountain pen?", "E", CHOICES)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --- addition ------------------------------------------------------------------------------

def test_plain_addition_prompt_is_unchanged():
    """The default run depends on this exact text (the embedded model follows it)."""
    task = get_task("addition")
    example = task.load("train", 1, seed=0)[0]
    assert example == Example("train-0", "5 + 8", "13", group="1 digit")
    shots = [(23, 45), (7, 8), (58, 36), (91, 9), (4, 62), (37, 48)]
    fewshot = "".join(f"Q: What is {a} + {b}?\nA: {a} + {b} = {a + b}. The answer is {a + b}.\n\n" for a, b in shots)
    assert task.prompt(example) == fewshot + "Q: What is 5 + 8?\nA:"
    hinted = "".join(f"Q: What is {a} + {b}? (Hint: the answer is {a + b}.)\nA: {a} + {b} = {a + b}. "
                     f"The answer is {a + b}.\n\n" for a, b in shots)
    assert task.prompt(example, hint=True) == hinted + "Q: What is 5 + 8? (Hint: the answer is 13.)\nA:"
    assert task.stop == ("\n\n", "\nQ:")
    assert task.extract_answer(" 36 + 56 = 92. The answer is 92.") == "92"
    assert task.extract_answer(" The answer is 1,092.") == "1092"
    assert task.extract_answer(" 36 + 56 = 92.") is None and task.extract_answer("") is None


def test_scratchpad_is_the_papers():
    # The worked example of the authors' arithmetic/gen_sums.py format, digit by digit with carries.
    assert scratchpad(624, 257) == (
        "<scratch>\n6 2 4 + 2 5 7 , C: 0\n2 + 5 , 1 C: 1\n6 + 2 , 8 1 C: 0\n, 8 8 1 C: 0\n0 8 8 1\n</scratch>"
    )
    assert scratchpad(29, 57).splitlines()[2:4] == ["2 + 5 , 6 C: 1", ", 8 6 C: 0"]
    assert scratchpad(7, 5).splitlines()[-2] == "1 2"


def test_scratchpad_prompt_answers_and_digit_groups():
    task = get_task("addition", {"format": "scratchpad", "digits_min": 2, "digits_max": 3})
    assert [len(x.question.split(" + ")[0]) for x, _ in task.exemplars()] == [2, 3]  # one per length
    example = task.load("test", 20, seed=0)[0]
    a, b = example.question.split(" + ")
    prompt = task.prompt(example)
    assert prompt.endswith(f"Input:\n{' '.join(a)} + {' '.join(b)}\nTarget:")
    assert "Hint" not in prompt
    assert task.prompt(example, hint=True).endswith(f" (Hint: the answer is {' '.join(example.answer)}.)\nTarget:")
    assert {e.group for e in task.load("train", 50, seed=0)} == {"2 digits", "3 digits"}
    rng = random.Random(0)
    for _ in range(50):  # a correct scratchpad completion is read back as the sum
        a, b = rng.randint(0, 10**6), rng.randint(0, 10**6)
        assert task.extract_answer(task.format_answer(scratchpad(a, b), str(a + b))) == str(a + b)


@pytest.mark.parametrize("completion, expected", [
    ("\n<scratch>\n6 2 4 + 2 5 7 , C: 0\n, 8 8 1 C: 0\n0 8 8 1\n</scratch>\n8 8 1", "881"),
    ("\n8 8 1", "881"),  # a direct answer
    ("\n<scratch>\n6 2 4 + 2 5 7 , C: 0\n2 + 5 , 1 C: 1", None),  # never closed
    ("\n<scratch>\n0 8 8 1\n</scratch>\n", None),  # the sum inside the scratchpad, not after it
    ("\n<scratch>\n</scratch>\n8 8 1 or 8 8 2", None),
    ("", None),
    ("\n</scratch>\nThe answer is 881.", None),
])
def test_scratchpad_extraction(completion, expected):
    assert get_task("addition", {"format": "scratchpad"}).extract_answer(completion) == expected


def test_addition_options_are_checked():
    with pytest.raises(ConfigError, match="format must be plain or scratchpad"):
        get_task("addition", {"format": "latex"})
    with pytest.raises(ConfigError, match="digits_min <= digits_max"):
        get_task("addition", {"digits_min": 3, "digits_max": 2})


def test_addition_splits_are_distinct_disjoint_and_stable():
    task = get_task("addition", {"digits_min": 1, "digits_max": 3})
    train, test = task.load("train", 600, seed=0), task.load("test", 300, seed=0)
    assert len({e.question for e in train}) == 600 and len({e.question for e in test}) == 300
    assert not {e.question for e in train} & {e.question for e in test}
    assert task.load("test", 50, seed=0) == test[:50]  # a smaller size is a prefix
    assert task.load("test", 50, seed=1) != test[:50]
    assert all(int(e.answer) == sum(map(int, e.question.split(" + "))) for e in train + test)


def test_addition_says_when_there_are_too_few_distinct_problems():
    task = get_task("addition", {"digits_max": 1})
    test = task.load("test", 16, seed=0)  # 16 of the 100 one-digit sums are held out
    assert {e.group for e in test} == {"1 digit"}
    with pytest.raises(ConfigError, match="only 16 distinct test problems"):
        task.load("test", 17, seed=0)


# --- commonsenseqa -------------------------------------------------------------------------

@pytest.mark.parametrize("completion, with_choices, without", [
    (" Blotters absorb liquids. Therefore, the answer is blotter (e).", "E", "E"),
    (" The answer is (b) or maybe (c).", None, None),
    (" Ink is absorbed by paper. Therefore, the answer is blotter.", "E", "blotter"),  # the text, not the letter
    (" Therefore, the answer is Blotter!", "E", "blotter"),
    (" the answer is E", "E", "E"),
    (" Therefore, the answer is (f).", None, "F"),  # not among the choices
    (" (c) inkwell holds ink, but a blotter absorbs it.", None, None),  # no final answer
    (" The answer is (c).\nBut a blotter absorbs ink, so (e).", None, None),  # answer not at the end
    (" Therefore, the answer is inkwell or blotter.", None, "inkwell or blotter"),  # two named: wrong
    ("", None, None),
    (" The answer is", None, None),
])
def test_choice_extraction(completion, with_choices, without):
    assert extract_choice(completion, CHOICES) == with_choices
    task = get_task("commonsenseqa", {"data_files": CSQA})
    predicted = task.extract_answer(completion)  # what the loop calls: no example at hand
    assert predicted == without
    assert task.is_correct(predicted, INK) == (with_choices == "E")


def test_choice_text_containing_another():
    choices = (("A", "market"), ("B", "fruit market"), ("C", "super market"))
    assert extract_choice("So the answer is fruit market.", choices) == "B"
    assert extract_choice("So the answer is market.", choices) == "A"
    assert extract_choice("So the answer is fruit market or super market.", choices) is None


def test_commonsenseqa_prompt_marks_the_correct_choice_only_with_the_hint():
    task = get_task("commonsenseqa", {"data_files": CSQA})
    example = task.load("validation", None, seed=0)[0]
    plain, hinted = task.prompt(example), task.prompt(example, hint=True)
    assert "(CORRECT)" not in plain
    question = hinted.split("\n\n")[-1]
    right = f"({example.answer.lower()}) {dict(example.choices)[example.answer]} (CORRECT)"
    assert question.count("(CORRECT)") == 1 and right in question
    assert question.startswith(f"Q: {example.question}\nAnswer Choices:\n(a) ")
    assert hinted.split("\n\n")[0].count("(CORRECT)") == 1  # its own few-shot prompt, same style
    assert plain.split("\n\n")[0].endswith("Therefore, the answer is refrigerator (b).")
    assert len(task.exemplars()) <= 10


def test_commonsenseqa_loads_the_official_schema_in_a_seeded_order():
    task = get_task("commonsenseqa", {"data_files": CSQA})
    every = task.load("train", None, seed=0)
    assert len(every) == 10 and len({e.id for e in every}) == 10
    assert task.load("train", 4, seed=0) == every[:4]
    assert task.load("train", 4, seed=1) != every[:4]
    first = json.loads((DATA / "commonsenseqa_train.jsonl").read_text().splitlines()[0])
    e = next(e for e in every if e.id == first["id"])
    assert e.question == first["question"]["stem"] and e.answer == first["answerKey"]
    assert e.choices == tuple((c["label"], c["text"]) for c in first["question"]["choices"])
    with pytest.raises(ConfigError, match="no split 'test'; it has: train, validation"):
        task.load("test", None, seed=0)


def _csqa_line(**change) -> str:
    record = {"id": "x1", "answerKey": "A", "question": {"stem": "Q?", "choices": [
        {"label": "A", "text": "yes"}, {"label": "B", "text": "no"}]}}
    record.update(change)
    return json.dumps(record)


@pytest.mark.parametrize("lines, message", [
    ([_csqa_line(), "{not json"], "line 2: not valid JSON"),
    ([_csqa_line(), _csqa_line(id="x2", answerKey=None)], "line 2: missing field 'answerKey'"),
    ([_csqa_line(answerKey="F")], "line 1: field 'answerKey' is 'F', which is not among the choice labels A, B"),
    ([_csqa_line(question={"choices": []})], "line 1: missing field 'question.stem'"),
    ([_csqa_line(question={"stem": "Q?", "choices": [{"label": "A"}]})], "line 1: field 'question.choices': every choice needs a 'text'"),
    ([_csqa_line(), "", _csqa_line()], "line 3: field 'id': 'x1' appears more than once (first on line 1)"),
    (["[1, 2]"], "line 1: expected a JSON object"),
    ([], "no examples in the file"),
])
def test_bad_commonsenseqa_data_names_file_line_and_field(tmp_path, lines, message):
    path = write(tmp_path / "train.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    task = get_task("commonsenseqa", {"data_files": {"train": path}})
    with pytest.raises(DataError) as e:
        task.load("train", None, seed=0)
    assert str(e.value).startswith(path) and message in str(e.value)


def test_missing_data_file_is_reported_when_the_task_is_made(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl: no such file \(task.options.data_files.train\)"):
        get_task("gsm8k", {"data_files": {"train": str(tmp_path / "nope.jsonl")}})


def test_bad_data_stops_the_run_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    import selftaught.loop

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the data was checked")

    monkeypatch.setattr(selftaught.loop, "resolve_base_model", no_model)
    bad = write(tmp_path / "dev.jsonl", _csqa_line() + "\n" + _csqa_line(id="x2", answerKey="Z") + "\n")
    rc = main(["run", f"output_dir={tmp_path / 'run'}", "task.name=commonsenseqa", "eval.split=validation",
               "task.train_size=4", "eval.validation_size=2",
               f"task.options.data_files.train={CSQA['train']}", f"task.options.data_files.validation={bad}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().count("\n") == 0  # one line
    assert f"{bad}, line 2: field 'answerKey' is 'Z'" in err


# --- gsm8k ---------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, expected", [
    (" She has 1,234.00 dollars.\n#### 1,234.00", "1234"),
    (" The answer is $18.", "18"),
    (" 3 * 6 = 18\n#### $18.", "18"),
    (" #### 123", "123"),
    (" #### -5", "-5"),
    (" #### 0.50", "0.5"),
    (" #### 3/4", "0.75"),
    (" #### 1/3", "1/3"),
    (" The answer is: 42 apples.", "42"),
    ("", None),
    (" She has 12 apples left.", None),  # a number, but no final answer
    (" #### 72\nBut she also gives away 2, so 70 are left.", None),  # answer not at the end
    (" #### seventy-two", None),
    (" The answer is.", None),
])
def test_number_extraction(completion, expected):
    assert extract_number(completion) == expected
    assert get_task("gsm8k", {"data_files": GSM}).extract_answer(completion) == expected


def test_numbers_compare_exactly():
    task = get_task("gsm8k", {"data_files": GSM})
    example = Example("q", "?", "1234")
    assert task.is_correct(task.extract_answer("#### 1,234.00"), example)
    assert task.is_correct("$1234.", example)
    assert not task.is_correct("123", example)  # not a partial match
    assert not task.is_correct(task.extract_answer("#### 12345"), example)
    assert not task.is_correct(task.extract_answer("#### 12"), Example("q", "?", "123"))
    assert not task.is_correct(None, example)
    assert normalize_number(" 1,000 ") == "1000" and normalize_number("12 apples") is None


def test_gsm8k_loads_the_official_schema_and_hints_with_the_answer():
    task = get_task("gsm8k", {"data_files": GSM})
    train = task.load("train", None, seed=0)
    assert sorted(e.answer for e in train) == sorted(["12", "24", "32", "6", "36", "14", "75", "2050"])
    example = next(e for e in train if e.answer == "2050")  # "#### 2,050" in the file
    assert task.prompt(example, hint=True).endswith(f"Q: {example.question} (2050)\nA:")
    assert task.prompt(example).endswith(f"Q: {example.question}\nA:")
    assert "####" in task.prompt(example) and "<<" not in task.prompt(example)  # our exemplars


@pytest.mark.parametrize("record, message", [
    ({"question": "Q?", "answer": "It is 5."}, "line 1: field 'answer' has no final answer after '####'"),
    ({"question": "Q?", "answer": "#### five"}, "line 1: field 'answer': the final answer 'five' is not a number"),
    ({"answer": "#### 5"}, "line 1: missing field 'question'"),
    ({"question": "  ", "answer": "#### 5"}, "line 1: field 'question' is empty"),
])
def test_bad_gsm8k_data(tmp_path, record, message):
    path = write(tmp_path / "train.jsonl", json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message):
        get_task("gsm8k", {"data_files": {"train": path}}).load("train", None, seed=0)


# --- the user's own data -------------------------------------------------------------------

def test_custom_csv_with_one_column_per_choice():
    task = get_task("custom", {"data_files": {"train": str(DATA / "custom_choices.csv")},
                               "choices_field": ["A", "B", "C", "D"]})
    examples = task.load("train", None, seed=0)
    cold = next(e for e in examples if "coldest" in e.question)
    assert cold.choices == (("A", "winter"), ("B", "summer"), ("C", "spring"), ("D", "autumn"))
    assert cold.answer == "A"
    assert task.is_correct(task.extract_answer(" So the answer is winter (a)."), cold)
    assert task.is_correct(task.extract_answer(" So the answer is winter."), cold)
    assert not task.is_correct(task.extract_answer(" The answer is (a) or (b)."), cold)
    assert "(a) winter (CORRECT)" in task.prompt(cold, hint=True).split("\n\n")[-1]


def test_custom_jsonl_choices_in_one_field(tmp_path):
    lines = [{"q": "Pick one", "gold": "b", "opts": ["red", "green"]},
             {"q": "Pick two", "gold": "A", "opts": {"A": "up", "B": "down"}}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    task = get_task("custom", {"data_files": {"train": path}, "question_field": "q",
                               "answer_field": "gold", "choices_field": "opts"})
    first, second = sorted(task.load("train", None, seed=0), key=lambda e: e.question)
    assert first.choices == (("A", "red"), ("B", "green")) and first.answer == "B"
    assert second.answer == "A"


def test_custom_csv_choices_in_one_field(tmp_path):
    path = write(tmp_path / "d.csv", 'question,choices,answer\n"Best, really?",yes | no,B\n')
    task = get_task("custom", {"data_files": {"train": path}, "choices_field": "choices"})
    (e,) = task.load("train", None, seed=0)
    assert e.question == "Best, really?" and e.choices == (("A", "yes"), ("B", "no"))


@pytest.mark.parametrize("text, options, message", [
    ("question,answer\nWhat?,4,extra\n", {}, "line 2: expected 2 fields (question, answer), got 3"),
    ("question,answer\nWhat?\n", {}, "line 2: expected 2 fields (question, answer), got 1"),
    ("question,reply\nWhat?,4\n", {}, "line 2: missing field 'answer'"),
    ("question,answer\nWhat?,\n", {}, "line 2: field 'answer' is empty"),
    ("question,answer,A,B\nWhat?,C,x,y\n", {"choices_field": ["A", "B"]},
     "line 2: field 'answer' is 'C', which is not among the choice labels A, B"),
    ("question,answer\n", {}, "no examples in the file"),
])
def test_bad_custom_csv(tmp_path, text, options, message):
    path = write(tmp_path / "d.csv", text)
    with pytest.raises(DataError) as e:
        get_task("custom", {"data_files": {"train": path}, **options}).load("train", None, seed=0)
    assert str(e.value).startswith(path) and message in str(e.value)


@pytest.mark.parametrize("checker, completion, answer, correct", [
    ("exact", " Paris is the capital. The answer is Paris.", "Paris", True),
    ("exact", " The answer is paris.", "Paris", False),
    ("exact", " The answer is Paris or Lyon.", "Paris", False),
    ("exact", " It is Paris.", "Paris", False),
    ("exact", " The answer is Paris.\nBut it could be Lyon.", "Paris", False),  # not at the end
    ("exact", "", "Paris", False),
    ("numeric", " The answer is 1,234.00.", "1234", True),
    ("numeric", " The answer is 123.", "12", False),
    ("numeric", " The answer is $18.", "18", True),
    ("math", r" The answer is $\frac{1}{2}$.", "0.5", True),
    ("math", r" The answer is $\frac{2}{4}$.", r"\frac{1}{2}", True),
    ("math", r" The answer is $\frac{1}{3}$.", r"\frac{1}{2}", False),
    ("math", r" The answer is $\sqrt{2}$.", r"\sqrt{2}", True),
    ("math", r" The answer is $x^2 + 2x + 1$.", r"(x+1)^2", True),
    ("math", " I do not know.", "1", False),
])
def test_custom_checkers(tmp_path, checker, completion, answer, correct):
    if checker == "math":
        pytest.importorskip("math_verify")
    path = write(tmp_path / "d.jsonl", json.dumps({"question": "?", "answer": answer}) + "\n")
    task = get_task("custom", {"data_files": {"train": path}, "checker": checker})
    (example,) = task.load("train", None, seed=0)
    assert task.is_correct(task.extract_answer(completion), example) == correct


def test_custom_checker_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(
        "calls = []\n"
        "def same_word(predicted, answer):\n"
        "    calls.append((predicted, answer))\n"
        "    return predicted.lower() == answer.lower()\n"
        "def one_arg(x):\n    return True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write(tmp_path / "d.jsonl", json.dumps({"question": "?", "answer": "Paris"}) + "\n")
    task = get_task("custom", {"data_files": {"train": data}, "checker": "my_checks:same_word"})
    (example,) = task.load("train", None, seed=0)
    assert task.is_correct(task.extract_answer("The answer is paris."), example)
    assert sys.modules["my_checks"].calls == [("paris", "Paris")]
    assert not task.is_correct(task.extract_answer("The answer is Rome."), example)
    for spec, message in [
        ("my_checks:missing", "has no missing"),
        ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
        ("my_checks:one_arg", "must take two arguments"),
        ("__import__('os').system('echo hacked'):x", "must look like package.module:function"),
        ("lambda p, a: True", "must look like package.module:function"),
        ("os.system('echo hacked')", "must be one of exact, numeric, letter, math"),
    ]:
        with pytest.raises(ConfigError, match=message):
            get_task("custom", {"data_files": {"train": data}, "checker": spec})


def test_custom_through_datasets_load_dataset(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "mydata"
    folder.mkdir()
    write(folder / "train.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(3)))
    write(folder / "test.jsonl", json.dumps({"question": "q9"}) + "\n")
    task = get_task("custom", {"dataset": str(folder), "checker": "numeric"})
    assert sorted(e.answer for e in task.load("train", None, seed=0)) == ["0", "1", "2"]
    with pytest.raises(DataError, match=r"split test, row 0: missing field 'answer'"):
        task.load("test", None, seed=0)


# --- reasoning-gym -------------------------------------------------------------------------

def test_reasoning_gym_splits_exemplars_and_scoring():
    pytest.importorskip("reasoning_gym")
    task = get_task("reasoning_gym", {"dataset": "gsm_symbolic", "fewshot": 2})
    train, test = task.load("train", 20, seed=3), task.load("test", 10, seed=3)
    assert len(train) == 20 and len(test) == 10
    assert not {e.question for e in train} & {e.question for e in test}
    assert task.load("train", 20, seed=3) == train and task.load("train", 20, seed=4) != train
    (x, rationale), _ = task.exemplars()
    assert x.question not in {e.question for e in train + test}
    assert rationale and "####" not in rationale  # the generator's own worked solution
    assert task.fewshot_prompt().count(f"<answer>{x.answer}</answer>\n\n") == 1
    e = test[0]
    assert task.prompt(e).endswith(f"Question: {e.question}\nAnswer:")
    assert task.prompt(e, hint=True).endswith(f"(Hint: the answer is {e.answer}.)\nAnswer:")
    assert task.is_correct(task.extract_answer(f" So it is this.\n<answer>{e.answer}"), e)
    assert not task.is_correct(task.extract_answer(f" <answer>{e.answer}1"), e)  # partial credit < 1
    fresh = get_task("reasoning_gym", {"dataset": "gsm_symbolic"})  # as on resume: nothing cached
    assert fresh.is_correct(e.answer, e) and not fresh.is_correct("-1", e)


def test_reasoning_gym_with_a_users_prompt_file(tmp_path):
    pytest.importorskip("reasoning_gym")
    mine = write(tmp_path / "mine.yaml", "- question: How many legs have 2 cats?\n  answer: '8'\n"
                 "  rationale: A cat has 4 legs, and 2 * 4 = 8.\n")
    task = get_task("reasoning_gym", {"dataset": "leg_counting", "prompt_file": mine})
    assert task.fewshot_prompt() == ("Question: How many legs have 2 cats?\n"
                                     "Answer: A cat has 4 legs, and 2 * 4 = 8.\n<answer>8</answer>\n\n")


@pytest.mark.parametrize("completion, expected", [
    (" 3 legs each.\n<answer>12</answer>", "12"),
    (" <answer> 12 ", "12"),  # the stop string </answer> is cut off the completion
    (" I guess <answer>7</answer> is wrong, so <answer>8", "8"),
    (" The answer is 12.", None),
    (" <answer></answer>", None),
    ("", None),
])
def test_reasoning_gym_extraction(completion, expected):
    pytest.importorskip("reasoning_gym")
    assert get_task("reasoning_gym", {"dataset": "leg_counting"}).extract_answer(completion) == expected


def test_reasoning_gym_own_config_and_bad_options():
    pytest.importorskip("reasoning_gym")
    task = get_task("reasoning_gym", {"dataset": "leg_counting", "config": {"min_animals": 1, "max_animals": 1}})
    assert all(re.search(r"you have \d+ [a-z]+\?$", e.question) for e in task.load("train", 10, seed=0))
    (x, rationale), *_ = task.exemplars()
    assert rationale.startswith("A dog has 4 legs")  # no worked solution: our hand-written one
    (x, rationale), *_ = get_task("reasoning_gym", {"dataset": "count_bits"}).exemplars()
    assert rationale == ""  # neither: the exemplar shows the answer format only
    with pytest.raises(ConfigError, match="needs task.options.dataset"):
        get_task("reasoning_gym")
    with pytest.raises(DataError, match="no such prompt file"):
        get_task("reasoning_gym", {"dataset": "leg_counting", "prompt_file": "/nope.yaml"})
    with pytest.raises(ConfigError, match="reasoning-gym has no task 'nope'"):
        get_task("reasoning_gym", {"dataset": "nope"})
    with pytest.raises(ConfigError, match="not a valid config for reasoning-gym task 'leg_counting'"):
        get_task("reasoning_gym", {"dataset": "leg_counting", "config": {"bogus": 1}})


# --- prompt files --------------------------------------------------------------------------

@pytest.mark.parametrize("name, options", [
    ("addition", {}), ("addition", {"format": "scratchpad", "digits_max": 10}),
    ("commonsenseqa", {"data_files": CSQA}), ("gsm8k", {"data_files": GSM}),
    ("custom", {"data_files": GSM}), ("custom", {"data_files": GSM, "choices_field": "c"}),
])
def test_shipped_exemplars_are_readable_and_right(name, options):
    task = get_task(name, options)
    exemplars = task.exemplars()
    assert 1 <= len(exemplars) <= 10
    for x, rationale in exemplars:
        completion = task.format_completion(x, rationale)
        assert task.is_correct(task.extract_answer(completion, x), x), completion
        if name == "addition" and options:
            a, b = map(int, x.question.split(" + "))
            assert rationale == scratchpad(a, b)


def test_a_users_prompt_file_replaces_the_exemplars(tmp_path):
    mine = write(tmp_path / "mine.yaml", "- question: Where is the sun at noon?\n"
                 "  choices: [up, down]\n  answer: A\n  rationale: At noon the sun is high.\n")
    task = get_task("commonsenseqa", {"data_files": CSQA, "prompt_file": mine})
    assert task.fewshot_prompt() == ("Q: Where is the sun at noon?\nAnswer Choices:\n(a) up\n(b) down\n"
                                     "A: At noon the sun is high. Therefore, the answer is up (a).\n\n")
    assert yaml.safe_load(Path(prompt_file("commonsenseqa.yaml")).read_text())[0]["answer"] == "B"


@pytest.mark.parametrize("text, message", [
    ("- question: 1 + 2\n  answer: '4'\n  rationale: 1 + 2 = 4.\n", "line 1: field 'answer' is '4', but 1 + 2 = 3"),
    ("- question: 1 + 2\n  answer: '3'\n", "line 1: missing field 'rationale'"),
    ("- question: 1 + 2\n  answer: '3'\n  rationale: ok\n- just text\n", "line 4: an exemplar is a mapping"),
    ("question: 1 + 2\n", "a non-empty YAML list of exemplars"),
    ("- [unclosed\n", "not valid YAML"),
])
def test_bad_prompt_file(tmp_path, text, message):
    path = write(tmp_path / "p.yaml", text)
    with pytest.raises(DataError) as e:
        get_task("addition", {"prompt_file": path})
    assert str(e.value).startswith(path) and message in str(e.value)


# --- the command line ----------------------------------------------------------------------

def test_tasks_lists_every_task_and_its_options(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in task_names():
        assert f"\n{name}: " in f"\n{out}"
    assert set(task_names()) == {"addition", "commonsenseqa", "custom", "gsm8k", "reasoning_gym"}
    for key in ("task.options.format (default 'plain')", "task.options.checker", "task.options.choices_field",
                "task.options.data_files", "task.options.fewshot (default 3)"):
        assert key in out


def test_show_prompt_prints_the_exact_text_with_and_without_the_hint(capsys):
    assert main(["show-prompt", "addition"]) == 0
    out = capsys.readouterr().out
    task = get_task("addition")
    example = task.load("train", 1, seed=0)[0]
    assert task.prompt(example) + "\n" in out and task.prompt(example, hint=True) + "\n" in out
    assert main(["show-prompt", "commonsenseqa", f"data_files.train={CSQA['train']}", "--index", "3"]) == 0
    out = capsys.readouterr().out
    plain, hinted = out.split("=== prompt with the hint")
    assert "(CORRECT)" not in plain and "(CORRECT)" in hinted.split("\n\n")[-1]
    assert main(["show-prompt", "addition", "format=scratchpad", "task.options.digits_max=3"]) == 0
    assert "<scratch>" in capsys.readouterr().out


def test_show_prompt_errors_are_one_line(capsys):
    assert main(["show-prompt", "addition", "format=latex"]) == 2
    assert "format must be plain or scratchpad" in capsys.readouterr().err
    assert main(["show-prompt", "gsm8k", f"data_files.train={GSM['train']}", "--index", "99"]) == 2
    assert "has only 8 questions" in capsys.readouterr().err
    assert main(["show-prompt", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_missing_optional_packages_say_what_to_install(monkeypatch, tmp_path):
    data = write(tmp_path / "d.jsonl", json.dumps({"question": "?", "answer": "1"}) + "\n")
    for module in ("math_verify", "reasoning_gym", "datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'selftaught\[math\]'"):
        get_task("custom", {"data_files": {"train": data}, "checker": "math"})
    with pytest.raises(ConfigError, match=r"pip install 'selftaught\[reasoning-gym\]'"):
        get_task("reasoning_gym", {"dataset": "leg_counting"})
    with pytest.raises(ConfigError, match=r"pip install 'selftaught\[datasets\]'"):
        get_task("gsm8k").load("train", None, seed=0)


def test_commonsenseqa_in_the_hubs_schema_through_datasets(tmp_path, monkeypatch):
    """tau/commonsense_qa flattens the schema (question a string, choices as two lists); read
    here from a local folder through the same datasets.load_dataset call the Hub name uses."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "csqa"
    folder.mkdir()
    row = {"id": "h1", "question": "Where do fish live?", "question_concept": "fish",
           "choices": {"label": ["A", "B", "C"], "text": ["tree", "water", "sky"]}, "answerKey": "B"}
    write(folder / "train.jsonl", json.dumps(row) + "\n")
    write(folder / "validation.jsonl", json.dumps({**row, "id": "h2", "answerKey": ""}) + "\n")
    task = get_task("commonsenseqa", {"dataset": str(folder)})
    (e,) = task.load("train", None, seed=0)
    assert e == Example("h1", "Where do fish live?", "B", (("A", "tree"), ("B", "water"), ("C", "sky")))
    with pytest.raises(DataError, match=r"split validation, row 0: field 'answerKey' is empty"):
        task.load("validation", None, seed=0)
