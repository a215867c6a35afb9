"""n-digit addition (paper §4.3), generated from a seed, in two formats.

"plain" states the sum as its rationale ("47 + 38 = 85. The answer is 85."): the embedded 135M
model can follow it few-shot at 1-2 digits, where it is right far more often than chance, which
STaR needs to get started. "scratchpad" is the paper's format (after Nye et al., 2021): the
digits spaced out, and a rationale that adds them right to left with the carry, between
<scratch> markers. Every question is grouped by its digit count, so the metrics give accuracy
per digit count per iteration (the paper's Figure 4).
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from selftaught.config import ConfigError
from selftaught.tasks.base import Example, Task, option, register
from selftaught.tasks.data import prompt_file, read_exemplars

_ANSWER = re.compile(r"The answer is\s*(-?\d[\d,]*)")
_SPACED_DIGITS = re.compile(r"\d( \d)*")


@dataclass
class AdditionOptions:
    digits_min: int = option("Fewest digits in an operand.", default=1)
    digits_max: int = option("Most digits in an operand (the paper trains on 1-5).", default=2)
    format: str = option(
        "'plain' (\"23 + 45 = 68. The answer is 68.\") or 'scratchpad' (the paper's digit-by-digit "
        "rationale with carries between <scratch> markers).",
        default="plain",
    )
    prompt_file: str | None = option(
        "A YAML file of your own few-shot exemplars (question, answer, rationale), replacing "
        "selftaught/prompts/addition[_scratchpad].yaml.",
        default=None,
    )

    def __post_init__(self) -> None:
        if not 1 <= self.digits_min <= self.digits_max <= 30:
            raise ConfigError(
                "task.options must have 1 <= digits_min <= digits_max <= 30, got "
                f"digits_min={self.digits_min}, digits_max={self.digits_max}"
            )
        if self.format not in ("plain", "scratchpad"):
            raise ConfigError(f"task.options.format must be plain or scratchpad; got {self.format!r}")


@register
class Addition(Task):
    name = "addition"
    description = "n-digit addition (§4.3), generated from the seed; plain or the paper's scratchpad"
    Options = AdditionOptions
    splits = ("train", "test")
    stop = ("\n\n", "\nQ:")

    def __init__(self, options=None):
        super().__init__(options)
        self.scratchpad = self.options.format == "scratchpad"
        if self.scratchpad:
            self.stop = ("\n\n", "\nInput:")
        default = "addition_scratchpad.yaml" if self.scratchpad else "addition.yaml"
        self._fewshot = _read_fewshot(self.options.prompt_file or prompt_file(default))

    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        self.check_split(split)
        if size is None:
            raise ConfigError("addition is generated: give task.train_size and eval.size")
        # Distinct problems: drawn with replacement, a held-out set of 400 at 1-2 digits would
        # repeat each of the 16 one-digit test problems over ten times.
        rng = random.Random(f"addition-{split}-{seed}")
        lo, hi = self.options.digits_min, self.options.digits_max
        pools = {d: _Problems(d, split == "test") for d in range(lo, hi + 1)}
        out: list[Example] = []
        while len(out) < size:
            live = [d for d, pool in pools.items() if not pool.exhausted]
            if not live:
                raise ConfigError(
                    f"addition with {lo}-{hi} digits has only {len(out)} distinct {split} problems, "
                    f"fewer than the {size} asked for; lower the size or raise task.options.digits_max"
                )
            problem = pools[rng.choice(live)].draw(rng)
            if problem is not None:
                out.append(_example(f"{split}-{len(out)}", *problem))
        return out

    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        if not self.scratchpad:
            return self._fewshot
        # §4.3: exemplars for each digit length the run asks about.
        lo, hi = self.options.digits_min, self.options.digits_max
        chosen = [(x, r) for x, r in self._fewshot if lo <= _digits(x) <= hi]
        return chosen or self._fewshot

    def format_question(self, example: Example, hint: bool = False) -> str:
        if self.scratchpad:
            a, b = _operands(example)
            tail = f" (Hint: the answer is {_spaced(example.answer)}.)" if hint else ""
            return f"Input:\n{_spaced(a)} + {_spaced(b)}{tail}\nTarget:"
        # §3.2: the hint gives the answer; it is never part of a training example.
        tail = f" (Hint: the answer is {example.answer}.)" if hint else ""
        return f"Q: What is {example.question}?{tail}\nA:"

    def format_answer(self, rationale: str, answer: str) -> str:
        if self.scratchpad:
            return f"\n{rationale}\n{_spaced(answer)}" if rationale else f"\n{_spaced(answer)}"
        return f" {rationale} The answer is {answer}." if rationale else f" The answer is {answer}."

    states_equations = True  # "47 + 38 = 85." (the scratchpad states none: nothing to check)

    def leaks_hint(self, completion: str, example: Example) -> bool:
        # The scratchpad format never says "the answer is": only its hint does.
        return super().leaks_hint(completion, example) or (
            self.scratchpad and "the answer is" in " ".join(completion.lower().split()))

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        if self.scratchpad:
            return _scratchpad_answer(completion)
        found = _ANSWER.findall(completion)
        if not found:
            return None
        return str(int(found[-1].replace(",", "")))


def scratchpad(a: int, b: int) -> str:
    """The paper's rationale for a + b: right to left, each line the next digit pair, the digits
    of the sum so far and the carry C, as in the authors' arithmetic/gen_sums.py."""
    da, db = str(a), str(b)
    width = max(len(da), len(db))
    da, db = da.zfill(width), db.zfill(width)
    lines = [f"{_spaced(da)} + {_spaced(db)} , C: 0"]
    carry, done = 0, ""
    for i in reversed(range(width)):
        if i < width - 1:
            lines.append(f"{da[i]} + {db[i]} , {done}C: {carry}")
        total = int(da[i]) + int(db[i]) + carry
        carry, done = total // 10, f"{total % 10} {done}"
    lines += [f", {done}C: {carry}", f"{carry} {done}".strip()]
    return "\n".join(["<scratch>", *lines, "</scratch>"])


