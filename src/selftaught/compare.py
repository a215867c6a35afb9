"""The paper's comparison (Table 1) on any task: STaR against its baselines, from one config.

Three runs on the same splits and base model make the five rows::

    COMPARISON/star/                      STaR; its iteration 0 is few-shot chain-of-thought
    COMPARISON/star-no-rationalization/   STaR with loop.rationalize=false
    COMPARISON/direct-finetune/           fine-tuning on answers only; iteration 0 is few-shot direct
    COMPARISON/comparison.{md,csv,json}   the table

With ``variants=True`` (``selftaught compare --variants``) three more runs, STaR's descendants,
add a row each after STaR's, on the same splits::

    COMPARISON/star-k-samples/            4 samples at temperature 0.7, up to 4 distinct kept (RFT)
    COMPARISON/star-continue/             M_n fine-tuned from M_{n-1} (B-STaR, OpenRLHF)
    COMPARISON/b-star/                    B-STaR's temperature, chosen each iteration on a probe set

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

# `--variants`: STaR's descendants (README "Beyond the paper"), each a change to the STaR run.
# ReST-EM draws 32 samples and keeps up to 10; 4 and 4 keep the run's generation cost within
# about 4x of STaR's on 2 CPU cores. Only full fine-tuning can continue from M_{n-1}.
VARIANT_RUNS: dict[str, dict[str, Any]] = {
    "star-k-samples": {"method": "star", "loop": {"rationalize": True, "keep_per_question": 4},
                       "generation": {"samples_per_question": 4, "temperature": 0.7}},
    "star-continue": {"method": "star", "loop": {"rationalize": True, "restart_from_base": False}},
    "b-star": {"method": "star", "loop": {"rationalize": True, "keep_per_question": 4,
                                          "auto_temperature": [0.5, 0.7, 1.0]},
               "generation": {"samples_per_question": 4, "temperature": 0.7}},
}

VARIANT_METHODS = (
    Method("STaR, 4 samples at T=0.7, up to 4 distinct kept (RFT)", "star-k-samples", final=True),
    Method("STaR continuing from M_{n-1}", "star-continue", final=True),
    Method("STaR at B-STaR's temperature (0.5, 0.7 or 1.0), 4 samples", "b-star", final=True),
)
STAR = METHODS[-1]  # every other row's margin is measured against it

# Keys that change what gets logged or kept on disk, not what is computed: a reused run may
# differ in them.
IGNORED_KEYS = ("report_to", "output_dir", "loop.keep_checkpoints")


@dataclass
class Row:
    method: str
    accuracy: float  # held-out, 0-1, of the iteration selected on validation; mean over seeds
    correct: int  # summed over seeds
    held_out: int  # summed over seeds
    train_used: float  # % of the training set fine-tuned on (Table 1's "Train Data Used")
    iterations: int  # the selected iteration (of the first seed)
    steps: int | None  # optimizer steps of the model evaluated
    wall_seconds: float  # measured stage time of the run up to this iteration
    run: str  # run folder / iteration the numbers come from
    # Added with seeds and intervals; defaults keep an older comparison.json readable.
    std: float | None = None  # standard deviation over seeds (None: one seed)
    ci_low: float | None = None  # 95% bootstrap interval of `accuracy`
    ci_high: float | None = None
    last_accuracy: float | None = None  # held-out accuracy of the last iteration, mean over seeds
    seeds: list[int] | None = None
    per_seed: list[float] | None = None  # `accuracy` of each seed
    margin: float | None = None  # STaR's accuracy minus this row's, mean over seeds (0-1)
    only_star: int | None = None  # questions STaR gets right and this row wrong (all seeds)
    only_this: int | None = None  # ...and the other way round
    p_value: float | None = None  # McNemar's exact test of the margin
    # eval.samples = k > 1: self-consistency of the same iteration, mean over seeds (0-1)
    eval_samples: int | None = None
    maj_at_k: float | None = None  # majority vote of k sampled answers
    pass_at_k: float | None = None  # at least one of k right (unbiased estimator)


def run_configs(config: RunConfig, root: Path, variants: bool = False) -> dict[str, RunConfig]:
    """The config of each run: the user's, with the method's changes and its own folder."""
    out = {}
    for name, changes in {**RUNS, **(VARIANT_RUNS if variants else {})}.items():
        data = config.to_dict()
        data["method"] = changes["method"]
        data["loop"].update(changes.get("loop", {}))
        data["generation"].update(changes.get("generation", {}))
        data["output_dir"] = str(root / name)
        out[name] = from_dict(RunConfig, data)
    return out


def seed_folders(root: Path, seeds: list[int] | None) -> dict[int | None, Path]:
    """Where each seed's runs go: ``root`` itself for one unnamed seed, else ``root/seed-N``."""
    root = Path(root)
    return {None: root} if not seeds else {s: root / f"seed-{s}" for s in seeds}


