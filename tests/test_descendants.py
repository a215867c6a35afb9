"""STaR's descendants as options of one loop, on the tiny model, end to end: k samples with
distinct rationales up to a cap (RFT, ReST-EM), continuing from M_{n-1} (B-STaR), self-consistency
evaluation, and the preference pairs every iteration writes (V-STaR, DPO)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from selftaught.cli import main
from selftaught.config import ConfigError, load_config
from selftaught.filtering import distinct_key
from selftaught.samples import balance_score, majority_vote

from helpers import TRAIN, read_jsonl, tiny_overrides

K, CAP, EVAL_K, GRID = 4, 2, 3, (0.5, 1.0)


@pytest.fixture(scope="module")
def descendants_run(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("descendants") / "run"
    assert main(["run", *tiny_overrides(
        tiny_model, out, f"generation.samples_per_question={K}", "generation.temperature=1.0",
        f"loop.keep_per_question={CAP}", "loop.distinct=signature", "loop.restart_from_base=false",
        f"eval.samples={EVAL_K}", f"loop.auto_temperature={list(GRID)}", "loop.probe_size=8",
        # M_2 continues from M_1, whose sampled rationales are mostly false arithmetic: the step
        # checker (tested in test_steps, test_filtering, test_tasks_run) would leave nothing.
        "loop.step_checker=none",
    )]) == 0
    return out


def test_k_samples_keep_distinct_correct_rationales_up_to_the_cap(descendants_run):
    for n in (1, 2):
        it = descendants_run / f"iteration-{n:02d}"
        generated = read_jsonl(it / "generations.jsonl")
        rationalized = read_jsonl(it / "rationalizations.jsonl")
        assert len(generated) == K * TRAIN
        outputs = defaultdict(list)
        for r in generated + rationalized:
            outputs[r["id"]].append(r)
        kept = read_jsonl(it / "train.jsonl")
        assert kept, "nothing was kept: the test proves nothing"
        per_question = defaultdict(list)
        for k in kept:
            per_question[k["id"]].append(k)
            assert "Hint" not in k["prompt"] + k["completion"]  # never the hint
            source = [r for r in outputs[k["id"]]
                      if r["stage"] == k["source"] and k["completion"] == r["output"] + (r["stop"] or "\n\n")]
            assert source and all(r["correct"] for r in source)  # never a wrong one
        signature = distinct_key("signature")
        for qid, ks in per_question.items():
            assert len(ks) <= CAP
            assert len({signature(k["completion"]) for k in ks}) == len(ks)  # distinct
        metrics = {m["iteration"]: m for m in read_jsonl(descendants_run / "metrics.jsonl")}[n]
        assert metrics["samples_drawn"]["generations"] == K * TRAIN
        assert metrics["samples_correct"]["generations"] == sum(r["correct"] for r in generated)
        assert metrics["kept_distinct"] == len(kept)
        assert 0 <= metrics["mean_pass_rate"] <= 1


def test_auto_temperature_takes_the_best_balance_score(descendants_run):
    for m in read_jsonl(descendants_run / "metrics.jsonl")[1:]:
        it = descendants_run / f"iteration-{m['iteration']:02d}"
        scores = {}
        for t in GRID:
            correct = defaultdict(int)
            for r in read_jsonl(it / f"probe-t{t:g}.jsonl"):
                correct[r["id"]] += r["correct"]
            assert len(correct) == 8
            scores[t] = sum(balance_score(c, K, 2) for c in correct.values()) / 8
        assert m["balance_score"] == {f"{t:g}": pytest.approx(v) for t, v in scores.items()}
        assert m["temperature"] == max(GRID, key=lambda t: scores[t])
        # ...saved where a resumed run finds it
        assert json.loads((it / "temperature.json").read_text())["temperature"] == m["temperature"]


def test_continue_mode_trains_from_the_previous_model(descendants_run, tiny_model):
    first = json.loads((descendants_run / "iteration-01" / "train.json").read_text())
    second = json.loads((descendants_run / "iteration-02" / "train.json").read_text())
    assert first["base_model"] == tiny_model  # M_1 from M
    assert second["base_model"] == str(descendants_run / "iteration-01" / "checkpoint")  # M_2 from M_1
    assert second["examples"] > 0 and second["steps"] > 0


def test_self_consistency_metrics_match_the_samples(descendants_run):
    for m in read_jsonl(descendants_run / "metrics.jsonl"):
        it = descendants_run / f"iteration-{m['iteration']:02d}"
        samples = defaultdict(list)
        for r in read_jsonl(it / "eval_samples.jsonl"):
            samples[r["id"]].append(r)
        assert len(samples) == m["held_out"] and {len(v) for v in samples.values()} == {EVAL_K}
        majority = sum(
            any(r["correct"] for r in rs if r["predicted"] == majority_vote([r["predicted"] for r in rs])
                and r["predicted"] is not None)
            for rs in samples.values())
        assert m["eval_samples"] == EVAL_K
        assert m["maj_at_k"] == pytest.approx(majority / len(samples))
        assert m["pass_at_k"] == pytest.approx(sum(any(r["correct"] for r in rs) for rs in samples.values()) / len(samples))
        assert m["accuracy"] == pytest.approx(sum(r["correct"] for r in read_jsonl(it / "eval.jsonl")) / m["held_out"])


def test_report_plots_maj_and_pass_at_k(descendants_run):
    from selftaught.report import find_subject, plot_accuracy

    labels = [line.get_label() for line in plot_accuracy(find_subject(descendants_run)).axes[0].lines]
    assert any(f"maj@{EVAL_K}" in label for label in labels)
    assert any(f"pass@{EVAL_K}" in label for label in labels)


def test_preference_pairs_load_with_datasets_in_trls_format(descendants_run):
    datasets = pytest.importorskip("datasets")
    files = [str(descendants_run / f"iteration-{n:02d}" / "preference_pairs.jsonl") for n in (1, 2)]
    files = [f for f in files if Path(f).stat().st_size]  # an iteration may have no pair
    pairs = datasets.load_dataset("json", data_files=files, split="train")
    assert len(pairs) > 0, "no pairs: the test proves nothing"
    assert set(pairs.column_names) == {"prompt", "chosen", "rejected"}  # TRL's preference format
    generated = defaultdict(list)
    for n in (1, 2):
        for r in read_jsonl(descendants_run / f"iteration-{n:02d}" / "generations.jsonl"):
            generated[r["prompt"].rsplit("\n\n", 1)[-1]].append(r)  # the question, without exemplars
    for p in pairs:
        assert "Hint" not in p["prompt"] + p["chosen"] + p["rejected"]
        assert p["chosen"] != p["rejected"]
        wrong = [r for r in generated[p["prompt"]] if p["rejected"] == r["output"] + (r["stop"] or "\n\n")]
        assert wrong and not any(r["correct"] for r in wrong)
    metrics = read_jsonl(descendants_run / "metrics.jsonl")
    assert sum(m.get("preference_pairs", 0) for m in metrics) == len(pairs)


def test_options_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="loop.keep_per_question=3 needs"):
        load_config(overrides=["loop.keep_per_question=3", "generation.samples_per_question=2",
                               "generation.temperature=0.7"])
    with pytest.raises(ConfigError, match="loop.distinct must be one of"):
        load_config(overrides=["loop.distinct=words"])
    with pytest.raises(ConfigError, match="eval.samples > 1 needs eval.temperature > 0"):
        load_config(overrides=["eval.samples=4", "eval.temperature=0"])
    with pytest.raises(ConfigError, match="loop.auto_temperature scores temperatures by several"):
        load_config(overrides=["loop.auto_temperature=[0.5, 1.0]"])
    with pytest.raises(ConfigError, match="loop.auto_temperature must be a list of temperatures > 0"):
        load_config(overrides=["loop.auto_temperature=[0, 1.0]", "generation.samples_per_question=2",
                               "generation.temperature=1"])
    with pytest.raises(ConfigError, match="training.method=lora does not support"):
        load_config(overrides=["loop.restart_from_base=false", "training.method=lora"])