def _scratchpad_answer(completion: str) -> str | None:
    """The spaced digits on the first line after </scratch> (or alone, for a direct answer)."""
    if "</scratch>" in completion:
        tail = completion.rsplit("</scratch>", 1)[1]
    elif "<scratch>" in completion:
        return None  # the scratchpad never closed
    else:
        tail = completion
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines or not _SPACED_DIGITS.fullmatch(lines[0]):
        return None
    return str(int(lines[0].replace(" ", "")))


class _Problems:
    """The d-digit problems of one split, each drawn once.

    Small pools (1-2 digits: at most 8100 pairs) are listed and shuffled; larger ones are
    sampled and checked against the ones already drawn.
    """

    LISTED = 100_000

    def __init__(self, digits: int, test: bool):
        self.lo, self.hi = (10 ** (digits - 1) if digits > 1 else 0), 10**digits - 1
        self.test, self.seen, self.exhausted = test, set(), False
        self.listed: list[tuple[int, int]] | None = None

    def draw(self, rng: random.Random) -> tuple[int, int] | None:
        if (self.hi - self.lo + 1) ** 2 <= self.LISTED:
            if self.listed is None:
                span = range(self.lo, self.hi + 1)
                self.listed = [(a, b) for a in span for b in span if _in_test(a, b) == self.test]
                rng.shuffle(self.listed)
            if not self.listed:
                self.exhausted = True
                return None
            return self.listed.pop()
        while True:
            a, b = rng.randint(self.lo, self.hi), rng.randint(self.lo, self.hi)
            if _in_test(a, b) == self.test and (a, b) not in self.seen:
                self.seen.add((a, b))
                return a, b


def _example(id_: str, a: int, b: int) -> Example:
    d = max(len(str(a)), len(str(b)))
    return Example(id_, f"{a} + {b}", str(a + b), group=f"{d} digit" + ("s" if d > 1 else ""))


def _read_fewshot(path) -> list[tuple[Example, str]]:
    out = []
    for record in read_exemplars(path):
        question = record.get("question")
        m = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", question)
        if not m:
            raise record.error(f"field 'question' must look like '23 + 45', got {question!r}")
        a, b = int(m[1]), int(m[2])
        if record.get("answer") != str(a + b):
            raise record.error(f"field 'answer' is {record.get('answer')!r}, but {a} + {b} = {a + b}")
        out.append((_example("", a, b), record.get("rationale")))
    return out


def _operands(example: Example) -> tuple[str, str]:
    a, _, b = example.question.partition(" + ")
    return a, b


def _digits(example: Example) -> int:
    return max(len(x) for x in _operands(example))


def _spaced(number: str | int) -> str:
    return " ".join(str(number))


def _in_test(a: int, b: int) -> bool:
    """A fixed fifth of all problems is held out, so train and test never share one."""
    return zlib.crc32(f"{a}+{b}".encode()) % 5 == 0