def with_seed(config: RunConfig, seed: int | None) -> RunConfig:
    if seed is None:
        return config
    return from_dict(RunConfig, {**config.to_dict(), "seed": seed})


def compare(config: RunConfig, root: Path, say=print, seeds: list[int] | None = None,
            variants: bool = False) -> list[Row]:
    """Run (or reuse) every run the comparison needs, once per seed, then write the table in
    ``root``; ``variants`` adds the runs and rows of STaR's descendants."""
    from selftaught.loop import run

    root = Path(root)
    plans = {folder: run_configs(with_seed(config, seed), folder, variants)
             for seed, folder in seed_folders(root, seeds).items()}
    for folder, configs in plans.items():  # refuse a mismatched folder before any run starts
        for name, cfg in configs.items():
            check_reusable(folder / name, cfg)
    for folder, configs in plans.items():
        stores = {name: open_run(folder / name, cfg) for name, cfg in configs.items()}
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
    rows = table(root, seeds, variants)
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


def table(root: Path, seeds: list[int] | None = None, variants: bool = False) -> list[Row]:
    """One row per method, read from the runs' metrics.jsonl and held-out predictions: the
    iteration selected on validation (mean ± sd over seeds, 95% bootstrap interval), the last
    iteration, and each other row's margin below STaR with McNemar's paired test."""
    from selftaught.significance import bootstrap_interval, mcnemar, mean_std

    methods = METHODS + (VARIANT_METHODS if variants else ())
    folders = seed_folders(root, seeds)
    picks = {seed: [_pick(method, folder, "" if seed is None else f"{folder.name}/") for method in methods]
             for seed, folder in folders.items()}
    star = methods.index(STAR)
    rows = []
    for i, method in enumerate(methods):
        mine = [picks[seed][i] for seed in folders]
        accuracy, std = mean_std([p.metrics["accuracy"] for p in mine])
        low, high = bootstrap_interval([p.correct for p in mine])
        first = mine[0].metrics
        upto = [h for h in mine[0].history if h["iteration"] <= first["iteration"]]
        row = Row(
            method=method.name, accuracy=accuracy, correct=sum(p.metrics["correct"] for p in mine),
            held_out=sum(p.metrics["held_out"] for p in mine),
            train_used=100 * sum(p.metrics.get("train_fraction", 0.0) for p in mine) / len(mine),
            iterations=first["iteration"], steps=first.get("steps"),
            wall_seconds=round(sum(h["iteration_seconds"] for h in upto), 2),
            run=f"{mine[0].where}/iteration-{first['iteration']:02d}",
            std=std, ci_low=low, ci_high=high,
            last_accuracy=mean_std([p.last["accuracy"] for p in mine])[0],
            seeds=[s for s in folders if s is not None] or None,
            per_seed=[p.metrics["accuracy"] for p in mine],
        )
        if all("maj_at_k" in p.metrics for p in mine):
            row.eval_samples = first["eval_samples"]
            row.maj_at_k = mean_std([p.metrics["maj_at_k"] for p in mine])[0]
            row.pass_at_k = mean_std([p.metrics["pass_at_k"] for p in mine])[0]
        if i != star:
            stars = [picks[seed][star] for seed in folders]
            row.margin = mean_std([a.metrics["accuracy"] - b.metrics["accuracy"] for a, b in zip(stars, mine)])[0]
            pairs = [pair for a, b in zip(stars, mine) for pair in _paired(a, b)]
            row.only_star, row.only_this, row.p_value = mcnemar(pairs)
        rows.append(row)
    return rows


@dataclass
class _Pick:
    """One method's numbers in one seed's runs."""

    where: str  # run folder, relative to the comparison
    history: list[dict[str, Any]]
    metrics: dict[str, Any]  # the iteration the row reports (selected on validation)
    last: dict[str, Any]
    predictions: dict[str, bool]  # held-out question id -> right?

    @property
    def correct(self) -> list[float]:
        return [float(v) for v in self.predictions.values()]


