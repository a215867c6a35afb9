"""The STaR outer loop, Algorithm 1 of Zelikman et al. (2022), one call per line.

Caching, batching and bookkeeping live in ``stages.py`` and ``store.py``; this file is the
algorithm, and beside it the paper's direct fine-tuning baseline (Table 1), the same steps
without rationales.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from selftaught.config import RunConfig
from selftaught.models import resolve_base_model
from selftaught.stages import Stages
from selftaught.store import RunStore
from selftaught.tasks import Task, get_task

Callback = Callable[[dict], "bool | None"]  # sees an iteration's metrics; True stops the run


def run(config: RunConfig, store: RunStore, task: Task | None = None, callbacks: Sequence[Callback] = ()) -> list[dict]:
    """The run ``config.method`` names; one metrics record per iteration.

    ``task`` replaces the one ``config.task`` names (the Python API's in-memory data and
    checker); each of ``callbacks`` sees every iteration's metrics and stops the run by
    returning True."""
    return {"star": star, "direct_finetune": direct_finetune}[config.method](config, store, task, callbacks)


def star(config: RunConfig, store: RunStore, task: Task | None = None, callbacks: Sequence[Callback] = ()) -> list[dict]:
    """Run (or resume) STaR; return one metrics record per iteration, 0 being the base model."""
    task = task or get_task(config.task.name, config.task.options)
    train, validation = load_train_and_validation(task, config)  # D = {(x_i, y_i)}; never trained on: validation
    held_out = task.load(config.eval.split, config.eval.size, config.seed)  # only reported
    base_model = resolve_base_model(config.model)  # M
    stages = Stages(config, task, store)

    model = base_model  # M_0
    history = [stages.evaluate(0, model, held_out, validation)]  # few-shot accuracy of M
    for n in range(1, config.loop.iterations + 1):
        rationales = stages.generate_rationales(n, model, train)  # (r̂_i, ŷ_i) ← M_{n-1}(x_i)
        failures = stages.failures(train, rationales)
        rationalized = (  # (r̂^rat_i, ŷ^rat_i) ← M_{n-1}(add_hint(x_i, y_i))
            stages.rationalize(n, model, failures) if config.loop.rationalize else []
        )
        dataset = stages.filter_correct(n, train, rationales, rationalized)  # D_n ∪ D^rat_n
        start = base_model if config.loop.restart_from_base else model  # continue: M_{n-1} (B-STaR)
        model = stages.fine_tune(n, start, dataset)  # M_n ← train(M, ·): the ORIGINAL M by default
        history.append(stages.evaluate(n, model, held_out, validation))  # accuracy of M_n
        stages.prune_checkpoints(history)  # loop.keep_checkpoints=selected: M_n and the best stay
        # Every callback sees every iteration, the one an early stop ends on included.
        if any([callback(history[-1]) for callback in callbacks]):  # a callback asked to stop
            break
        if n < config.loop.iterations and plateaued(history, config.loop.patience, config.loop.min_improvement):
            stages.say(f"validation accuracy has not improved for {config.loop.patience} "
                       "iterations: stopping early")
            break
    stages.close()
    return history


def direct_finetune(config: RunConfig, store: RunStore, task: Task | None = None, callbacks: Sequence[Callback] = ()) -> list[dict]:
    """Baseline (Table 1): fine-tune M to answer every training question, with no rationale."""
    task = task or get_task(config.task.name, config.task.options)
    train, validation = load_train_and_validation(task, config)
    held_out = task.load(config.eval.split, config.eval.size, config.seed)
    base_model = resolve_base_model(config.model)
    stages = Stages(config, task, store)  # method=direct_finetune: direct prompts throughout

    history = [stages.evaluate(0, base_model, held_out, validation)]  # few-shot direct accuracy of M
    dataset = stages.answers(1, train)  # (x_i, y_i) for all i: the whole training set
    model = stages.fine_tune(1, base_model, dataset, steps=config.direct_finetune_steps())
    history.append(stages.evaluate(1, model, held_out, validation))
    for callback in callbacks:  # its only fine-tuned iteration; nothing is left to stop
        callback(history[-1])
    stages.close()
    return history


def load_train_and_validation(task, config: RunConfig):
    """D and the validation questions (never trained on, never the held-out split)."""
    return task.load_train_and_validation(config.task.train_size, config.eval.validation_size,
                                          config.seed, config.eval.validation_split)


def plateaued(history: list[dict], patience: int, min_improvement: float) -> bool:
    """True when the last ``patience`` iterations did not beat the best before them, on the
    validation split: the held-out (test) accuracy never decides anything."""
    accuracy = [m.get("validation_accuracy") for m in history]
    if patience <= 0 or len(history) <= patience or None in accuracy:
        return False  # a run recorded before validation existed cannot be judged
    best_before = max(accuracy[:-patience])
    return all(a <= best_before + min_improvement for a in accuracy[-patience:])


def selected(history: list[dict]) -> dict:
    """The iteration a run hands over: the fine-tuned M_n (n >= 1) best on validation, the
    earliest on a tie; iteration 0 while there is no other."""
    tuned = [m for m in history if m["iteration"] > 0] or history
    return max(tuned, key=lambda m: (m.get("validation_accuracy", 0.0), -m["iteration"]))


def check_data(config: RunConfig, task: Task) -> None:
    """Load every split the run will use, so bad data stops it before the run folder exists."""
    task.check_split(config.eval.split)
    if config.eval.validation_split is not None:
        task.check_split(config.eval.validation_split)
    task.load(config.eval.split, config.eval.size, config.seed)
    load_train_and_validation(task, config)


def default_output_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
