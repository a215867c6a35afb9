"""How far to trust a comparison: intervals over seeds and held-out questions, and paired tests.

Each seed of a comparison draws its own held-out questions, and within a seed every method is
evaluated on the same ones, so:

- a row's 95% interval resamples the held-out questions within each seed (scipy's bootstrap,
  percentile method) and averages over the seeds, as the row's accuracy does;
- a margin between STaR and a baseline is tested on the pairs (STaR right?, baseline right?) of
  the same questions: McNemar's exact test, i.e. a two-sided binomial test on the questions where
  exactly one of the two is right, pooled over the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

RESAMPLES = 10_000
CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def bootstrap_interval(
    groups: Sequence[Sequence[float]], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over groups (seeds) of each group's mean, each
    group resampled on its own (its questions, with replacement)."""
    arrays = [np.asarray(g, dtype=float) for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("every group needs at least one value")
    if all(np.all(a == a[0]) for a in arrays):  # nothing varies: the interval is the point
        point = float(np.mean([a[0] for a in arrays]))
        return point, point

    def mean_of_means(*samples, axis=-1):
        return np.mean([s.mean(axis=axis) for s in samples], axis=0)

    result = stats.bootstrap(
        tuple(arrays), mean_of_means, n_resamples=resamples, confidence_level=confidence,
        method="percentile", vectorized=True, rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar(pairs: Sequence[tuple[bool, bool]]) -> tuple[int, int, float]:
    """McNemar's exact test on paired outcomes (a right?, b right?) of the same questions.

    Returns (a right where b is wrong, b right where a is wrong, two-sided p-value); with no
    discordant pair the p-value is 1."""
    only_a = sum(1 for a, b in pairs if a and not b)
    only_b = sum(1 for a, b in pairs if b and not a)
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
