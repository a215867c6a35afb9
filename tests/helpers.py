"""Shared by the tests that run the loop on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

TRAIN, HELD_OUT = 24, 8


def tiny_overrides(model: str, out: Path, *extra: str) -> list[str]:
    """A two-iteration run of seconds on the tiny model; later overrides win."""
    return [
        f"model.name_or_path={model}", f"output_dir={out}", "model.dtype=float32",
        f"task.train_size={TRAIN}", "task.options.digits_max=1", f"eval.size={HELD_OUT}", f"eval.validation_size={HELD_OUT}",
        "loop.iterations=2", "loop.patience=0",
        "generation.batch_size=8", "generation.max_new_tokens=24",
        "training.start_steps=2", "training.warmup_steps=1", "training.batch_size=4",
        "training.micro_batch_size=4", "training.learning_rate=1e-3",
        # The tiny model's sums are often right through false arithmetic ("3 + 4 = 8. The answer
        # is 7."): with the step checker on, a run without rationalization can keep nothing.
        # The checker is tested in test_steps.py and, on by default, in test_tasks_run.py.
        "loop.step_checker=none", *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def metrics(run: Path) -> dict[int, dict]:
    return {m["iteration"]: m for m in read_jsonl(run / "metrics.jsonl")}
