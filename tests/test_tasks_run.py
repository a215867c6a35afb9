"""A full `selftaught run` on every task with a tiny test model: the real loop, end to end.

conftest's tiny model knows addition's plain format only, so it is right sometimes on the
custom task given that format. For the other tasks `format_model` is trained a few seconds on
each task's hint prompts (§3.2) with their right completions, so that rationalization succeeds
and the run goes through filtering, fine-tuning and evaluation. Every run must get there: a run
that keeps nothing fails the test (it would prove nothing about the stages after filtering).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from selftaught.cli import main
from selftaught.config import TrainingConfig, load_config
from selftaught.tasks import get_task
from selftaught.tasks.steps import steps_hold
from selftaught.training import TrainExample, get_trainer

DATA = Path(__file__).parent / "data"
HAS_REASONING_GYM = importlib.util.find_spec("reasoning_gym") is not None
TASKS = {  # task name -> the run's task options (key=value)
    "addition": ["task.options.format=scratchpad", "task.options.digits_max=2"],
    "commonsenseqa": [
        "task.name=commonsenseqa", "eval.split=validation",
        f"task.options.data_files.train={DATA / 'commonsenseqa_train.jsonl'}",
        f"task.options.data_files.validation={DATA / 'commonsenseqa_dev.jsonl'}",
        f"task.options.prompt_file={DATA / 'commonsenseqa_prompts.yaml'}",
    ],
    "gsm8k": [
        "task.name=gsm8k",
        f"task.options.data_files.train={DATA / 'gsm8k_train.jsonl'}",
        f"task.options.data_files.test={DATA / 'gsm8k_test.jsonl'}",
        f"task.options.prompt_file={DATA / 'gsm8k_prompts.yaml'}",
    ],
    "reasoning_gym": [
        "task.name=reasoning_gym", "task.options.dataset=basic_arithmetic", "task.options.fewshot=2",
        "task.options.config={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}",
    ],
}


@pytest.fixture(scope="module")
def format_model(tmp_path_factory, random_model) -> str:
    """conftest's random model, trained briefly to answer each task's hint prompts for the 8
    training questions of these runs, so that rationalization has a chance (4 s on an idle CPU)."""
    examples = []
    for name, options in TASKS.items():
        if name == "reasoning_gym" and not HAS_REASONING_GYM:
            continue
        config = load_config(overrides=[o for o in options if o.startswith("task.")])
        task = get_task(config.task.name, config.task.options)
        for e in task.load("train", 8, seed=0):
            examples.append(TrainExample(task.prompt(e, hint=True),
                                         task.format_completion(e, "") + task.exemplar_end))
    trainer = get_trainer(TrainingConfig(learning_rate=5e-3, warmup_steps=5, batch_size=8,
                                         micro_batch_size=8, bf16=False), seed=0)
    out = tmp_path_factory.mktemp("format-model")
    trainer.train(random_model, examples, steps=80, out_dir=Path(out))
    return str(out)


def run(model: str, out: Path, *options: str) -> int:
    return main([
        "run", f"model.name_or_path={model}", f"output_dir={out}", "model.dtype=float32",
        "task.train_size=6", "eval.validation_size=2", "eval.size=4", "loop.iterations=1", "loop.patience=0",
        "generation.batch_size=8", "generation.max_new_tokens=32",
        "training.start_steps=2", "training.warmup_steps=1", "training.batch_size=4",
        "training.micro_batch_size=4", "training.learning_rate=1e-3", *options,
    ])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_ran(rc: int, err: str, out: Path, hint_mark: str) -> list[dict]:
    """A whole iteration: generated, rationalized, kept something, fine-tuned, evaluated on the
    validation and held-out splits; returns the generation records."""
    assert rc == 0, err
    metrics = read_jsonl(out / "metrics.jsonl")
    generated = read_jsonl(out / "iteration-01" / "generations.jsonl")
    rationalized = read_jsonl(out / "iteration-01" / "rationalizations.jsonl")
    assert metrics[0]["iteration"] == 0 and metrics[0]["held_out"] == 4  # the base model
    assert len(generated) == 6
    # loop.step_checker=auto: on the arithmetic tasks a right answer needs true equations too
    config = load_config(out / "config.yaml")
    checks = get_task(config.task.name, config.task.options).states_equations
    accepted = lambda r: (r["correct"] and not r.get("leaks_hint")  # noqa: E731
                          and (not checks or steps_hold(r["output"])))
    assert {r["id"] for r in rationalized} == {r["id"] for r in generated if not accepted(r)}
    assert all(hint_mark not in r["prompt"] for r in generated)
    assert all(hint_mark in r["prompt"].split("\n\n")[-1] for r in rationalized)
    assert [m["iteration"] for m in metrics] == [0, 1]
    kept = read_jsonl(out / "iteration-01" / "train.jsonl")
    assert len(kept) == sum(accepted(r) for r in generated + rationalized) > 0  # so it fine-tuned
    assert metrics[1]["kept_generation"] + metrics[1]["kept_rationalization"] == len(kept)
    assert all(hint_mark not in r["prompt"] for r in kept)  # §3.2: trained without the hint
    assert len(read_jsonl(out / "iteration-01" / "eval.jsonl")) == 4
    validation = read_jsonl(out / "iteration-01" / "validation.jsonl")
    assert len(validation) == 2 and not {r["id"] for r in validation} & {r["id"] for r in generated}
    assert (out / "iteration-01" / "checkpoint").is_dir()
    assert (out / "iteration-01" / "train.json").is_file()  # the fine-tune finished
    return generated + rationalized


def test_full_run_on_custom_data(tiny_model, tmp_path):
    out = tmp_path / "run"
    rc = run(tiny_model, out, "task.name=custom",
             f"task.options.data_files.train={DATA / 'custom_train.jsonl'}",
             f"task.options.data_files.test={DATA / 'custom_test.jsonl'}",
             "task.options.checker=numeric", f"task.options.prompt_file={DATA / 'custom_prompts.yaml'}")
    assert rc == 0  # the same format as addition's: the tiny model is right sometimes
    assert_ran(rc, "", out, "(Hint: the answer is")


@pytest.mark.parametrize("name, hint_mark, in_prompt, end", [
    ("addition", "(Hint: the answer is", "Input:\n", "\n\n"),
    ("commonsenseqa", "(CORRECT)", "\nAnswer Choices:\n(a) ", "\n\n"),
    ("gsm8k", "? (", "\n#### ", "\n\n"),  # the hint: "... left? (26)"
    ("reasoning_gym", "(Hint: the answer is", "\nAnswer: Multiplication comes first", "</answer>"),
])
def test_full_run_on_each_task(format_model, tmp_path, capsys, name, hint_mark, in_prompt, end):
    if name == "reasoning_gym" and not HAS_REASONING_GYM:
        pytest.skip("needs reasoning-gym: pip install 'selftaught[reasoning-gym]'")
    out = tmp_path / "run"
    rc = run(format_model, out, *TASKS[name])
    records = assert_ran(rc, capsys.readouterr().err, out, hint_mark)
    assert in_prompt in records[0]["prompt"]
    # what is kept ends with the stop string the model learns to emit
    assert all(r["completion"].endswith(end) for r in read_jsonl(out / "iteration-01" / "train.jsonl"))
    if name == "addition":  # the paper's Figure 4 view: accuracy per digit count
        groups = read_jsonl(out / "metrics.jsonl")[0]["accuracy_by_group"]
        assert groups and set(groups) <= {"1 digit", "2 digits"}
