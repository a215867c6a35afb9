"""Intervals and paired tests of `selftaught compare`, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from selftaught.significance import bootstrap_interval, mcnemar, mean_std


def test_mean_and_sample_standard_deviation():
    mean, std = mean_std([0.70, 0.74, 0.78])
    assert mean == pytest.approx(0.74)
    assert std == pytest.approx(0.04)  # sqrt(((-.04)^2 + 0 + .04^2) / 2)
    assert mean_std([0.5]) == (0.5, None)


def test_mcnemar_exact_against_the_binomial_by_hand():
    # 10 questions only A gets right, 2 only B: p = 2 * sum_{k<=2} C(12, k) / 2^12 = 158 / 4096
    pairs = [(True, False)] * 10 + [(False, True)] * 2 + [(True, True)] * 30 + [(False, False)] * 8
    assert mcnemar(pairs) == (10, 2, pytest.approx(158 / 4096))
    # concordant pairs never matter; a tie of discordant ones is p = 1
    assert mcnemar([(True, False), (False, True), (True, True)])[2] == pytest.approx(1.0)
    assert mcnemar([(True, True), (False, False)]) == (0, 0, 1.0)
    # 6 vs 0: p = 2 / 2^6
    assert mcnemar([(True, False)] * 6)[2] == pytest.approx(2 / 64)


def test_bootstrap_interval_matches_the_normal_approximation():
    # 400 questions, 200 right: the sampling sd is sqrt(.25 / 400) = 0.025, so the 95%
    # interval is about 0.5 ± 1.96 * 0.025 = [0.451, 0.549].
    low, high = bootstrap_interval([[1.0] * 200 + [0.0] * 200])
    assert low == pytest.approx(0.451, abs=0.006) and high == pytest.approx(0.549, abs=0.006)
    assert bootstrap_interval([[1.0] * 200 + [0.0] * 200]) == (low, high)  # seeded: reproducible


def test_bootstrap_over_seeds_averages_them_and_narrows():
    # Three seeds of 400 questions at 40%, 50% and 60%: the mean is 0.5 and the sd of the mean of
    # three independent proportions is sqrt(.24 + .25 + .24) / 3 / 20 = 0.01424.
    groups = [[1.0] * k + [0.0] * (400 - k) for k in (160, 200, 240)]
    low, high = bootstrap_interval(groups)
    half = 1.96 * math.sqrt(0.24 + 0.25 + 0.24) / 3 / 20
    assert (low + high) / 2 == pytest.approx(0.5, abs=0.004)
    assert high - low == pytest.approx(2 * half, rel=0.1)


def test_bootstrap_of_a_constant_is_the_constant():
    assert bootstrap_interval([[1.0] * 10, [1.0] * 5]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([[]])


# --- the comparison table over seeds, on run folders written by hand ---------------------------

def _write_run(root, seed: int, run: str, iterations: list[tuple[int, float]]):
    """A run folder whose iteration n got the first k_n of 10 held-out questions right and
    validation accuracy v_n (iterations = [(k_0, v_0), (k_1, v_1), ...])."""
    from selftaught.loop import selected
    from selftaught.store import RunStore

    method = "direct_finetune" if run == "direct-finetune" else "star"
    config = {"method": method, "loop": {"rationalize": run == "star"}, "seed": seed,
              "task": {"name": "addition"}, "model": {"name_or_path": "m"}, "eval": {"split": "test"}}
    store = RunStore.create(root / f"seed-{seed}" / run, config, overwrite=False)
    history = []
    for n, (k, v) in enumerate(iterations):
        store.write(n, "eval", [{"id": f"q{i}", "sample": 0, "question": f"{i} + 1", "answer": str(i + 1),
                                 "output": " ...", "predicted": str(i + 1) if i < k else None,
                                 "correct": i < k, "group": None} for i in range(10)])
        m = {"iteration": n, "accuracy": k / 10, "correct": k, "held_out": 10, "iteration_seconds": 1.0,
             "validation_accuracy": v, "accuracy_by_group": {"all": k / 10}}
        if n:
            m.update(train_fraction=0.5, steps=2)
        best = selected(history + [m])
        m.update(selected_iteration=best["iteration"], selected_accuracy=best["accuracy"])
        history.append(m)
        store.add_metrics(m)


@pytest.fixture
def two_seeds(tmp_path):
    from selftaught.compare import table, write_table

    root = tmp_path / "cmp"
    # STaR: iteration 1 is best on validation, iteration 2 on the held-out split.
    _write_run(root, 0, "star", [(3, 0.3), (8, 0.9), (9, 0.5)])
    _write_run(root, 1, "star", [(3, 0.3), (6, 0.8), (10, 0.7)])
    _write_run(root, 0, "star-no-rationalization", [(3, 0.3), (6, 0.6)])
    _write_run(root, 1, "star-no-rationalization", [(3, 0.3), (6, 0.6)])
    _write_run(root, 0, "direct-finetune", [(2, 0.2), (5, 0.5)])
    _write_run(root, 1, "direct-finetune", [(2, 0.2), (4, 0.4)])
    write_table(table(root, [0, 1]), root)
    return root


def test_table_over_seeds_selects_on_validation_and_tests_each_margin(two_seeds):
    from selftaught.compare import read_table

    rows = {r.method: r for r in read_table(two_seeds)}
    star = rows["STaR"]
    assert star.accuracy == pytest.approx(0.7) and star.std == pytest.approx(math.sqrt(0.02))
    assert star.per_seed == [0.8, 0.6] and star.seeds == [0, 1]
    assert star.last_accuracy == pytest.approx(0.95)  # iteration 2: reported, never chosen
    assert (star.correct, star.held_out, star.iterations) == (14, 20, 1)
    assert star.ci_low <= 0.7 <= star.ci_high and star.margin is None
    direct = rows["Direct fine-tuned"]
    assert direct.accuracy == pytest.approx(0.45) and direct.margin == pytest.approx(0.25)
    # seed 0: 8 vs 5 right (3 only STaR); seed 1: 6 vs 4 (2 only STaR): p = 2 / 2^5
    assert (direct.only_star, direct.only_this, direct.p_value) == (5, 0, pytest.approx(2 / 32))
    norat = rows["STaR without rationalization"]
    assert (norat.only_star, norat.only_this, norat.p_value) == (2, 0, pytest.approx(0.5))
    assert rows["Few-shot CoT"].accuracy == pytest.approx(0.3) and rows["Few-shot CoT"].std == 0
    md = (two_seeds / "comparison.md").read_text()
    assert "| STaR | 70.0% ± 14.1 (14/20) |" in md and "2 seeds (0, 1)" in md
    assert "+25.0 pts (5 vs 0) | 0.0625 |" in md


def test_report_over_seeds_draws_every_seed_and_a_band(two_seeds):
    import matplotlib

    matplotlib.use("Agg")
    from selftaught.report import find_subject, plot_accuracy, render

    subject = find_subject(two_seeds)
    ax = plot_accuracy(subject).axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["STaR, seed-0"] == [30, 80, 90] and lines["STaR, seed-1"] == [30, 60, 100]
    assert lines["STaR, mean of 2 seeds"] == pytest.approx([30, 70, 95])
    assert any(c.get_label() == "± 1 sd over seeds" for c in ax.collections)
    page = render(two_seeds).read_text()
    assert "Mean ± sd over seeds 0, 1" in page and "+25.0 pts (p = 0.0625)" in page
