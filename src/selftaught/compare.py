"""The paper's comparison (Table 1) on any task: STaR against its baselines, from one config.

Three runs on the same splits and base model make the five rows::

    COMPARISON/star/                      STaR; its iteration 0 is few-shot chain-of-thought
    COMPARISON/star-no-rationalization/   STaR with loop.rationalize=false
    COMPARISON/direct-finetune/           fine-tuning on answers only; iteration 0 is few-shot direct
    COMPARISON/comparison.{md,csv,json}   the table

A run folder that already exists is resumed, so finished runs cost nothing and interrupted
ones pick up where they stopped; one made with a different config is an error.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selftaught.config import ConfigError, RunConfig, from_dict
from selftaught.store import RunStore

# Run folder -> what it changes in the config the user gave.
RUNS: dict[str, dict[str, Any]] = {
    "star": {"method": "star", "loop": {"rationalize": True}},
    "star-no-rationalization": {"method": "star", "loop": {"rationalize": False}},
    "direct-finetune": {"method": "direct_finetune"},
}


@dataclass(frozen=True)
class Method:
    name: str  # as the paper's Table 1 names it
    run: str  # the run folder it is read from
    final: bool  # the run's last iteration (else its iteration 0: the base model, few-shot)


METHODS = (
    Method("Few-shot direct", "direct-finetune", final=False),
    Method("Few-shot CoT", "star", final=False),
    Method("Direct fine-tuned", "direct-finetune", final=True),
    Method("STaR without rationalization", "star-no-rationalization", final=True),
    Method("STaR", "star", final=True),
)

# Keys that change what gets logged, not what is computed: a reused run may differ in them.
IGNORED_KEYS = ("report_to", "output_dir")


@dataclass
class Row:
    method: str
    accuracy: float  # held-out, 0-1, exactly the run's metrics record
    correct: int
    held_out: int
    train_used: float  # % of the training set fine-tuned on (Table 1's "Train Data Used")
    iterations: int
    steps: int | None  # optimizer steps of the model evaluated
    wall_seconds: float  # measured stage time of the run up to this iteration
    run: str  # run folder / iteration the numbers come from


def run_configs(config: RunConfig, root: Path) -> dict[str, RunConfig]:
    """The config of each run: the user's, with the method's changes and its own folder."""
    out = {}
    for name, changes in RUNS.items():
        data = config.to_dict()
        data["method"] = changes["method"]
        data["loop"].update(changes.get("loop", {}))
        data["output_dir"] = str(root / name)
        out[name] = from_dict(RunConfig, data)
    return out


def compare(config: RunConfig, root: Path, say=print) -> list[Row]:
    """Run (or reuse) every run the comparison needs, then write the table in ``root``."""
    from selftaught.loop import run

    root = Path(root)
    configs = run_configs(config, root)
    for name, cfg in configs.items():  # refuse a mismatched folder before any run starts
        check_reusable(root / name, cfg)
    stores = {name: open_run(root / name, cfg) for name, cfg in configs.items()}
    try:
        for name, cfg in configs.items():
            finished = _finished(stores[name], cfg)
            say(f"{name}: {'reusing finished' if finished else 'running'} run in {stores[name].root}")
            start = time.perf_counter()
            run(cfg, stores[name])
            if not finished:
                say(f"{name}: done in {time.perf_counter() - start:.0f}s")
    finally:
        for store in stores.values():  # their locks: one writer per run folder
            store.close()
    rows = table(root)
    write_table(rows, root)
    return rows


def open_run(path: Path, config: RunConfig) -> RunStore:
    """The run folder for ``config``: created, or an existing one made with the same config."""
    if check_reusable(path, config):
        return RunStore.open(path, lock=True)  # one writer per run folder
    return RunStore.create(path, config.to_dict(), overwrite=False)


def check_reusable(path: Path, config: RunConfig) -> bool:
    """True if ``path`` holds a run of ``config``, False if it holds nothing; else an error."""
    if not (path.exists() and any(path.iterdir())):
        return False
    saved = RunStore.open(path).config()
    diff = _differences(_comparable(_with_defaults(saved)), _comparable(config.to_dict()))
    if diff:
        raise ConfigError(
            f"{path} holds a run made with a different config ({'; '.join(diff[:3])}); "
            "delete that folder or compare into another output_dir"
        )
    return True


def table(root: Path) -> list[Row]:
    """One row per method, read from the runs' metrics.jsonl."""
    rows = []
    for method in METHODS:
        store = RunStore.open(Path(root) / method.run)
        history = sorted(store.metrics(), key=lambda m: m["iteration"])
        if not history:
            raise ConfigError(f"{store.root} has no finished iteration yet; run the comparison first")
        m = history[-1] if method.final else history[0]
        upto = [h for h in history if h["iteration"] <= m["iteration"]]
        rows.append(Row(
            method=method.name, accuracy=m["accuracy"], correct=m["correct"], held_out=m["held_out"],
            train_used=100 * m.get("train_fraction", 0.0), iterations=m["iteration"],
            steps=m.get("steps"), wall_seconds=round(sum(h["iteration_seconds"] for h in upto), 2),
            run=f"{method.run}/iteration-{m['iteration']:02d}",
        ))
    return rows


def write_table(rows: list[Row], root: Path) -> None:
    root = Path(root)
    (root / "comparison.md").write_text(markdown(rows))
    (root / "comparison.csv").write_text(to_csv(rows))
    (root / "comparison.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))


def markdown(rows: list[Row]) -> str:
    lines = [
        "| method | held-out accuracy | train data used | iterations | fine-tune steps | wall time | run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.accuracy:.1%} ({r.correct}/{r.held_out}) | {r.train_used:.1f}% | "
            f"{r.iterations} | {r.steps if r.steps is not None else '-'} | "
            f"{duration(r.wall_seconds)} | {r.run} |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "accuracy", "correct", "held_out", "train_used_percent",
                     "iterations", "steps", "wall_seconds", "run"])
    for r in rows:
        writer.writerow([r.method, repr(r.accuracy), r.correct, r.held_out, repr(r.train_used),
                         r.iterations, "" if r.steps is None else r.steps, r.wall_seconds, r.run])
    return buf.getvalue()


def read_table(root: Path) -> list[Row] | None:
    """The table a comparison wrote in ``root``, or None if there is none."""
    path = Path(root) / "comparison.json"
    if not path.is_file():
        return None
    return [Row(**r) for r in json.loads(path.read_text())]


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _finished(store: RunStore, config: RunConfig) -> bool:
    """True when the run recorded its last iteration (or STaR's early stop ended it there)."""
    from selftaught.loop import plateaued

    history = sorted(store.metrics(), key=lambda m: m["iteration"])
    if not history:
        return False
    last = 1 if config.method == "direct_finetune" else config.loop.iterations
    if history[-1]["iteration"] >= last:
        return True
    return config.method == "star" and history[-1]["iteration"] > 0 and plateaued(
        history, config.loop.patience, config.loop.min_improvement)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the keys added since it was written, so only real changes differ."""
    try:
        return from_dict(RunConfig, copy.deepcopy(saved)).to_dict()
    except ConfigError:
        return saved


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key in IGNORED_KEYS:
        data.pop(key, None)
    return data


def _differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
    return out
