"""``selftaught report``: a run folder (or a comparison) as PNG plots and one HTML page.

Everything is read from the run folder, nothing is recomputed::

    accuracy.png   held-out accuracy per iteration; few-shot and direct fine-tune baselines as lines;
                   over several seeds, every seed's curve and their mean with a band
    kept.png       training questions kept per iteration: found by generation / by rationalization
    groups.png     accuracy per group (digits, for arithmetic) and iteration: Figure 4's view
    loss.png       training loss of every fine-tune
    report.html    all of it, plus the tables and rationales, in one self-contained file
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selftaught.compare import METHODS, VARIANT_METHODS, Row, duration, read_table
from selftaught.store import RunFolderError, RunStore

RATIONALES_SHOWN = 8


@dataclass
class Run:
    name: str
    store: RunStore
    config: dict[str, Any]
    history: list[dict[str, Any]]

    @classmethod
    def load(cls, root: Path) -> "Run":
        store = RunStore.open(root)
        history = sorted(store.metrics(), key=lambda m: m["iteration"])
        if not history:
            raise RunFolderError(f"{root} has no finished iteration yet (metrics.jsonl is empty)")
        config = store.config()
        variant = {m.run: m.name for m in VARIANT_METHODS}
        if Path(root).name in variant:  # a run of `compare --variants`
            name = variant[Path(root).name]
        elif config.get("method") == "direct_finetune":
            name = "Direct fine-tuned"
        elif config.get("loop", {}).get("rationalize", True):
            name = "STaR"
        else:
            name = "STaR without rationalization"
        return cls(name, store, config, history)

    def losses(self) -> dict[int, list[float]]:
        out = {}
        for m in self.history[1:]:
            summary = self.store.root / f"iteration-{m['iteration']:02d}" / "train.json"
            if summary.is_file():
                out[m["iteration"]] = json.loads(summary.read_text())["losses"]
        return out

    def eval_records(self, n: int) -> list[dict[str, Any]]:
        return self.store.read(n, "eval") if (self.store.root / f"iteration-{n:02d}" / "eval.jsonl").is_file() else []


@dataclass
class Subject:
    """What a report is about: one run, and the comparison around it when there is one."""

    run: Run
    root: Path  # where the report goes by default
    table: list[Row] | None = None
    others: dict[str, Run] = field(default_factory=dict)  # the comparison's other runs
    seed_runs: dict[str, Run] = field(default_factory=dict)  # STaR in every seed-N folder

    def baseline(self, method: str) -> Row | None:
        return next((r for r in self.table or [] if r.method == method), None)


def find_subject(path: Path) -> Subject:
    """``path`` is a comparison folder (report on its STaR run) or a run folder (in one or not)."""
    path = Path(path)
    seeds = sorted(path.glob("seed-*/star/metrics.jsonl"), key=lambda p: _natural_key(p.parent.parent.name))
    if (path / "comparison.json").is_file() and seeds and not (path / "star").is_dir():
        root, run_dir = path, seeds[0].parent  # a comparison over seeds: the first seed's runs
    elif (path / "comparison.json").is_file():
        root, run_dir = path, path / "star"
    elif (path / "config.yaml").is_file():
        root, run_dir = path, path
    else:
        raise RunFolderError(
            f"{path} is neither a run folder (config.yaml) nor a comparison (comparison.json); "
            "give the output_dir of `selftaught run` or `selftaught compare`"
        )
    run = Run.load(run_dir)
    table = read_table(path) or read_table(run_dir.parent)
    subject = Subject(run, root, table)
    if root != run_dir and len(seeds) > 1:
        subject.seed_runs = {p.parent.parent.name: Run.load(p.parent) for p in seeds}
    if table is not None:
        for method in {m.run for m in METHODS + VARIANT_METHODS} - {run_dir.name}:
            other = run_dir.parent / method
            if (other / "metrics.jsonl").is_file():
                subject.others[method] = Run.load(other)
    return subject


def render(path: Path, out_dir: Path | None = None) -> Path:
    """Write the PNGs and report.html for ``path``; return the HTML page's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    subject = find_subject(path)
    out = Path(out_dir) if out_dir else subject.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, plot in (("accuracy", plot_accuracy), ("kept", plot_kept),
                       ("groups", plot_groups), ("loss", plot_loss)):
        fig = plot(subject)
        if fig is not None:
            fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
            figures[name] = out / f"{name}.png"
            matplotlib.pyplot.close(fig)
    page = out / "report.html"
    page.write_text(page_html(subject, figures))
    return page


# --- plots ---------------------------------------------------------------------------------
BASELINE_STYLE = {
    "Few-shot direct": dict(color="tab:gray", linestyle=":"),
    "Few-shot CoT": dict(color="tab:orange", linestyle="--"),
    "Direct fine-tuned": dict(color="tab:green", linestyle="-."),
}


