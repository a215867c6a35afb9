"""What k samples of each question say: pass@k, majority vote (maj@k), B-STaR's balance score.

Written here rather than taken from a library: each is a few lines, and the libraries that have
them (human-eval's pass@k, B-STaR's scripts) are not packaged for import.
"""

from __future__ import annotations

from collections import Counter
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021)'s unbiased estimate of the chance that at least one of k samples is
    right, from n samples of which c are right: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_vote(answers: list[str | None]) -> str | None:
    """The answer given most often (self-consistency, Wang et al. 2023); no answer never wins;
    a tie goes to the answer given first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def balance_score(correct: int, samples: int, m: int) -> float:
    """B-STaR's balance score of one question (Zeng et al. 2024): the ratio of correct
    samples, scaled down by count / m when fewer than m are correct, so that it rewards both
    exploitation (a high ratio) and exploration (enough correct samples to learn from)."""
    if samples <= 0 or m <= 0 or not 0 <= correct <= samples:
        raise ValueError(f"balance score needs 0 <= correct <= samples, samples > 0 and m > 0; "
                         f"got correct={correct}, samples={samples}, m={m}")
    ratio = correct / samples
    return ratio if correct >= m else correct * ratio / m
