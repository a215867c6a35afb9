"""The task interface: data, prompts, answer extraction and checking.

A new task is one file in this package that subclasses ``Task`` and decorates it with
``@register``; the loop never names a task.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from selftaught.config import ConfigError, describe, from_dict


class DataError(ValueError):
    """Bad task data; the message names the file, line and field."""


@dataclass(frozen=True)
class Example:
    """One question x with its correct final answer y (and no rationale)."""

    id: str
    question: str
    answer: str
    choices: tuple[tuple[str, str], ...] | None = None  # (label, text) for multiple choice
    group: str | None = None  # reported separately in the metrics, e.g. "3 digits"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "choices": [list(c) for c in self.choices] if self.choices else None,
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        choices = tuple(tuple(c) for c in d["choices"]) if d.get("choices") else None
        return cls(d["id"], d["question"], d["answer"], choices, d.get("group"))


def option(help: str, **kw: Any) -> Any:
    """A task option with its help text, which `selftaught tasks` prints."""
    return field(metadata={"help": help}, **kw)


@dataclass
class NoOptions:
    pass


class Task(ABC):
    """How a dataset is loaded, prompted, answered and checked."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    stop: ClassVar[tuple[str, ...]] = ("\n\n",)

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = from_dict(self.Options, dict(options or {}), "task.options.")

    # --- data -----------------------------------------------------------------------------
    @abstractmethod
    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        """The first ``size`` examples of ``split`` (all when None), in a seed-fixed order."""

    def load_train_and_validation(
        self, train_size: int | None, validation_size: int, seed: int, validation_split: str | None = None
    ) -> tuple[list[Example], list[Example]]:
        """The training questions D and the validation questions, which are never trained on.

        Validation is the dataset's own dev split when ``validation_split`` is given; otherwise
        the ``validation_size`` questions drawn right after the training ones from the training
        split, so D is the same draw as without validation and the two never share a question.
        """
        if validation_split is not None:
            self.check_split(validation_split)
            return self.load("train", train_size, seed), self.load(validation_split, validation_size, seed)
        if train_size is None:
            everything = self.load("train", None, seed)
            if len(everything) <= validation_size:
                raise ConfigError(
                    f"task {self.name!r}: the training split has {len(everything)} questions, not "
                    f"more than eval.validation_size={validation_size}; lower eval.validation_size "
                    "or give a dev split as eval.validation_split"
                )
            return everything[:-validation_size], everything[-validation_size:]
        both = self.load("train", train_size + validation_size, seed)
        if len(both) < train_size + validation_size:
            raise ConfigError(
                f"task {self.name!r}: the training split has {len(both)} questions, fewer than "
                f"task.train_size + eval.validation_size = {train_size} + {validation_size}; lower "
                "one of them or give a dev split as eval.validation_split"
            )
        return both[:train_size], both[train_size:]

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(
                f"task {self.name!r} has no split {split!r}; it has: {', '.join(self.splits)}"
            )

    # --- prompts --------------------------------------------------------------------------
    @abstractmethod
    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        """The few-shot examples (x, r) with their answers y in x; §3.2 hint style if asked."""

    @abstractmethod
    def format_question(self, example: Example, hint: bool = False) -> str:
        """The text the model continues with its rationale and answer."""

    @abstractmethod
    def format_answer(self, rationale: str, answer: str) -> str:
        """The completion for rationale r and answer y; an empty r gives a direct answer."""

    def format_completion(self, example: Example, rationale: str) -> str:
        """An exemplar's completion; tasks whose answer text needs the choices override it."""
        return self.format_answer(rationale, example.answer)

    @property
    def exemplar_end(self) -> str:
        """What follows each few-shot exemplar: the stop string the model learns to emit."""
        return self.stop[0]

    def fewshot_prompt(self, hint: bool = False, direct: bool = False) -> str:
        return "".join(
            self.format_question(x, hint) + self.format_completion(x, "" if direct else r) + self.exemplar_end
            for x, r in self.exemplars(hint)
        )

    def prompt(self, example: Example, hint: bool = False, direct: bool = False) -> str:
        return self.fewshot_prompt(hint, direct) + self.format_question(example, hint)

    # --- the hint (§3.2) ----------------------------------------------------------------------
    def hint_text(self, example: Example) -> str:
        """What the hint adds to the question: the text between the common start and end of the
        question with and without it, e.g. " (Hint: the answer is 85.)" or " (CORRECT)"."""
        plain, hinted = self.format_question(example, False), self.format_question(example, True)
        start = 0
        while start < min(len(plain), len(hinted)) and plain[start] == hinted[start]:
            start += 1
        end = 0
        while end < min(len(plain), len(hinted)) - start and plain[-1 - end] == hinted[-1 - end]:
            end += 1
        return hinted[start : len(hinted) - end]

    def leaks_hint(self, completion: str, example: Example) -> bool:
        """True when a rationalized completion repeats the hint: the word "hint" or the hint's
        own text. Such a rationale leans on an answer it was given, and it would teach the model
        to expect one, so it is not kept (§3.2: the hint never appears in a training example).
        Tasks whose hint is something else (a "(CORRECT)" tag) override this."""
        if _HINT_WORD.search(completion):
            return True
        hint = _squash(self.hint_text(example))
        return bool(hint) and hint in _squash(completion)

    # --- answers --------------------------------------------------------------------------
    @abstractmethod
    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        """The final answer a completion commits to, or None if it gives none.

        ``example``, where the caller has it, lets a multiple-choice task turn a choice named
        by its text into its label; without it ``is_correct`` still resolves the text.
        """

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return predicted is not None and predicted == example.answer

    @property
    def states_equations(self) -> bool:
        """Whether this task's rationales compute in arithmetic equations, so that
        loop.step_checker=auto checks them (see tasks/steps.py)."""
        return False


_HINT_WORD = re.compile(r"\bhint", re.IGNORECASE)


def _squash(text: str) -> str:
    """Lower case, runs of white space as one space: "( CORRECT )" and "(correct)" compare."""
    return " ".join(text.lower().replace("(", " ( ").replace(")", " ) ").split())


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def task_class(name: str) -> type[Task]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(task_names())}")
    return _REGISTRY[name]


def get_task(name: str, options: dict[str, Any] | None = None) -> Task:
    return task_class(name)(options)


def describe_options(cls: type[Task]) -> list[tuple[str, str, str]]:
    """(key, default, help) of each of a task's options, as `selftaught tasks` lists them."""
    return [(f"task.options.{k}", d, h) for k, d, h in describe(cls.Options)]


__all__ = [
    "DataError", "Example", "NoOptions", "Task", "describe_options", "get_task", "option",
    "register", "task_class", "task_names",
]
