"""`selftaught compare` on the tiny model: the baselines are real runs, the table is their metrics."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from selftaught.cli import main
from selftaught.compare import METHODS, compare, run_configs
from selftaught.config import ConfigError, load_config
from selftaught.stages import Stages
from selftaught.tasks import get_task
from selftaught.training.transformers_backend import TransformersTrainer

from helpers import HELD_OUT, TRAIN, metrics, read_jsonl, tiny_overrides


@pytest.fixture
def calls(monkeypatch):
    """Every generation stage computed and every fine-tune, with the run folder it was for."""
    log: dict[str, list] = {"generate": [], "train": []}
    complete, train = Stages._complete, TransformersTrainer.train

    def spy_complete(self, n, stage, *args, **kwargs):
        if not self.store.done(n, stage):
            log["generate"].append((self.store.root.name, n, stage))
        return complete(self, n, stage, *args, **kwargs)

    def spy_train(self, base_model, examples, steps, out_dir):
        log["train"].append((Path(out_dir).parent.parent.name, steps))
        return train(self, base_model, examples, steps, out_dir)

    monkeypatch.setattr(Stages, "_complete", spy_complete)
    monkeypatch.setattr(TransformersTrainer, "train", spy_train)
    return log


_FINISHED: dict[str, Path] = {}


def finished_comparison(tmp_path_factory, tiny_model) -> Path:
    """One tiny comparison for the session (test_report reads it too); tests copy before changing it."""
    if tiny_model not in _FINISHED:
        out = tmp_path_factory.mktemp("compare") / "cmp"
        assert main(["compare", *tiny_overrides(tiny_model, out, "report_to=tensorboard")]) == 0
        _FINISHED[tiny_model] = out
    return _FINISHED[tiny_model]


@pytest.fixture
def comparison(tmp_path_factory, tiny_model) -> Path:
    return finished_comparison(tmp_path_factory, tiny_model)


def test_table_has_every_method_with_the_runs_numbers(comparison):
    star, norat, direct = (metrics(comparison / n) for n in ("star", "star-no-rationalization", "direct-finetune"))
    expected = {  # method -> the metrics record it must be read from
        "Few-shot direct": direct[0], "Few-shot CoT": star[0], "Direct fine-tuned": direct[1],
        # the iteration selected on validation; the last one is reported beside it
        "STaR without rationalization": norat[norat[max(norat)]["selected_iteration"]],
        "STaR": star[star[max(star)]["selected_iteration"]],
    }
    assert [m.name for m in METHODS] == list(expected)
    with (comparison / "comparison.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == list(expected)
    md = (comparison / "comparison.md").read_text()
    for method, m in expected.items():
        row = rows[method]
        assert float(row["accuracy"]) == m["accuracy"]
        assert (int(row["correct"]), int(row["held_out"])) == (m["correct"], m["held_out"]) and m["held_out"] == HELD_OUT
        assert float(row["train_used_percent"]) == pytest.approx(100 * m.get("train_fraction", 0.0))
        assert int(row["iterations"]) == m["iteration"]
        assert f"| {method} | {100 * m['accuracy']:.1f}% ({m['correct']}/{HELD_OUT}) |" in md
        assert float(row["ci_low"]) <= m["accuracy"] <= float(row["ci_high"])
    assert float(rows["Direct fine-tuned"]["train_used_percent"]) == 100.0
    assert float(rows["Few-shot CoT"]["train_used_percent"]) == 0.0
    assert float(rows["STaR"]["last_accuracy"]) == star[max(star)]["accuracy"]
    assert rows["STaR"]["p_value"] == "" and 0 <= float(rows["Direct fine-tuned"]["p_value"]) <= 1
    star_total = sum(m["iteration_seconds"] for n, m in star.items() if n <= int(rows["STaR"]["iterations"]))
    assert float(rows["STaR"]["wall_seconds"]) == pytest.approx(star_total, abs=0.01)


def test_runs_share_splits_and_base_model(comparison, tiny_model):
    held_out = [{r["id"] for r in read_jsonl(comparison / run / "iteration-00" / "eval.jsonl")}
                for run in ("star", "star-no-rationalization", "direct-finetune")]
    assert held_out[0] == held_out[1] == held_out[2] and len(held_out[0]) == HELD_OUT
    for run in ("star", "star-no-rationalization", "direct-finetune"):
        summary = json.loads((comparison / run / "iteration-01" / "train.json").read_text())
        assert summary["base_model"] == tiny_model


def test_direct_finetune_trains_on_every_answer_without_rationale(comparison):
    task = get_task("addition", {"digits_max": 1})
    train = task.load("train", TRAIN, seed=0)
    kept = read_jsonl(comparison / "direct-finetune" / "iteration-01" / "train.jsonl")
    assert [k["id"] for k in kept] == [e.id for e in train]  # the whole training set
    for k, e in zip(kept, train):
        assert k["prompt"] == f"Q: What is {e.question}?\nA:"
        assert k["completion"] == f" The answer is {e.answer}.\n\n"  # the answer, no rationale
    # Few-shot direct: the exemplars answer without a rationale. The fine-tuned model sees the
    # bare question, as it was trained (loop.fewshot_for_finetuned=false, the default).
    prompt = read_jsonl(comparison / "direct-finetune" / "iteration-00" / "eval.jsonl")[0]["prompt"]
    assert prompt.startswith("Q: What is 23 + 45?\nA: The answer is 68.\n\n")
    bare = read_jsonl(comparison / "direct-finetune" / "iteration-01" / "eval.jsonl")[0]["prompt"]
    assert bare.startswith("Q: What is ") and bare.endswith("?\nA:") and bare.count("Q:") == 1
    star_prompt = read_jsonl(comparison / "star" / "iteration-00" / "eval.jsonl")[0]["prompt"]
    assert star_prompt.startswith("Q: What is 23 + 45?\nA: 23 + 45 = 68. The answer is 68.\n\n")
    # Default budget: the steps STaR's final model gets (§4.1 rule at the last iteration).
    summary = json.loads((comparison / "direct-finetune" / "iteration-01" / "train.json").read_text())
    star_last = json.loads((comparison / "star" / "iteration-02" / "train.json").read_text())
    assert summary["steps"] == star_last["steps"] == 2  # round(2 * 1.2) at n = 2
    assert not (comparison / "direct-finetune" / "iteration-02").exists()


def test_star_without_rationalization_never_rationalizes(comparison):
    for it in ("iteration-01", "iteration-02"):
        assert not (comparison / "star-no-rationalization" / it / "rationalizations.jsonl").exists()
        assert (comparison / "star" / it / "rationalizations.jsonl").exists()
    assert all(m.get("kept_rationalization", 0) == 0 for m in metrics(comparison / "star-no-rationalization").values())


def test_direct_steps_is_configurable(tiny_model, tmp_path):
    config = load_config(overrides=tiny_overrides(tiny_model, tmp_path, "training.direct_steps=7"))
    assert config.direct_finetune_steps() == 7
    config = load_config(overrides=tiny_overrides(tiny_model, tmp_path, "loop.iterations=4", "training.start_steps=40"))
    assert config.direct_finetune_steps() == round(40 * 1.2**3)
    with pytest.raises(ConfigError, match="method must be one of star, direct_finetune"):
        load_config(overrides=["method=fewshot"])


def test_finished_comparison_reruns_nothing(comparison, tiny_model, calls):
    before = (comparison / "comparison.csv").read_text()
    config = load_config(overrides=tiny_overrides(tiny_model, comparison))
    compare(config, comparison, say=lambda _: None)
    assert calls == {"generate": [], "train": []}
    assert (comparison / "comparison.csv").read_text() == before


def test_partial_comparison_runs_only_the_missing_runs(comparison, tiny_model, tmp_path, calls):
    out = tmp_path / "cmp"
    shutil.copytree(comparison, out)
    shutil.rmtree(out / "star-no-rationalization")  # never run
    shutil.rmtree(out / "star" / "iteration-02")  # interrupted before its last iteration
    (out / "star" / "metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in read_jsonl(out / "star" / "metrics.jsonl") if m["iteration"] < 2))
    said = []
    config = load_config(overrides=tiny_overrides(tiny_model, out))
    compare(config, out, say=said.append)
    assert calls["train"] == [("star", 2), ("star-no-rationalization", 2), ("star-no-rationalization", 2)]
    star = [(n, stage) for run, n, stage in calls["generate"] if run == "star"]
    assert star[0] == (2, "generations") and star[-1] == (2, "eval")  # only the lost iteration
    assert all(n == 2 for n, _ in star)
    assert [(n, stage) for run, n, stage in calls["generate"] if run == "star-no-rationalization"] == [
        (0, "validation"), (0, "eval"), (1, "generations"), (1, "validation"), (1, "eval"),
        (2, "generations"), (2, "validation"), (2, "eval")]
    assert {run for run, _, _ in calls["generate"]} == {"star", "star-no-rationalization"}
    assert any(s.startswith("direct-finetune: reusing finished run") for s in said)
    assert any(s.startswith("star: running") for s in said)
    assert [m["iteration"] for m in read_jsonl(out / "star" / "metrics.jsonl")] == [0, 1, 2]


def test_existing_run_with_another_config_is_refused(comparison, tiny_model, tmp_path, capsys):
    out = tmp_path / "cmp"
    shutil.copytree(comparison / "direct-finetune", out / "direct-finetune")
    args = tiny_overrides(tiny_model, out, "training.learning_rate=5e-4")
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err
    assert "direct-finetune holds a run made with a different config" in err
    assert "training.learning_rate: 0.001 there, 0.0005 here" in err
    assert not (out / "star").exists()  # refused before any run started


def test_a_finished_comparison_reused_with_keep_checkpoints_selected_is_pruned(comparison, tiny_model, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(comparison, out)
    assert main(["compare", *tiny_overrides(tiny_model, out, "loop.keep_checkpoints=selected")]) == 0
    for name in ("star", "star-no-rationalization"):
        selected = read_jsonl(out / name / "metrics.jsonl")[-1]["selected_iteration"]
        on_disk = {n for n in (1, 2) if (out / name / f"iteration-0{n}" / "checkpoint").is_dir()}
        assert on_disk == {2, selected}, name
    assert (out / "direct-finetune" / "iteration-01" / "checkpoint").is_dir()


def test_run_configs_differ_only_in_method_and_rationalization(tiny_model, tmp_path):
    configs = run_configs(load_config(overrides=tiny_overrides(tiny_model, tmp_path)), tmp_path)
    dicts = {name: c.to_dict() for name, c in configs.items()}
    for d in dicts.values():
        d.pop("output_dir"), d.pop("method"), d["loop"].pop("rationalize")
    assert dicts["star"] == dicts["star-no-rationalization"] == dicts["direct-finetune"]
    assert configs["star"].loop.rationalize and not configs["star-no-rationalization"].loop.rationalize
    assert configs["direct-finetune"].method == "direct_finetune"


def test_self_consistency_columns_come_from_the_selected_iteration(comparison, tmp_path):
    """With eval.samples = k the table shows maj@k and pass@k of the iteration it reports."""
    from selftaught.compare import markdown, table

    out = tmp_path / "cmp"
    shutil.copytree(comparison, out)
    for run in ("star", "star-no-rationalization", "direct-finetune"):
        path = out / run / "metrics.jsonl"
        records = [{**m, "eval_samples": 4, "maj_at_k": 0.1 + m["iteration"] / 10,
                    "pass_at_k": 0.5 + m["iteration"] / 10} for m in read_jsonl(path)]
        path.write_text("".join(json.dumps(m) + "\n" for m in records))
    rows = {r.method: r for r in table(out)}
    star = metrics(out / "star")
    chosen = star[max(star)]["selected_iteration"]
    assert rows["STaR"].maj_at_k == pytest.approx(0.1 + chosen / 10)
    assert rows["STaR"].pass_at_k == pytest.approx(0.5 + chosen / 10)
    assert rows["Few-shot CoT"].maj_at_k == pytest.approx(0.1) and rows["STaR"].eval_samples == 4
    md = markdown(list(rows.values()))
    assert "| maj@4 | pass@4 |" in md and f"| {0.1 + chosen / 10:.1%} | {0.5 + chosen / 10:.1%} |" in md
    # without sampled evaluation the columns are absent
    assert "maj@" not in (comparison / "comparison.md").read_text()


def test_variants_add_a_row_each_on_the_same_questions(comparison, tiny_model, tmp_path, calls):
    """`compare --variants` reuses the three runs, runs STaR's descendants and reads a row from each."""
    from selftaught.compare import VARIANT_METHODS
    out = tmp_path / "cmp"
    shutil.copytree(comparison, out)
    assert main(["compare", *tiny_overrides(tiny_model, out), "--variants"]) == 0
    assert {run for run, _, _ in calls["generate"]} == {"star-k-samples", "star-continue", "b-star"}
    k = {run: metrics(out / run) for run in ("star", "star-k-samples", "star-continue", "b-star")}
    assert k["star-k-samples"][1]["samples_drawn"]["generations"] == 4 * TRAIN
    assert (out / "b-star" / "iteration-01" / "temperature.json").is_file()
    assert k["b-star"][1]["temperature"] in (0.5, 0.7, 1.0)
    base = {run: json.loads((out / run / "iteration-02" / "train.json").read_text())["base_model"]
            for run in ("star", "star-continue")}
    assert base["star"] == tiny_model
    assert base["star-continue"] == str(out / "star-continue" / "iteration-01" / "checkpoint")
    with (out / "comparison.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == [m.name for m in METHODS + VARIANT_METHODS]
    star = float(rows["STaR"]["accuracy"])
    for method in VARIANT_METHODS:
        m = k[method.run][k[method.run][max(k[method.run])]["selected_iteration"]]
        row = rows[method.name]
        assert float(row["accuracy"]) == m["accuracy"] and int(row["held_out"]) == HELD_OUT
        assert float(row["margin"]) == pytest.approx(star - m["accuracy"])
        assert 0 <= float(row["p_value"]) <= 1
    page = (out / "report" / "report.html").read_text()
    assert "STaR continuing from M_{n-1}" in page and "4 samples at T=0.7" in page
