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