def plot_accuracy(s: Subject):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    beside = ("star-no-rationalization", *(m.run for m in VARIANT_METHODS))  # drawn next to STaR
    runs = [s.run] + [s.others[name] for name in beside if name in s.others]
    if s.seed_runs:  # every seed's STaR curve, their mean, and a band of ± one sd
        runs = list(s.seed_runs.values())
        for name, run in s.seed_runs.items():
            ax.plot([m["iteration"] for m in run.history], [100 * m["accuracy"] for m in run.history],
                    color="tab:blue", alpha=0.35, linewidth=1, marker=".", label=f"STaR, {name}")
        depth = min(len(r.history) for r in runs)  # iterations every seed reached
        by_iteration = [[100 * r.history[i]["accuracy"] for r in runs] for i in range(depth)]
        mean = [sum(v) / len(v) for v in by_iteration]
        sd = [(sum((a - m) ** 2 for a in v) / (len(v) - 1)) ** 0.5 for v, m in zip(by_iteration, mean)]
        ax.plot(range(depth), mean, marker="o", color="tab:blue", label=f"STaR, mean of {len(runs)} seeds")
        ax.fill_between(range(depth), [m - d for m, d in zip(mean, sd)], [m + d for m, d in zip(mean, sd)],
                        color="tab:blue", alpha=0.15, label="± 1 sd over seeds")
    for run, color in zip([] if s.seed_runs else runs, ("tab:blue", "tab:purple", "tab:red", "tab:brown", "tab:olive")):
        x = [m["iteration"] for m in run.history]
        ax.plot(x, [100 * m["accuracy"] for m in run.history], marker="o", color=color, label=run.name)
    sampled = [m for m in s.run.history if "maj_at_k" in m]  # eval.samples = k > 1
    if sampled:
        k, x = sampled[0]["eval_samples"], [m["iteration"] for m in sampled]
        ax.plot(x, [100 * m["maj_at_k"] for m in sampled], marker="s", ls="--", color="tab:green",
                label=f"{s.run.name}, majority of {k} samples (maj@{k})")
        ax.plot(x, [100 * m["pass_at_k"] for m in sampled], marker="^", ls=":", color="tab:orange",
                label=f"{s.run.name}, any of {k} samples right (pass@{k})")
    for method, style in BASELINE_STYLE.items():
        row = s.baseline(method)
        if row is not None:
            ax.axhline(100 * row.accuracy, label=f"{method} ({row.accuracy:.1%})", **style)
    last = max(m["iteration"] for r in runs for m in r.history)
    ax.set_xticks(range(last + 1))
    ax.set_xlabel("iteration (0 = base model, few-shot)")
    ax.set_ylabel("held-out accuracy (%)")
    held_out = s.run.history[0]["held_out"]
    ax.set_title(f"Held-out accuracy ({held_out} questions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside, never over, the lines
    return fig


def plot_kept(s: Subject):
    import matplotlib.pyplot as plt

    its = [m for m in s.run.history if m["iteration"] > 0]
    if not its:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [m["iteration"] for m in its]
    gen = [m.get("kept_generation", 0) + m.get("kept_answers", 0) for m in its]
    rat = [m.get("kept_rationalization", 0) for m in its]
    direct = s.run.name == "Direct fine-tuned"
    ax.bar(x, gen, color="tab:blue", label="answers, no rationale" if direct else "found by generation")
    ax.bar(x, rat, bottom=gen, color="tab:orange", label="found by rationalization")
    for xi, g, r, m in zip(x, gen, rat, its):
        ax.annotate(f"{m['train_fraction']:.0%} of train", (xi, g + r), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    train_size = s.run.config.get("task", {}).get("train_size")
    if train_size:
        ax.axhline(train_size, color="black", linewidth=0.8, linestyle=":",
                   label=f"training questions ({train_size})")
    ax.set_xticks(x)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training questions kept")
    ax.set_title("Rationales kept for fine-tuning")
    ax.set_ylim(0, 1.3 * max(train_size or 0, max(g + r for g, r in zip(gen, rat))))
    ax.legend(fontsize=8, loc="upper left", ncols=3)  # above the bars, which end at the train size
    return fig


def group_order(name: str) -> tuple[float, str]:
    """'2 digits' before '10 digits': by the leading number, then by name."""
    found = re.match(r"\d+", name)
    return (int(found.group()) if found else math.inf, name)


def plot_groups(s: Subject):
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(f"iteration {m['iteration']}" + (" (few-shot)" if m["iteration"] == 0 else ""),
             m["accuracy_by_group"]) for m in s.run.history]
    for name, method in (("direct-finetune", "Few-shot direct"), ("direct-finetune", "Direct fine-tuned"),
                         ("star-no-rationalization", "STaR without rationalization")):
        if name in s.others:
            history = s.others[name].history
            rows.append((method, (history[0] if method == "Few-shot direct" else history[-1])["accuracy_by_group"]))
    groups = sorted({g for _, by in rows for g in by}, key=group_order)
    if groups == ["all"]:
        return None  # the task has no groups: the accuracy plot says it all
    values = np.array([[by.get(g, np.nan) * 100 for g in groups] for _, by in rows])
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 3.5, 0.45 * len(rows) + 1.6))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(groups)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center",
                        color="white" if values[i, j] < 60 else "black", fontsize=9)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    if len(rows) > len(s.run.history):  # separate the baselines from the run's own iterations
        ax.axhline(len(s.run.history) - 0.5, color="white", linewidth=3)
    ax.set_title("Held-out accuracy (%) by group")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    return fig


