"""`selftaught report` and `report_to` on tiny-model runs: plots, the HTML page, the trackers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from selftaught.cli import main
from selftaught.compare import read_table
from selftaught.report import find_subject, plot_accuracy, plot_groups, rationale_pairs
from helpers import HELD_OUT, metrics, read_jsonl, tiny_overrides
from test_compare import finished_comparison

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def comparison(tmp_path_factory, tiny_model) -> Path:
    return finished_comparison(tmp_path_factory, tiny_model)


def test_compare_writes_the_report_with_every_plot(comparison):
    report = comparison / "report"
    for name in ("accuracy", "kept", "groups", "loss"):
        data = (report / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, name
    assert (report / "report.html").is_file()


def test_html_is_self_contained(comparison):
    page = (comparison / "report" / "report.html").read_text()
    assert not re.search(r"https?://|<link|<script|@import|url\(", page, re.I)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    for row in read_table(comparison):  # the table, with the runs' numbers
        assert f"<td>{row.method}</td><td class=num>{row.accuracy:.1%} ({row.correct}/{row.held_out})</td>" in page


def test_accuracy_plot_draws_the_baselines_at_their_accuracy(comparison):
    subject = find_subject(comparison)
    ax = plot_accuracy(subject).axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    star, norat, direct = (metrics(comparison / n) for n in ("star", "star-no-rationalization", "direct-finetune"))
    assert lines["STaR"] == [100 * star[n]["accuracy"] for n in sorted(star)]
    assert lines["STaR without rationalization"] == [100 * norat[n]["accuracy"] for n in sorted(norat)]
    for method, m in (("Few-shot direct", direct[0]), ("Few-shot CoT", star[0]), ("Direct fine-tuned", direct[1])):
        (label,) = [k for k in lines if k.startswith(method + " (")]
        assert lines[label] == [100 * m["accuracy"]] * 2  # a horizontal line


def test_group_heatmap_holds_metrics_accuracy_by_group(comparison):
    ax = plot_groups(find_subject(comparison)).axes[0]
    values = ax.images[0].get_array()
    star = metrics(comparison / "star")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1 digit"]
    for n in sorted(star):
        assert values[n, 0] == pytest.approx(100 * star[n]["accuracy_by_group"]["1 digit"])


def test_rationales_pair_the_base_model_with_the_last_iteration(comparison):
    run = find_subject(comparison).run
    pairs = rationale_pairs(run)
    assert pairs and len(pairs) <= HELD_OUT
    base = {r["id"]: r for r in read_jsonl(comparison / "star" / "iteration-00" / "eval.jsonl")}
    last = {r["id"]: r for r in read_jsonl(comparison / "star" / "iteration-02" / "eval.jsonl")}
    page = (comparison / "report" / "report.html").read_text()
    for b, f in pairs:
        assert b == base[b["id"]] and f == last[b["id"]]
    changed = [b["correct"] != f["correct"] for b, f in pairs]
    assert changed == sorted(changed, reverse=True)  # changed answers come first
    assert len({b["question"] for b, _ in pairs}) == len(pairs)
    assert "Rationales: base model vs. iteration 2" in page


def test_report_of_a_run_without_comparison(tmp_path, tiny_model):
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(tiny_model, run, "loop.iterations=1")]) == 0
    assert main(["report", str(run), "--output", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Comparison" not in page and page.count("data:image/png;base64,") == 4
    labels = [line.get_label() for line in plot_accuracy(find_subject(run)).axes[0].get_lines()]
    assert labels == ["STaR"]  # no baselines to draw


def test_report_of_something_else_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is neither a run folder (config.yaml) nor a comparison" in capsys.readouterr().err


def test_tensorboard_gets_every_iteration_and_loss(comparison):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in ("star", "direct-finetune"):
        events = EventAccumulator(str(comparison / run / "tensorboard"))
        events.Reload()
        accuracy = [(e.step, e.value) for e in events.Scalars("iteration/accuracy")]
        assert accuracy == [(n, pytest.approx(m["accuracy"])) for n, m in sorted(metrics(comparison / run).items())]
        losses = json.loads((comparison / run / "iteration-01" / "train.json").read_text())["losses"]
        assert [e.value for e in events.Scalars("train/loss_iteration_01")] == pytest.approx(losses)


def test_a_missing_tracker_package_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    args = tiny_overrides(str(tmp_path / "no-model-needed"), tmp_path / "run", "report_to=wandb")
    assert main(["run", *args]) == 2
    assert "report_to=wandb needs the wandb package, which is not installed: pip install 'selftaught[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_wandb_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from selftaught.tracking import open_trackers

    monkeypatch.setenv("WANDB_MODE", "offline")  # a real W&B run, written to disk only
    monkeypatch.setenv("WANDB_SILENT", "true")
    trackers = open_trackers(["wandb"], {"seed": 0}, tmp_path)
    run, logged = trackers.trackers[0].run, []
    log = run.log
    monkeypatch.setattr(run, "log", lambda data, **kw: (logged.append(data), log(data, **kw)))
    trackers.metrics({"iteration": 1, "accuracy": 0.75, "accuracy_by_group": {"1 digit": 0.5}})
    trackers.losses(1, [2.0, 1.0])
    trackers.close()
    assert logged == [
        {"iteration": 1, "iteration/accuracy": 0.75, "iteration/accuracy_by_group/1 digit": 0.5},
        {"train/step": 1, "train/loss_iteration_01": 2.0},
        {"train/step": 2, "train/loss_iteration_01": 1.0},
    ]
    (history,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = history.read_bytes()
    assert b"iteration/accuracy_by_group/1 digit" in data and b"train/loss_iteration_01" in data