def _pick(method: Method, folder: Path, prefix: str = "") -> _Pick:
    from selftaught.loop import selected

    store = RunStore.open(Path(folder) / method.run)
    history = sorted(store.metrics(), key=lambda m: m["iteration"])
    if not history:
        raise ConfigError(f"{store.root} has no finished iteration yet; run the comparison first")
    if not method.final:
        m = last = history[0]
    else:  # a run made before validation existed has no choice to offer: its last iteration
        last = history[-1]
        m = selected(history) if "validation_accuracy" in last else last
    predictions = {r["id"]: bool(r["correct"]) for r in store.read(m["iteration"], "eval")}
    return _Pick(f"{prefix}{method.run}", history, m, last, predictions)


def _paired(a: _Pick, b: _Pick) -> list[tuple[bool, bool]]:
    if set(a.predictions) != set(b.predictions):
        raise ConfigError(f"{a.where} and {b.where} were evaluated on different held-out questions; "
                          "a paired test needs the same ones (same seed, eval.split and eval.size)")
    return [(a.predictions[q], b.predictions[q]) for q in a.predictions]


def write_table(rows: list[Row], root: Path) -> None:
    root = Path(root)
    (root / "comparison.md").write_text(markdown(rows))
    (root / "comparison.csv").write_text(to_csv(rows))
    (root / "comparison.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))


def markdown(rows: list[Row]) -> str:
    seeds = rows[0].seeds if rows else None
    k = next((r.eval_samples for r in rows if r.eval_samples), None)
    lines = [
        f"Held-out accuracy of the iteration selected on validation, mean ± sd over "
        f"{len(seeds) if seeds else 1} seed{'s' if seeds and len(seeds) > 1 else ''}"
        f"{' (' + ', '.join(map(str, seeds)) + ')' if seeds else ''}, with its 95% bootstrap "
        "interval over the held-out questions; STaR's accuracy minus this row's on the same questions, with "
        "McNemar's exact p-value." + (f" maj@{k} and pass@{k}: {k} answers sampled per question "
                                      "(eval.samples), same iteration." if k else ""),
        "",
        "| method | held-out accuracy (selected) | 95% interval | last iteration | STaR − this | p (McNemar) "
        + (f"| maj@{k} | pass@{k} " if k else "")
        + "| train data used | iteration | fine-tune steps | wall time | run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | " + ("---: | ---: | " if k else "")
        + "---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        spread = f" ± {100 * r.std:.1f}" if r.std is not None else ""
        interval = f"{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}" if r.ci_low is not None else "-"
        last = f"{r.last_accuracy:.1%}" if r.last_accuracy is not None else "-"
        margin = (f"{100 * r.margin:+.1f} pts ({r.only_star} vs {r.only_this})" if r.margin is not None else "-")
        p = f"{r.p_value:.3g}" if r.p_value is not None else "-"
        sampled = "".join(f"{v:.1%} | " if v is not None else "- | " for v in (r.maj_at_k, r.pass_at_k)) if k else ""
        lines.append(
            f"| {r.method} | {100 * r.accuracy:.1f}%{spread} ({r.correct}/{r.held_out}) | {interval} | "
            f"{last} | {margin} | {p} | {sampled}{r.train_used:.1f}% | "
            f"{r.iterations} | {r.steps if r.steps is not None else '-'} | "
            f"{duration(r.wall_seconds)} | {r.run} |"
        )
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["method", "accuracy", "std", "ci_low", "ci_high", "last_accuracy", "margin", "only_star",
              "only_this", "p_value", "eval_samples", "maj_at_k", "pass_at_k", "correct", "held_out", "train_used_percent", "iterations", "steps",
              "wall_seconds", "seeds", "per_seed", "run"]


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    blank = lambda v: "" if v is None else repr(v) if isinstance(v, float) else v  # noqa: E731
    for r in rows:
        writer.writerow([r.method, repr(r.accuracy), blank(r.std), blank(r.ci_low), blank(r.ci_high),
                         blank(r.last_accuracy), blank(r.margin), blank(r.only_star), blank(r.only_this),
                         blank(r.p_value), blank(r.eval_samples), blank(r.maj_at_k), blank(r.pass_at_k), r.correct, r.held_out, repr(r.train_used), r.iterations,
                         "" if r.steps is None else r.steps, r.wall_seconds,
                         " ".join(map(str, r.seeds or [])), " ".join(repr(a) for a in r.per_seed or []), r.run])
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
        *sections, name = key.split(".")
        section = data
        for part in sections:
            section = section.get(part, {})
        section.pop(name, None)
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