def plot_loss(s: Subject):
    import matplotlib
    import matplotlib.pyplot as plt

    losses = s.run.losses()
    direct = s.others["direct-finetune"].losses() if "direct-finetune" in s.others else {}
    if not losses and not direct:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("Blues")
    for k, (n, curve) in enumerate(sorted(losses.items())):
        ax.plot(range(1, len(curve) + 1), curve, color=cmap(0.4 + 0.6 * (k + 1) / len(losses)),
                label=f"iteration {n}")
    for curve in direct.values():
        ax.plot(range(1, len(curve) + 1), curve, color="tab:green", linestyle="-.",
                label="direct fine-tune (answers only)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (rationale + answer tokens)")
    ax.set_title("Fine-tuning loss (each iteration starts again from the base model)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


# --- rationales ----------------------------------------------------------------------------
def rationale_pairs(run: Run, k: int = RATIONALES_SHOWN) -> list[tuple[dict, dict]]:
    """(base model, last iteration) eval records for the same questions: the changes first."""
    last = run.history[-1]["iteration"]
    if last == 0:
        return []
    base = {r["id"]: r for r in run.eval_records(0) if r.get("sample", 0) == 0}
    pairs, seen = [], set()
    for r in run.eval_records(last):
        if r["id"] in base and r.get("sample", 0) == 0 and r["question"] not in seen:
            seen.add(r["question"])  # a generated held-out set can repeat a question: show it once
            pairs.append((base[r["id"]], r))
    kinds = [  # (base right, final right): fixed, broken, both right, both wrong
        [p for p in pairs if not p[0]["correct"] and p[1]["correct"]],
        [p for p in pairs if p[0]["correct"] and not p[1]["correct"]],
        [p for p in pairs if p[0]["correct"] and p[1]["correct"]],
        [p for p in pairs if not p[0]["correct"] and not p[1]["correct"]],
    ]
    quota = (3, 2, 2, 1)
    shown = [p for kind, q in zip(kinds, quota) for p in kind[:q]]
    leftovers = [p for kind, q in zip(kinds, quota) for p in kind[q:]]
    return (shown + leftovers)[:k]


# --- the page ------------------------------------------------------------------------------
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1050px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; } img { max-width: 100%; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.88em; }
.ok { color: #1a7f37; font-weight: bold; } .bad { color: #cf222e; font-weight: bold; }
"""

CAPTIONS = {
    "accuracy": "Held-out accuracy of M_n after each iteration n (greedy decoding); horizontal "
                "lines are the baselines of the comparison, on the same held-out questions. With several "
                "seeds: each seed's STaR curve, their mean and a ± 1 sd band.",
    "kept": "Training questions whose rationale reached the right answer, kept for the next "
            "fine-tune: found unaided (generation) or with the answer as a hint (rationalization, §3.2).",
    "groups": "Held-out accuracy per group (number of digits for arithmetic), as in Figure 4.",
    "loss": "Training loss per optimizer step; each iteration fine-tunes the original base model.",
}


def page_html(s: Subject, figures: dict[str, Path]) -> str:
    cfg = s.run.config
    task, model = cfg.get("task", {}), cfg.get("model", {})
    first, last = s.run.history[0], s.run.history[-1]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>selftaught report: {_e(s.run.store.root.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>selftaught report: {_e(str(s.root))}</h1>",
        f'<p class="meta">task <b>{_e(task.get("name"))}</b> {_e(_options(task.get("options")))} · '
        f'base model <b>{_e(model.get("name_or_path"))}</b> · {task.get("train_size")} training '
        f'questions · {first["held_out"]} held-out questions ({_e(cfg.get("eval", {}).get("split"))} '
        f'split) · seed {cfg.get("seed")}</p>',
        f'<p>Held-out accuracy <b>{first["accuracy"]:.1%}</b> few-shot (iteration 0) → '
        f'<b>{last["accuracy"]:.1%}</b> after iteration {last["iteration"]}'
        + (f'; the iteration selected on validation, {last["selected_iteration"]}, has '
           f'<b>{last["selected_accuracy"]:.1%}</b>' if "selected_iteration" in last else "") + ".</p>",
    ]
    if s.table:
        parts += ["<h2>Comparison</h2>", _comparison_html(s.table)]
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(CAPTIONS[name])}</figcaption></figure>")
    parts += ["<h2>Iterations</h2>", _iterations_html(s.run.history)]
    pairs = rationale_pairs(s.run)
    if pairs:
        parts += [f"<h2>Rationales: base model vs. iteration {last['iteration']}</h2>",
                  "<p>The same held-out questions answered by the base model (few-shot) and by "
                  "the last iteration's model; changed answers first.</p>", _rationales_html(pairs)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _comparison_html(rows: list[Row]) -> str:
    seeds = rows[0].seeds if rows else None
    head = ("<tr><th>method</th><th>held-out accuracy (selected on validation)</th><th>95% interval</th>"
            "<th>last iteration</th><th>STaR − this (McNemar p)</th><th>train data used</th>"
            "<th>iteration</th><th>fine-tune steps</th><th>wall time</th><th>run</th></tr>")
    body = "".join(
        f"<tr><td>{_e(r.method)}</td><td class=num>{r.accuracy:.1%}"
        f"{f' ± {100 * r.std:.1f}' if r.std is not None else ''} ({r.correct}/{r.held_out})</td>"
        f"<td class=num>{_interval(r)}</td>"
        f"<td class=num>{'-' if r.last_accuracy is None else f'{r.last_accuracy:.1%}'}</td>"
        f"<td class=num>{'-' if r.margin is None else f'{100 * r.margin:+.1f} pts (p = {r.p_value:.3g})'}</td>"
        f"<td class=num>{r.train_used:.1f}%</td><td class=num>{r.iterations}</td>"
        f"<td class=num>{'-' if r.steps is None else r.steps}</td>"
        f"<td class=num>{duration(r.wall_seconds)}</td><td>{_e(r.run)}</td></tr>"
        for r in rows
    )
    note = (f"<p>Mean ± sd over seeds {', '.join(map(str, seeds))}; " if seeds else "<p>One seed; ")
    note += ("95% bootstrap interval over the held-out questions; McNemar's exact test on the "
             "same questions.</p>")
    return f"{note}<table>{head}{body}</table>"


def _interval(r: Row) -> str:
    return "-" if r.ci_low is None else f"{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}%"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _iterations_html(history: list[dict[str, Any]]) -> str:
    head = ("<tr><th>iteration</th><th>accuracy</th><th>validation</th><th>kept: generation</th>"
            "<th>kept: rationalization</th><th>train data used</th><th>steps</th>"
            "<th>final loss</th><th>time</th></tr>")
    rows = []
    for m in history:
        trained = m["iteration"] > 0
        rows.append(
            f"<tr><td class=num>{m['iteration']}</td>"
            f"<td class=num>{m['accuracy']:.1%} ({m['correct']}/{m['held_out']})</td>"
            f"<td class=num>{_validation(m, history[-1].get('selected_iteration'))}</td>"
            + "".join(f"<td class=num>{v}</td>" for v in (
                m.get("kept_generation", 0) + m.get("kept_answers", 0) if trained else "-",
                m.get("kept_rationalization", "-") if trained else "-",
                f"{m['train_fraction']:.1%}" if trained else "-",
                m.get("steps", "-") if trained else "-",
                f"{m['final_loss']:.4f}" if trained and m.get("final_loss") is not None else "-",
                duration(m["iteration_seconds"]),
            )) + "</tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _validation(m: dict[str, Any], chosen: int | None) -> str:
    if "validation_accuracy" not in m:
        return "-"
    mark = " (selected)" if chosen == m["iteration"] else ""
    return f"{m['validation_accuracy']:.1%}{mark}"


def _rationales_html(pairs: list[tuple[dict, dict]]) -> str:
    head = "<tr><th>question</th><th>answer</th><th>base model</th><th>last iteration</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(b['question'])}</td><td class=num>{_e(b['answer'])}</td>"
        f"<td>{_verdict(b)}<pre>{_e(b['output'].strip())}</pre></td>"
        f"<td>{_verdict(f)}<pre>{_e(f['output'].strip())}</pre></td></tr>"
        for b, f in pairs
    )
    return f"<table>{head}{rows}</table>"


def _verdict(r: dict) -> str:
    return '<span class="ok">right</span>' if r["correct"] else '<span class="bad">wrong</span>'


def _options(options: dict | None) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")" if options else ""


def _e(value: Any) -> str:
    return html.escape(str(value))
