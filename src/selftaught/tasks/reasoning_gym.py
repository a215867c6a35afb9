"""Any reasoning-gym task (procedurally generated, verifiable), scored by its own ``score_answer``.

Questions come from the task's generator, seeded; a question's hash puts it in train (70%),
test (20%) or the few-shot pool (10%), so the splits and the exemplars never share a question.
Exemplars show the task's worked solution where the generator gives one (``gsm_symbolic``'s
``answer_cot``); for a dozen common tasks without one, rationales written by hand for this project
(``prompts/reasoning_gym_<task>.yaml``); otherwise only the answer, with a note at start that
STaR then has no rationale to imitate. The format:

    Question: <question>
    Answer: <rationale>
    <answer>final answer</answer>

reasoning-gym's own convention for the final answer, which also ends multi-line answers (grids).
"""

from __future__ import annotations

import re
import sys
import zlib
from dataclasses import dataclass
from typing import Any

from selftaught.config import ConfigError
from selftaught.tasks.base import DataError, Example, Task, option, register
from selftaught.tasks.data import prompt_file, read_exemplars

_VIRTUAL_SIZE = 10**6  # reasoning-gym generates item i lazily from seed + i
_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
# Tasks whose rationales compute in equations, so loop.step_checker=auto checks them.
_ARITHMETIC = {"basic_arithmetic", "chain_sum", "products", "decimal_arithmetic", "decimal_chain_sum",
               "leg_counting", "gsm_symbolic", "simple_equations", "gcd", "lcm"}
_NOTED: set[str] = set()  # tasks whose missing rationales were already pointed out


@dataclass
class ReasoningGymOptions:
    dataset: str | None = option(
        "The reasoning-gym task, e.g. leg_counting, basic_arithmetic, gsm_symbolic "
        "(all names: python -c 'import reasoning_gym; print(sorted(reasoning_gym.factory.DATASETS))').",
        default=None,
    )
    config: dict[str, Any] = option(
        "The task's own config, passed to reasoning_gym.create_dataset (e.g. {min_animals: 2}).",
        default_factory=dict,
    )
    seed: int | None = option("Generator seed (default: the run's seed).", default=None)
    fewshot: int = option("Exemplars drawn from the generator (0-10).", default=3)
    min_score: float = option("An answer is right when score_answer gives at least this.", default=1.0)
    prompt_file: str | None = option(
        "A YAML file of your own exemplars (question, answer, rationale) instead of generated ones.",
        default=None,
    )

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("task reasoning_gym needs task.options.dataset, e.g. "
                              "task.options.dataset=leg_counting")
        if not 0 <= self.fewshot <= 10:
            raise ConfigError(f"task.options.fewshot must be between 0 and 10, got {self.fewshot}")
        if not 0 < self.min_score <= 1:
            raise ConfigError(f"task.options.min_score must be in (0, 1], got {self.min_score}")


