"""The user's own question-answer data: JSONL or CSV files (or datasets.load_dataset).

The fields holding the question, the answer and (for multiple choice) the choices are options;
so is the checker: exact, numeric, letter, math (math-verify), or a function of the user's
named by import path (``package.module:function``, imported, never evaluated).
"""

from __future__ import annotations

from dataclasses import dataclass

from selftaught.config import ConfigError
from selftaught.tasks.answers import make_checker
from selftaught.tasks.base import Example, Task, option, register
from selftaught.tasks.commonsenseqa import format_choices, marks_correct
from selftaught.tasks.data import (
    DataOptions, Record, answer_label, check_unique_ids, exemplar_choices, parse_choices,
    prompt_file, read_exemplars, seeded_sample,
)


@dataclass
class CustomOptions(DataOptions):
    question_field: str = option("Field holding the question (dotted for nesting: a.b).", default="question")
    answer_field: str = option(
        "Field holding the final answer (for multiple choice: the right choice's label).",
        default="answer",
    )
    choices_field: str | list[str] | None = option(
        "Multiple choice: one field holding the choices (a list of texts, a {label: text} "
        "mapping, a list of {label, text}, or in CSV texts split by choices_separator), or a "
        "list of fields, one per choice, labelled A, B, C...",
        default=None,
    )
    choices_separator: str = option("Separator of the choices in one CSV field.", default="|")
    id_field: str | None = option("Field holding a unique id (default: the record's position).", default=None)
    checker: str | None = option(
        "How an answer is checked: exact, numeric, letter, math (math-verify, for LaTeX), or "
        "package.module:function called as function(predicted, answer) -> bool. Default: "
        "letter with choices, exact without.",
        default=None,
    )

    def __post_init__(self) -> None:
        self.check_sources("custom")
        if self.checker is None:
            self.checker = "letter" if self.choices_field else "exact"
        if self.checker == "letter" and not self.choices_field:
            raise ConfigError("task.options.checker=letter needs task.options.choices_field")
        if self.choices_field and self.checker in ("exact", "numeric", "math"):
            raise ConfigError(
                f"task.options.checker={self.checker} cannot check a choice; with "
                "task.options.choices_field use letter (the default) or a function of yours"
            )


@register
class Custom(Task):
    name = "custom"
    description = "your own data: JSONL/CSV, configurable fields and checker (exact, numeric, letter, math, fn)"
    Options = CustomOptions
    splits = ("train", "test")
    stop = ("\n\n", "\nQ:")

    def __init__(self, options=None):
        super().__init__(options)
        self.splits = self.options.splits(self.splits)
        self.checker = make_checker(self.options.checker)
        default = "custom_choices.yaml" if self.options.choices_field else "custom.yaml"
        self._fewshot = [
            (self._exemplar(r), r.get("rationale"))
            for r in read_exemplars(self.options.prompt_file or prompt_file(default))
        ]

    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        self.check_split(split)
        o = self.options
        examples = []
        records = o.records(split)
        for i, r in enumerate(records):
            choices = self._choices(r) if o.choices_field else None
            answer = r.get(o.answer_field)
            if choices:
                answer = answer_label(answer, choices, r, o.answer_field)
            id_ = r.get(o.id_field) if o.id_field else f"{split}-{i}"
            examples.append(Example(id_, r.get(o.question_field).strip(), answer.strip(), choices))
        check_unique_ids(examples, records, o.id_field or "id")
        return seeded_sample(examples, size, seed, f"{self.name}-{split}")

    def _choices(self, record: Record) -> tuple[tuple[str, str], ...]:
        field = self.options.choices_field
        if isinstance(field, list):  # one column per choice
            texts = {chr(ord("A") + i): record.get(f) for i, f in enumerate(field)}
            return parse_choices(texts, record, ", ".join(field))
        raw = record.get(field, (str, list, dict))
        if isinstance(raw, str):
            raw = [t.strip() for t in raw.split(self.options.choices_separator)]
        return parse_choices(raw, record, field)

    def _exemplar(self, record: Record) -> Example:
        choices = exemplar_choices(record) if self.options.choices_field else None
        answer = record.get("answer")
        if choices:
            answer = answer_label(answer, choices, record, "answer")
        return Example("", record.get("question").strip(), answer, choices)

    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        return self._fewshot

    def format_question(self, example: Example, hint: bool = False) -> str:
        # §3.2: the hint gives the answer (marks the right choice); never in a training example.
        if example.choices:
            return f"Q: {example.question}\n{format_choices(example, hint)}\nA:"
        tail = f" (Hint: the answer is {example.answer}.)" if hint else ""
        return f"Q: {example.question}{tail}\nA:"

    def format_completion(self, example: Example, rationale: str) -> str:
        if not example.choices:
            return self.format_answer(rationale, example.answer)
        final = f"The answer is {dict(example.choices)[example.answer]} ({example.answer.lower()})."
        return f" {rationale} {final}" if rationale else f" {final}"

    def format_answer(self, rationale: str, answer: str) -> str:
        return f" {rationale} The answer is {answer}." if rationale else f" The answer is {answer}."

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return self.checker.extract(completion, example)

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return self.checker.is_correct(predicted, example)

    @property
    def states_equations(self) -> bool:
        return self.options.checker == "numeric"  # numbers computed in the rationale

    def leaks_hint(self, completion: str, example: Example) -> bool:
        # With choices the hint is commonsenseqa's "(CORRECT)" tag.
        return super().leaks_hint(completion, example) or bool(example.choices) and marks_correct(completion)
