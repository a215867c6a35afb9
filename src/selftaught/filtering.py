"""Which sampled rationales become training examples, and the pairs left over for a verifier.

The paper keeps one correct rationale per question. Its descendants keep more: RFT samples k
rationales and keeps the *distinct* correct ones (deduplicated by the equations they compute),
ReST-EM keeps at most a fixed number per question so that easy questions do not dominate, and
V-STaR trains a verifier on correct-versus-incorrect pairs. All of that is here; the loop still
calls one ``filter_correct``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from selftaught.tasks.steps import signature

DISTINCT = ("text", "signature")


def normalized(text: str) -> str:
    """The text two rationales must differ in to count as distinct: case, spacing and
    punctuation at the ends ignored ("So 3 + 4 = 7." and "so 3 + 4 = 7" are one rationale)."""
    return " ".join(text.lower().split()).strip(" .,;:!?")


def distinct_key(mode: str) -> Callable[[str], Any]:
    """``text``: the normalized text; ``signature``: RFT's sequence of equations (or numbers)."""
    return {"text": normalized, "signature": signature}[mode]


@dataclass
class Selection:
    """What the filter kept per question, what it turned away and why."""

    kept: dict[str, list[dict]] = field(default_factory=dict)  # question id -> records, in order
    rejected: dict[str, list[dict]] = field(default_factory=dict)  # wrong or false steps (generations)
    drawn: Counter = field(default_factory=Counter)  # per stage
    correct: Counter = field(default_factory=Counter)
    step_rejected: Counter = field(default_factory=Counter)
    duplicates: int = 0
    over_cap: int = 0
    pass_rate: dict[str, float] = field(default_factory=dict)  # per question, generation stage

    def stats(self) -> dict[str, Any]:
        return {
            "samples_drawn": dict(self.drawn), "samples_correct": dict(self.correct),
            "step_rejected": dict(self.step_rejected), "duplicates": self.duplicates,
            "over_cap": self.over_cap, "kept": sum(len(v) for v in self.kept.values()),
            "questions_kept": len(self.kept), "pass_rate": self.pass_rate,
        }


def select(
    question_ids: Iterable[str], records: list[dict], cap: int, key: Callable[[str], Any],
    steps_hold: Callable[[str], bool] | None = None,
) -> Selection:
    """Per question, up to ``cap`` correct rationales with distinct ``key``, in record order
    (generations before rationalizations); a wrong answer is never kept, nor, with a step
    checker, a rationale with a false step."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_id[r["id"]].append(r)
    out = Selection()
    for qid in question_ids:
        seen, kept, rejected, seen_rejected = set(), [], [], set()
        for r in by_id.get(qid, []):
            stage = r["stage"]
            out.drawn[stage] += 1
            ok = r["correct"]
            if ok:
                out.correct[stage] += 1
                if r.get("leaks_hint"):  # a rationalization that repeats its hint is never kept
                    ok = False
                elif steps_hold is not None and not steps_hold(r["output"]):
                    out.step_rejected[stage] += 1
                    ok = False
            k = key(r["output"])
            if not ok:
                if stage == "generations" and k not in seen_rejected:
                    seen_rejected.add(k)
                    rejected.append(r)
                continue
            if k in seen:
                out.duplicates += 1
            elif len(kept) >= cap:
                out.over_cap += 1
            else:
                seen.add(k)
                kept.append(r)
        generated = [r for r in by_id.get(qid, []) if r["stage"] == "generations"]
        if generated:
            out.pass_rate[qid] = sum(r["correct"] for r in generated) / len(generated)
        if kept:
            out.kept[qid] = kept
        if rejected:
            out.rejected[qid] = rejected
    return out


def preference_pairs(chosen: list[str], rejected: list[str]) -> list[tuple[str, str]]:
    """Correct-versus-incorrect pairs of one question, each completion used at least once:
    max(len(chosen), len(rejected)) pairs, cycling through the shorter list."""
    if not chosen or not rejected:
        return []
    return [(chosen[i % len(chosen)], rejected[i % len(rejected)])
            for i in range(max(len(chosen), len(rejected)))]