@register
class ReasoningGym(Task):
    name = "reasoning_gym"
    description = "any reasoning-gym task by name (size, seed, its own config), scored by its score_answer"
    Options = ReasoningGymOptions
    splits = ("train", "test")
    stop = ("</answer>", "\nQuestion:")

    def __init__(self, options=None):
        super().__init__(options)
        try:
            import reasoning_gym
        except ImportError:
            raise ConfigError(
                "task reasoning_gym needs the reasoning-gym package: pip install 'selftaught[reasoning-gym]'"
            ) from None
        self._rg = reasoning_gym
        name = self.options.dataset
        if name not in reasoning_gym.factory.DATASETS:
            raise ConfigError(f"task.options.dataset: reasoning-gym has no task {name!r}; it has: "
                              + ", ".join(sorted(reasoning_gym.factory.DATASETS)))
        self._generators: dict[int, Any] = {}
        self._entries: dict[str, dict] = {}
        self._seed = self.options.seed or 0  # the run's seed, once load() has seen it
        self._generator(self._seed)  # reject a bad task config now, before any work
        self._fewshot: list[tuple[Example, str]] | None = None
        shipped = prompt_file(f"reasoning_gym_{name}.yaml")
        if self.options.prompt_file:  # read now: a bad file must stop the run before any work
            self._fewshot = _read_fewshot(self.options.prompt_file)
        elif shipped.is_file():  # our hand-written rationales for this task
            self._fewshot = _read_fewshot(shipped)[: self.options.fewshot]
        elif self.options.fewshot and not _worked_solution(self._generator(self._seed)[0]):
            _note_no_rationales(name)
        # A question shown as an exemplar is never also a training or held-out question.
        self._exemplar_questions = {x.question for x, _ in self._fewshot or []}

    def _generator(self, seed: int):
        if seed not in self._generators:
            try:
                self._generators[seed] = self._rg.create_dataset(
                    self.options.dataset, seed=seed, size=_VIRTUAL_SIZE, **self.options.config)
            except (TypeError, ValueError, AssertionError) as e:
                raise ConfigError(f"task.options.config is not a valid config for reasoning-gym task "
                                  f"{self.options.dataset!r}: {e}") from None
        return self._generators[seed]

    def load(self, split: str, size: int | None, seed: int) -> list[Example]:
        self.check_split(split)
        if size is None:
            raise ConfigError("reasoning_gym is generated: give task.train_size and eval.size")
        self._seed = seed if self.options.seed is None else self.options.seed
        return self._draw(split, size)

    def _draw(self, part: str, size: int) -> list[Example]:
        data, out, draws = self._generator(self._seed), [], 50 * size + 1000
        for i in range(draws):
            if len(out) == size:
                break
            entry = data[i]
            if _part(entry["question"]) != part or entry["question"].strip() in self._exemplar_questions:
                continue
            if entry["answer"] is None:
                raise DataError(f"reasoning-gym task {self.options.dataset!r} item {i}: it has no "
                                "reference answer (it is checked by a verifier), so the hint of "
                                "rationalization cannot be given; choose another task")
            id_ = f"{self.options.dataset}/{self._seed}/{i}"
            self._entries[id_] = entry
            group = entry["metadata"].get("source_dataset") if self.options.dataset == "composite" else None
            out.append(Example(id_, entry["question"].strip(), str(entry["answer"]), group=group))
        if len(out) < size:
            raise DataError(f"reasoning-gym task {self.options.dataset!r} gave only {len(out)} {part} "
                            f"questions of the {size} asked for in {draws} draws (few distinct "
                            "questions); ask for fewer or widen its config")
        return out

    def exemplars(self, hint: bool = False) -> list[tuple[Example, str]]:
        if self._fewshot is None:
            examples = self._draw("fewshot", self.options.fewshot) if self.options.fewshot else []
            self._fewshot = [(e, _worked_solution(self._entries[e.id])) for e in examples]
        return self._fewshot

    @property
    def exemplar_end(self) -> str:
        return "</answer>\n\n"

    def format_question(self, example: Example, hint: bool = False) -> str:
        # §3.2: the hint gives the answer; it is never part of a training example.
        tail = f"\n(Hint: the answer is {example.answer}.)" if hint else ""
        return f"Question: {example.question}{tail}\nAnswer:"

    def format_answer(self, rationale: str, answer: str) -> str:
        return f" {rationale}\n<answer>{answer}" if rationale else f" <answer>{answer}"

    def extract_answer(self, completion: str, example: Example | None = None) -> str | None:
        found = _TAG.findall(completion)
        return found[-1].strip() if found and found[-1].strip() else None

    @property
    def states_equations(self) -> bool:
        return self.options.dataset in _ARITHMETIC

    def is_correct(self, predicted: str | None, example: Example) -> bool:
        if predicted is None:
            return False
        _, seed, i = example.id.rsplit("/", 2)
        data = self._generator(int(seed))
        entry = self._entries.get(example.id) or data[int(i)]  # regenerated for a saved id
        try:
            return data.score_answer(predicted, entry) >= self.options.min_score
        except Exception:  # a scorer that cannot parse the answer: it is not right
            return False


def _read_fewshot(path) -> list[tuple[Example, str]]:
    return [(Example("", r.get("question").strip(), r.get("answer")), r.get("rationale", required=False) or "")
            for r in read_exemplars(path)]


def _note_no_rationales(name: str) -> None:
    if name in _NOTED:
        return
    _NOTED.add(name)
    print(f"selftaught: note: reasoning-gym task {name!r} gives no worked solutions, so its few-shot "
          "exemplars show answers without a rationale and STaR starts from direct answers; give "
          "exemplars with rationales in task.options.prompt_file=my_exemplars.yaml (a YAML list of "
          "question, answer, rationale, like selftaught/prompts/reasoning_gym_leg_counting.yaml)",
          file=sys.stderr)


def _part(question: str) -> str:
    bucket = zlib.crc32(question.encode()) % 10
    return "test" if bucket < 2 else "fewshot" if bucket == 2 else "train"


def _worked_solution(entry: dict) -> str:
    """The generator's own worked solution, without its final '#### answer' line; or none."""
    cot = entry["metadata"].get("answer_cot")
    if not isinstance(cot, str):
        return ""
    return "\n".join(line for line in cot.strip().splitlines() if not line.startswith("####")).strip()
