"""The evidence: a validation split for every task that decides early stopping and the selected
iteration (the held-out split is only reported), and the hint-leak guard on every task's hint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from selftaught.config import ConfigError, load_config
from selftaught.store import RunStore
from selftaught.tasks import Example, get_task

DATA = Path(__file__).parent / "data"
HAS_REASONING_GYM = importlib.util.find_spec("reasoning_gym") is not None
CUSTOM = {"data_files": {"train": str(DATA / "custom_train.jsonl"), "test": str(DATA / "custom_test.jsonl")},
          "checker": "numeric"}
# task name, options, held-out split, training questions, validation questions
SPLITS = [
    ("addition", {"digits_min": 1, "digits_max": 2}, "test", 256, 100),
    ("addition", {"format": "scratchpad", "digits_max": 3}, "test", 64, 32),
    ("commonsenseqa", {"data_files": {"train": str(DATA / "commonsenseqa_train.jsonl"),
                                      "validation": str(DATA / "commonsenseqa_dev.jsonl")}}, "validation", 8, 2),
    ("gsm8k", {"data_files": {"train": str(DATA / "gsm8k_train.jsonl"),
                              "test": str(DATA / "gsm8k_test.jsonl")}}, "test", 6, 2),
    ("custom", CUSTOM, "test", 6, 2),
    ("custom", CUSTOM, "test", None, 3),  # the whole training split: validation is its tail
    pytest.param("reasoning_gym", {"dataset": "basic_arithmetic"}, "test", 40, 20,
                 marks=pytest.mark.skipif(not HAS_REASONING_GYM, reason="needs reasoning-gym")),
]


@pytest.mark.parametrize("name, options, held_out, train_size, validation_size", SPLITS)
def test_validation_is_disjoint_from_train_and_held_out(name, options, held_out, train_size, validation_size):
    task = get_task(name, options)
    train, validation = task.load_train_and_validation(train_size, validation_size, seed=0)
    test = task.load(held_out, None if name in ("commonsenseqa", "gsm8k", "custom") else 50, seed=0)
    assert len(validation) == validation_size and train
    if train_size is not None:
        assert len(train) == train_size
        assert train == task.load("train", train_size, seed=0)  # the same training draw as before
    for a, b in ((validation, train), (validation, test)):
        assert not {e.id for e in a} & {e.id for e in b}
        assert not {e.question for e in a} & {e.question for e in b}


def test_the_tasks_own_dev_split_can_be_the_validation_split(tmp_path):
    files = dict(CUSTOM["data_files"], dev=str(DATA / "custom_test.jsonl"))
    task = get_task("custom", {**CUSTOM, "data_files": files})
    train, validation = task.load_train_and_validation(None, 2, seed=0, validation_split="dev")
    assert len(train) == 8 and len(validation) == 2
    with pytest.raises(ConfigError, match="must differ from the held-out split"):
        load_config(overrides=["eval.validation_split=test"])
    with pytest.raises(ConfigError, match="has no split 'nope'"):
        task.load_train_and_validation(None, 2, seed=0, validation_split="nope")


def test_too_few_training_questions_for_validation_is_a_clear_error():
    task = get_task("gsm8k", {"data_files": {"train": str(DATA / "gsm8k_train.jsonl")}})
    with pytest.raises(ConfigError, match="lower one of them"):
        task.load_train_and_validation(8, 2, seed=0)


class FakeStages:
    """Every stage of Algorithm 1 as a no-op; evaluate gives the accuracies a test sets."""

    test_accuracy: list[float] = []
    validation_accuracy: list[float] = []

    def __init__(self, config, task, store):
        self.evaluated: list[int] = []

    def generate_rationales(self, n, model, train):
        return []

    def failures(self, train, rationales):
        return train

    def rationalize(self, n, model, failures):
        return []

    def filter_correct(self, n, train, rationales, rationalized):
        return []

    def fine_tune(self, n, base_model, dataset, steps=None):
        return f"M{n}"

    def evaluate(self, n, model, held_out, validation=None):
        assert validation and not {e.id for e in validation} & {e.id for e in held_out}
        return {"iteration": n, "accuracy": self.test_accuracy[n],
                "validation_accuracy": self.validation_accuracy[n]}

    def prune_checkpoints(self, history):
        pass

    def say(self, text):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("test_accuracy, validation_accuracy, iterations_run", [
    # held-out accuracy falls (it would stop the run at iteration 1), validation rises: no stop
    ([0.5, 0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5], 4),
    # held-out accuracy rises, validation does not: stop after patience (1) iteration
    ([0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1], 1),
])
def test_early_stop_reads_only_the_validation_split(tmp_path, monkeypatch, test_accuracy, validation_accuracy,
                                                     iterations_run):
    import selftaught.loop as loop

    monkeypatch.setattr(FakeStages, "test_accuracy", test_accuracy)
    monkeypatch.setattr(FakeStages, "validation_accuracy", validation_accuracy)
    monkeypatch.setattr(loop, "Stages", FakeStages)
    monkeypatch.setattr(loop, "resolve_base_model", lambda model: "M")
    config = load_config(overrides=["task.train_size=16", "eval.size=16", "eval.validation_size=16",
                                    "loop.iterations=4", "loop.patience=1", "task.options.digits_max=1"])
    history = loop.star(config, RunStore(tmp_path))
    assert [m["iteration"] for m in history] == list(range(iterations_run + 1))


def test_selected_iteration_is_best_on_validation_earliest_on_a_tie():
    from selftaught.loop import selected

    history = [{"iteration": 0, "accuracy": 0.9, "validation_accuracy": 0.9},
               {"iteration": 1, "accuracy": 0.2, "validation_accuracy": 0.6},
               {"iteration": 2, "accuracy": 0.8, "validation_accuracy": 0.5},
               {"iteration": 3, "accuracy": 0.1, "validation_accuracy": 0.6}]
    assert selected(history)["iteration"] == 1  # never iteration 0, never by held-out accuracy
    assert selected(history[:1])["iteration"] == 0


# --- the hint-leak guard ------------------------------------------------------------------------

def _leak_cases():
    """(task, example, completions that repeat the hint, a clean completion) for every task's hint."""
    plain = get_task("addition")
    e = plain.load("train", 1, seed=0)[0]
    yield plain, e, [" The hint says 13. The answer is 13.", " (Hint: the answer is 13.) The answer is 13.",
                     " As the HINT gives, 5 + 8 = 13. The answer is 13."], " 5 + 8 = 13. The answer is 13."
    pad = get_task("addition", {"format": "scratchpad"})
    e = pad.load("train", 1, seed=0)[0]
    a, b = e.question.split(" + ")
    from selftaught.tasks.addition import scratchpad
    yield pad, e, [f"\nthe answer is {' '.join(e.answer)}.\n{' '.join(e.answer)}",
                   f"\n(hint: the answer is {' '.join(e.answer)}.)\n{' '.join(e.answer)}"], \
        f"\n{scratchpad(int(a), int(b))}\n{' '.join(e.answer)}"
    csqa = get_task("commonsenseqa", {"data_files": {"train": str(DATA / "commonsenseqa_train.jsonl")}})
    e = csqa.load("train", 1, seed=0)[0]
    text = dict(e.choices)[e.answer]
    yield csqa, e, [f" {text} (CORRECT) is right. Therefore, the answer is {text} ({e.answer.lower()}).",
                    f" The choice marked correct is {text}. Therefore, the answer is ({e.answer.lower()}).",
                    f" {text} ( correct ). Therefore, the answer is ({e.answer.lower()}).",
                    f" The hint points to {text}. Therefore, the answer is ({e.answer.lower()})."], \
        f" People who want this go to {text}; it is correct to say so. Therefore, the answer is {text} ({e.answer.lower()})."
    gsm = get_task("gsm8k", {"data_files": {"train": str(DATA / "gsm8k_train.jsonl")}})
    e = gsm.load("train", 1, seed=0)[0]
    yield gsm, e, [f" The answer is given in parentheses: ({e.answer}).\n#### {e.answer}",
                   f" Using the hint, it is {e.answer}.\n#### {e.answer}"], \
        f" Adding everything up gives {e.answer}.\n#### {e.answer}"
    custom = get_task("custom", CUSTOM)
    e = custom.load("train", 1, seed=0)[0]
    yield custom, e, [f" (Hint: the answer is {e.answer}.) The answer is {e.answer}."], \
        f" Working it out gives {e.answer}. The answer is {e.answer}."
    choice = get_task("custom", {"data_files": {"train": str(DATA / "custom_choices.csv")},
                                 "choices_field": ["A", "B", "C", "D"]})
    e = choice.load("train", 1, seed=0)[0]
    yield choice, e, [f" {dict(e.choices)[e.answer]} (correct). The answer is ({e.answer.lower()})."], \
        f" It has to be {dict(e.choices)[e.answer]}. The answer is ({e.answer.lower()})."
    if HAS_REASONING_GYM:
        rg = get_task("reasoning_gym", {"dataset": "basic_arithmetic"})
        e = rg.load("train", 1, seed=0)[0]
        yield rg, e, [f" (Hint: the answer is {e.answer}.)\n<answer>{e.answer}",
                      f" The hint tells me.\n<answer>{e.answer}"], f" Computing it: {e.answer}.\n<answer>{e.answer}"


