"""Distinct correct rationales up to a cap, the step checker in the filter, preference pairs,
and what k samples say (pass@k, maj@k, B-STaR's balance score), against hand-computed values."""

from __future__ import annotations

from math import comb

import pytest

from selftaught.filtering import distinct_key, normalized, preference_pairs, select
from selftaught.samples import balance_score, majority_vote, pass_at_k
from selftaught.tasks.steps import steps_hold


def rec(qid, output, correct, stage="generations"):
    return {"id": qid, "output": output, "correct": correct, "stage": stage}


RECORDS = [
    rec("a", "3 + 4 = 7. The answer is 7.", True),
    rec("a", "  3 + 4 = 7.   the answer is 7 ", True),  # the same text, other case and spacing
    rec("a", "4 + 3 = 7. The answer is 7.", True),
    rec("a", "3 + 4 = 8. The answer is 8.", False),
    rec("a", "Adding, 3 + 4 = 7. So the answer is 7.", True),
    rec("b", "5 + 5 = 11. The answer is 10.", True),  # right answer, false step
    rec("b", "5 + 5 = 12. The answer is 12.", False),
    rec("b", "5 + 5 = 10. The answer is 10.", True, "rationalizations"),
    rec("c", "9 - 1 = 7. The answer is 7.", False),
]


def test_keeps_distinct_correct_rationales_up_to_the_cap():
    chosen = select(["a", "b", "c"], RECORDS, cap=2, key=distinct_key("text"))
    assert [r["output"] for r in chosen.kept["a"]] == [RECORDS[0]["output"], RECORDS[2]["output"]]
    assert chosen.duplicates == 1 and chosen.over_cap == 1
    assert all(r["correct"] for rs in chosen.kept.values() for r in rs)  # never a wrong one
    assert "c" not in chosen.kept
    # without a step checker the false step of b is kept, generation before rationalization
    assert [r["stage"] for r in chosen.kept["b"]] == ["generations", "rationalizations"]
    assert chosen.drawn == {"generations": 8, "rationalizations": 1}
    assert chosen.correct == {"generations": 5, "rationalizations": 1}
    assert chosen.pass_rate == {"a": 0.8, "b": 0.5, "c": 0.0}
    one = select(["a", "b", "c"], RECORDS, cap=1, key=distinct_key("text"))
    assert [len(one.kept[q]) for q in ("a", "b")] == [1, 1]  # the paper: one per question


def test_signature_merges_rationales_that_compute_the_same():
    chosen = select(["a"], RECORDS, cap=10, key=distinct_key("signature"))
    # "3 + 4 = 7" twice in other words is one reasoning path; "4 + 3 = 7" is another.
    assert [r["output"] for r in chosen.kept["a"]] == [RECORDS[0]["output"], RECORDS[2]["output"]]


def test_step_checker_rejects_a_right_answer_reached_by_a_false_step():
    chosen = select(["a", "b", "c"], RECORDS, cap=5, key=distinct_key("text"), steps_hold=steps_hold)
    assert [r["output"] for r in chosen.kept["b"]] == ["5 + 5 = 10. The answer is 10."]
    assert chosen.step_rejected == {"generations": 1}
    # the rejected ones (wrong answer or false step) are what a verifier learns to reject
    assert [r["output"] for r in chosen.rejected["b"]] == [RECORDS[5]["output"], RECORDS[6]["output"]]


@pytest.mark.parametrize("text", ["", "   ", "....", "\x00\u202e", "日本語 = 3", "a" * 100_000,
                                  "=" * 10_000, "1,2,3", "12-05-2020", "−5 × 3 = −15"])
def test_dedup_keys_take_any_string(text):
    assert isinstance(normalized(text), str)
    assert isinstance(distinct_key("signature")(text), tuple)
    assert normalized(" " + text + "  ") == normalized(text)


def test_normalized_ignores_case_spacing_and_end_punctuation_only():
    assert normalized("So 3 + 4 = 7.") == normalized("  so 3 +  4 = 7 ") == "so 3 + 4 = 7"
    assert normalized("3 + 4 = 7") != normalized("3 + 4 = 8")


def test_preference_pairs_use_every_completion():
    assert preference_pairs(["c1"], ["r1", "r2", "r3"]) == [("c1", "r1"), ("c1", "r2"), ("c1", "r3")]
    assert preference_pairs(["c1", "c2"], ["r1"]) == [("c1", "r1"), ("c2", "r1")]
    assert preference_pairs([], ["r1"]) == preference_pairs(["c1"], []) == []


@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (4, 1, 1, 0.25), (4, 2, 2, 1 - 1 / 6), (10, 3, 5, 1 - 21 / 252),
    (5, 0, 5, 0.0), (5, 1, 5, 1.0), (3, 2, 2, 1.0),
])
def test_pass_at_k_is_chen_et_als_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 is the mean accuracy


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(3, 4, 1), (3, 1, 4), (3, 1, 0), (0, 0, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@pytest.mark.parametrize("answers, expected", [
    (["7", "8", "7"], "7"), (["8", "7", "7", "8"], "8"),  # a tie: the first given
    ([None, None, "3"], "3"), ([None, None], None), ([], None),
])
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


@pytest.mark.parametrize("correct, samples, m, expected", [
    (8, 8, 4, 1.0),  # all right, plenty: the ratio
    (4, 8, 4, 0.5),  # exactly m right: the ratio
    (6, 8, 4, 0.75),
    (2, 8, 4, 2 * 0.25 / 4),  # fewer than m: count x ratio / m = 0.125
    (1, 2, 4, 1 * 0.5 / 4),  # a high ratio from few samples is discounted: 0.125
    (0, 8, 4, 0.0),
])
def test_balance_score_against_hand_computed_values(correct, samples, m, expected):
    assert balance_score(correct, samples, m) == pytest.approx(expected)
