"""CommonsenseQA (Talmor et al., 2019), the paper's main benchmark (§4.2, §5.2).

Reads the official JSONL schema (``id``, ``answerKey``, ``question.stem``, ``question.choices``
with ``label`` and ``text``) from local files, or the Hub's flattened copy through
``datasets.load_dataset``. The prompt lists the choices as the paper does; the rationalization
hint marks the right one "(CORRECT)", in its own few-shot prompt of the same style (§3.2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from selftaught.tasks.answers import extract_choice, letter_is_correct
from selftaught.tasks.base import Example, Task, option, register
from selftaught.tasks.data import (
    DataOptions, Record, answer_label, check_unique_ids, exemplar_choices, parse_choices,
    prompt_file, read_exemplars, seeded_sample,
)


@dataclass
class CommonsenseQAOptions(DataOptions):
    dataset: str | None = option(
        "Name for datasets.load_dataset when data_files is not given (Hub splits: train, "
        "validation; the test split has no answers). Untested here: it needs internet.",
        default="tau/commonsense_qa",
    )

    def __post_init__(self) -> None:
        self.check_sources("commonsenseqa")


@register
class CommonsenseQA(Task):
    name = "commonsenseqa"
    description = "CommonsenseQA, 5-way multiple choice (§4.2): official JSONL files or datasets"
    Options = CommonsenseQAOptions
    stop = ("\n\n", "\nQ:")

    def __init__(self, options=None):
        super().__init__(options)
        self.splits = self.options.splits(("train", "validation"))
        self._fewshot = [
            (_exemplar(r), r.get("rationale"))
            for r in read_exemplars(self.options.prompt_file or prompt_file("commonsenseqa.yaml"))
        ]

    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        self.check_split(split)
        records = self.options.records(split)
        examples = [_example(r) for r in records]
        check_unique_ids(examples, records, "id")
        return seeded_sample(examples, size, seed, f"{self.name}-{split}")

    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        return self._fewshot

    def format_question(self, example: Example, hint: bool = False) -> str:
        # §3.2: the hint marks the right choice; it is never part of a training example.
        return f"Q: {example.question}\n{format_choices(example, hint)}\nA:"

    def format_completion(self, example: Example, rationale: str) -> str:
        text = dict(example.choices)[example.answer]
        final = f"the answer is {text} ({example.answer.lower()})."
        return f" {rationale} Therefore, {final}" if rationale else f" The {final}"

    def format_answer(self, rationale: str, answer: str) -> str:
        final = f"the answer is ({answer.lower()})."
        return f" {rationale} Therefore, {final}" if rationale else f" The {final}"

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_choice(completion, example.choices if example else None)

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return letter_is_correct(predicted, example)

    def leaks_hint(self, completion: str, example: Example) -> bool:
        return super().leaks_hint(completion, example) or marks_correct(completion)


def format_choices(example: Example, hint: bool) -> str:
    """The paper's layout: "Answer Choices:" then "(a) text" a line, "(CORRECT)" on the right
    one when hinting."""
    lines = ["Answer Choices:"]
    for label, text in example.choices:
        mark = " (CORRECT)" if hint and label == example.answer else ""
        lines.append(f"({label.lower()}) {text}{mark}")
    return "\n".join(lines)


_CORRECT_TAG = re.compile(r"\(\s*correct\s*\)|\bmarked\s+(as\s+)?correct", re.IGNORECASE)


def marks_correct(completion: str) -> bool:
    """The hint's "(CORRECT)" tag repeated, in any case or spacing, or named ("marked correct")."""
    return _CORRECT_TAG.search(completion) is not None


def _example(record: Record) -> Example:
    """One record in the official schema, or the Hub's (question a string, choices as lists)."""
    if isinstance(record.fields.get("question"), dict):  # official JSONL
        stem = record.get("question.stem")
        choices = parse_choices(record.get("question.choices", list), record, "question.choices")
    else:  # tau/commonsense_qa on the Hub
        stem = record.get("question")
        raw = record.get("choices", dict)
        labels, texts = raw.get("label"), raw.get("text")
        if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts):
            raise record.error("field 'choices' must hold equally long lists 'label' and 'text'")
        choices = parse_choices(dict(zip(labels, texts)), record, "choices")
    answer = answer_label(record.get("answerKey"), choices, record, "answerKey")
    return Example(str(record.get("id")), stem.strip(), answer, choices)


def _exemplar(record: Record) -> Example:
    choices = exemplar_choices(record)
    answer = answer_label(record.get("answer"), choices, record, "answer")
    return Example("", record.get("question").strip(), answer, choices)


__all__ = ["CommonsenseQA", "format_choices", "marks_correct"]
