"""GSM8K grade-school math (Cobbe et al., 2021), the paper's §4.2 / §5.3.

Official JSONL schema: ``question``, and ``answer`` whose final answer follows ``####``. The
dataset's own solutions are never shown to the model: STaR learns from (x, y) alone. The hint
appends the answer to the question in parentheses, as the authors' prompts do (§3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from selftaught.tasks.answers import extract_number, normalize_number
from selftaught.tasks.base import Example, Task, option, register
from selftaught.tasks.data import (
    DataOptions, Record, check_unique_ids, prompt_file, read_exemplars, seeded_sample,
)


@dataclass
class GSM8KOptions(DataOptions):
    dataset: str | None = option(
        "Name for datasets.load_dataset when data_files is not given (Hub splits: train, test). "
        "Untested here: it needs internet.",
        default="openai/gsm8k",
    )
    dataset_config: str | None = option("Configuration name passed to datasets.load_dataset.", default="main")

    def __post_init__(self) -> None:
        self.check_sources("gsm8k")


@register
class GSM8K(Task):
    name = "gsm8k"
    description = "GSM8K math word problems (§4.2), numeric answers after ####: JSONL files or datasets"
    Options = GSM8KOptions
    stop = ("\n\n", "\nQ:")

    def __init__(self, options=None):
        super().__init__(options)
        self.splits = self.options.splits(("train", "test"))
        self._fewshot = [
            (Example("", r.get("question").strip(), _number(r, "answer", r.get("answer"))), r.get("rationale"))
            for r in read_exemplars(self.options.prompt_file or prompt_file("gsm8k.yaml"))
        ]

    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        self.check_split(split)
        examples = []
        records = self.options.records(split)
        for i, r in enumerate(records):
            solution = r.get("answer")
            if "####" not in solution:
                raise r.error("field 'answer' has no final answer after '####'")
            answer = _number(r, "answer", solution.rsplit("####", 1)[1])
            examples.append(Example(str(r.get("id", required=False) or f"{split}-{i}"),
                                    r.get("question").strip(), answer))
        check_unique_ids(examples, records, "id")
        return seeded_sample(examples, size, seed, f"{self.name}-{split}")

    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        return self._fewshot

    def format_question(self, example: Example, hint: bool = False) -> str:
        # §3.2: the hint gives the answer; it is never part of a training example.
        tail = f" ({example.answer})" if hint else ""
        return f"Q: {example.question}{tail}\nA:"

    def format_answer(self, rationale: str, answer: str) -> str:
        return f" {rationale}\n#### {answer}" if rationale else f" #### {answer}"

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        return extract_number(completion)

    states_equations = True  # "48/2 = 24": arithmetic the step checker can verify

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        return predicted is not None and normalize_number(predicted) == example.answer


def _number(record: Record, field: str, text: str) -> str:
    value = normalize_number(text)
    if value is None:
        raise record.error(f"field {field!r}: the final answer {text.strip()!r} is not a number")
    return value
