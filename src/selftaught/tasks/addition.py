"""n-digit addition (paper §4.3), generated from a seed.

The "plain" format states the sum as its rationale ("47 + 38 = 85. The answer is 85."): the
embedded 135M model can follow it few-shot at 1-2 digits, where it is right far more often
than chance, which STaR needs to get started.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from selftaught.config import ConfigError
from selftaught.tasks.base import Example, Task, register

# Few-shot exemplars (x, r, y); the paper uses a handful of hand-written ones.
FEWSHOT = [(23, 45), (7, 8), (58, 36), (91, 9), (4, 62), (37, 48)]

_ANSWER = re.compile(r"The answer is\s*(-?\d[\d,]*)")


@dataclass
class AdditionOptions:
    digits_min: int = 1
    digits_max: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.digits_min <= self.digits_max <= 30:
            raise ConfigError(
                "task.options must have 1 <= digits_min <= digits_max <= 30, got "
                f"digits_min={self.digits_min}, digits_max={self.digits_max}"
            )


@register
class Addition(Task):
    name = "addition"
    description = "n-digit addition, generated from the seed (options: digits_min, digits_max)"
    Options = AdditionOptions
    splits = ("train", "test")
    stop = ("\n\n", "\nQ:")

    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        self.check_split(split)
        if size is None:
            raise ConfigError("addition is generated: give task.train_size and eval.size")
        rng, out = random.Random(f"addition-{split}-{seed}"), []
        while len(out) < size:
            d = rng.randint(self.options.digits_min, self.options.digits_max)
            lo = 10 ** (d - 1) if d > 1 else 0
            a, b = rng.randint(lo, 10**d - 1), rng.randint(lo, 10**d - 1)
            if _in_test(a, b) == (split == "test"):
                out.append(self._example(f"{split}-{len(out)}", a, b))
        return out

    @staticmethod
    def _example(id_: str, a: int, b: int) -> Example:
        d = max(len(str(a)), len(str(b)))
        return Example(id_, f"{a} + {b}", str(a + b), group=f"{d} digit" + ("s" if d > 1 else ""))

    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        return [(self._example("", a, b), f"{a} + {b} = {a + b}.") for a, b in FEWSHOT]

    def format_question(self, example: Example, hint: bool = False) -> str:
        # §3.2: the hint gives the answer; it is never part of a training example.
        tail = f" (Hint: the answer is {example.answer}.)" if hint else ""
        return f"Q: What is {example.question}?{tail}\nA:"

    def format_answer(self, rationale: str, answer: str) -> str:
        return f" {rationale} The answer is {answer}." if rationale else f" The answer is {answer}."

    def extract_answer(self, completion: str) -> str | None:
        found = _ANSWER.findall(completion)
        if not found:
            return None
        return str(int(found[-1].replace(",", "")))


def _in_test(a: int, b: int) -> bool:
    """A fixed fifth of all problems is held out, so train and test never share one."""
    return zlib.crc32(f"{a}+{b}".encode()) % 5 == 0