@pytest.mark.parametrize("case", list(_leak_cases()), ids=lambda c: f"{c[0].name}-{c[1].id}")
def test_completions_that_repeat_the_hint_are_caught(case):
    task, example, hostile, clean = case
    assert task.hint_text(example).strip() in task.format_question(example, hint=True)
    assert task.hint_text(example).strip() not in task.format_question(example, hint=False)
    for completion in hostile:
        assert task.leaks_hint(completion, example), completion
    assert not task.leaks_hint(clean, example)
    assert task.is_correct(task.extract_answer(clean, example), example)  # a fair clean case


@pytest.mark.parametrize("fewshot, expected", [
    (True, {(0, "eval"): True, (1, "generations"): True, (1, "eval"): True, (2, "generations"): True,
            (2, "rationalizations"): True, (2, "validation"): True}),
    # the original code's second switch: the fine-tuned M_n (n >= 1) get the bare question
    (False, {(0, "eval"): True, (1, "generations"): True, (1, "rationalizations"): True, (1, "eval"): False,
             (1, "validation"): False, (2, "generations"): False, (2, "rationalizations"): False}),
])
def test_fewshot_prompt_for_finetuned_models_is_a_switch(tmp_path, fewshot, expected):
    from selftaught.stages import Stages

    config = load_config(overrides=[f"loop.fewshot_for_finetuned={str(fewshot).lower()}"])
    task = get_task("addition")
    stages = Stages(config, task, RunStore(tmp_path))
    e = task.load("train", 1, seed=0)[0]
    for (n, stage), with_fewshot in expected.items():
        hint = stage == "rationalizations"
        prompt = stages._prompt(n, stage, e, hint)
        assert prompt == (task.prompt(e, hint) if with_fewshot else task.format_question(e, hint)), (n, stage)


def test_run_with_several_seeds_makes_one_folder_per_seed(tmp_path, monkeypatch, capsys):
    import selftaught.loop as loop
    from selftaught.cli import main

    monkeypatch.setattr(FakeStages, "test_accuracy", [0.5, 0.6, 0.7])
    monkeypatch.setattr(FakeStages, "validation_accuracy", [0.5, 0.9, 0.8])
    monkeypatch.setattr(loop, "Stages", FakeStages)
    monkeypatch.setattr(loop, "resolve_base_model", lambda model: "M")
    out = tmp_path / "runs"
    assert main(["run", f"output_dir={out}", "task.train_size=16", "eval.size=16", "eval.validation_size=16",
                 "loop.iterations=2", "task.options.digits_max=1", "--seeds", "3", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["seed-3", "seed-4"]
    assert [RunStore.open(out / f"seed-{s}").config()["seed"] for s in (3, 4)] == [3, 4]
    printed = capsys.readouterr().out
    assert "selected on validation: 60.0% ± 0.0 over seeds 3 4" in printed  # iteration 1, not 2
    assert "last iteration: 70.0% ± 0.0" in printed
