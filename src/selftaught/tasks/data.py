"""Reading a task's data: JSONL or CSV files, `datasets.load_dataset`, and few-shot prompt files.

Every record remembers where it came from ("train.jsonl, line 12"), so a bad record is reported
by file, line and field before any model is loaded. We read local files ourselves rather than
through `datasets` because it cannot say which line of a file is malformed.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from selftaught.config import ConfigError
from selftaught.tasks.base import DataError, option


@dataclass(frozen=True)
class Record:
    where: str  # "data/train.jsonl, line 12" or "tau/commonsense_qa split train, row 12"
    fields: dict[str, Any]

    def get(self, name: str, kind: type | tuple[type, ...] = str, required: bool = True) -> Any:
        """Field ``name`` (dotted for nesting: "question.stem"), checked to be of ``kind``."""
        value: Any = self.fields
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value or value[part] is None:
                if not required:
                    return None
                raise DataError(f"{self.where}: missing field {name!r}")
            value = value[part]
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a CSV or JSON answer of 18 is the string "18"
        if not isinstance(value, kind):
            want = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
            raise DataError(f"{self.where}: field {name!r} must be a {want}, got {value!r}")
        if kind is str and not value.strip():
            raise DataError(f"{self.where}: field {name!r} is empty")
        return value

    def error(self, text: str) -> DataError:
        return DataError(f"{self.where}: {text}")


@dataclass
class DataOptions:
    """Where a file-based task's splits come from; shared by commonsenseqa, gsm8k and custom."""

    data_files: dict[str, str] | None = option(
        "Local files by split, e.g. {train: train.jsonl, test: dev.jsonl} (JSONL; custom also "
        "reads .csv). Given, they replace `dataset`.",
        default=None,
    )
    dataset: str | None = option(
        "Name (or local folder) for datasets.load_dataset, used when data_files is not given "
        "(needs `pip install 'selftaught[datasets]'` and, for the Hub, internet).",
        default=None,
    )
    dataset_config: str | None = option("Configuration name passed to datasets.load_dataset.", default=None)
    prompt_file: str | None = option(
        "A YAML file of your own few-shot exemplars replacing the task's (see selftaught/prompts/).",
        default=None,
    )

    def check_sources(self, task: str) -> None:
        if self.data_files is not None:
            if not self.data_files:
                raise ConfigError("task.options.data_files is empty; give e.g. {train: FILE, test: FILE}")
            for split, path in self.data_files.items():
                if not isinstance(path, str) or not Path(path).is_file():
                    raise DataError(f"{path}: no such file (task.options.data_files.{split})")
        elif not self.dataset:
            raise ConfigError(
                f"task {task!r} needs its data: give task.options.data_files (e.g. "
                f"task.options.data_files.train=train.jsonl) or task.options.dataset"
            )
        if self.prompt_file is not None and not Path(self.prompt_file).is_file():
            raise DataError(f"{self.prompt_file}: no such file (task.options.prompt_file)")

    def splits(self, hub_splits: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.data_files) if self.data_files else hub_splits

    def records(self, split: str) -> list[Record]:
        if self.data_files:
            return read_file(Path(self.data_files[split]))
        return read_hub(self.dataset, self.dataset_config, split)


def read_file(path: Path) -> list[Record]:
    """The records of a JSONL (one object a line) or CSV (with a header) file; never empty."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = list(_read_jsonl(path))
    elif suffix in (".csv", ".tsv"):
        records = list(_read_csv(path, "\t" if suffix == ".tsv" else ","))
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl or .csv")
    if not records:
        raise DataError(f"{path}: no examples in the file")
    return records


def _read_jsonl(path: Path):
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(fields, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object, got {type(fields).__name__}")
            yield Record(f"{path}, line {n}", fields)


def _read_csv(path: Path, delimiter: str):
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            return
        try:
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                if None in row or None in row.values():
                    got = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                    raise DataError(f"{where}: expected {len(reader.fieldnames)} fields "
                                    f"({', '.join(reader.fieldnames)}), got {got}")
                if any(v.strip() for v in row.values()):
                    yield Record(where, dict(row))
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None


def read_hub(name: str, config: str | None, split: str) -> list[Record]:
    """One split through `datasets.load_dataset` (a Hub name, or a local folder of files)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "task.options.dataset needs the `datasets` package: pip install 'selftaught[datasets]' "
            "(or give local files with task.options.data_files)"
        ) from None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, unknown name, unknown split: all end the same way
        raise DataError(
            f"datasets.load_dataset({name!r}, {config!r}, split={split!r}) failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; download the files "
            "and give them as task.options.data_files instead"
        ) from None
    records = [Record(f"{name} split {split}, row {i}", dict(r)) for i, r in enumerate(rows)]
    if not records:
        raise DataError(f"{name} split {split}: no examples")
    return records


def seeded_sample(items: list, size: int | None, seed: int, salt: str) -> list:
    """The first ``size`` of ``items`` after a shuffle fixed by the seed (all when None)."""
    items = list(items)
    random.Random(f"{salt}-{seed}").shuffle(items)
    return items if size is None else items[:size]


def check_unique_ids(examples: list, records: list[Record], field: str) -> None:
    """Ids key every saved record of a run, so two questions may not share one."""
    seen: dict[str, Record] = {}
    for e, r in zip(examples, records):
        if e.id in seen:
            first = seen[e.id].where.rpartition(", ")[2]
            raise r.error(f"field {field!r}: {e.id!r} appears more than once (first on {first})")
        seen[e.id] = r


# --- few-shot prompt files ----------------------------------------------------------------

def prompt_file(name: str) -> Path:
    """One of the project's own exemplar files, shipped in selftaught/prompts/."""
    return Path(str(resources.files("selftaught") / "prompts" / name))


def read_exemplars(path: str | Path) -> list[Record]:
    """The exemplars of a YAML prompt file: a list of mappings with question, answer,
    rationale and (multiple choice) choices; each remembers its line for error messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise DataError(f"{path}: no such prompt file") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: a prompt file is a non-empty YAML list of exemplars "
                        "(- question: ..., answer: ..., rationale: ...)")
    out = []
    for item, item_node in zip(data, node.value):
        where = f"{path}, line {item_node.start_mark.line + 1}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: an exemplar is a mapping with question, answer and rationale")
        out.append(Record(where, item))
    return out


def exemplar_choices(record: Record) -> tuple[tuple[str, str], ...]:
    """Choices written as a mapping {A: text, ...} or a list of texts (labelled A, B, ...)."""
    raw = record.get("choices", (dict, list))
    return parse_choices(raw, record, "choices")


def parse_choices(raw: Any, record: Record, name: str) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, dict):
        pairs = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list) and all(isinstance(c, dict) for c in raw):  # [{label, text}, ...]
        try:
            pairs = [(str(c["label"]), c["text"]) for c in raw]
        except KeyError as e:
            raise record.error(f"field {name!r}: every choice needs a {e.args[0]!r}") from None
    elif isinstance(raw, list):
        pairs = [(chr(ord("A") + i), c) for i, c in enumerate(raw)]
    else:
        raise record.error(f"field {name!r} must be a list or mapping of choices, got {raw!r}")
    if len(pairs) < 2:
        raise record.error(f"field {name!r} must hold at least two choices")
    for label, text in pairs:
        if not isinstance(text, (str, int, float)) or not str(text).strip():
            raise record.error(f"field {name!r}: choice {label!r} has no text")
    labels = [label.upper() for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise record.error(f"field {name!r}: choice labels repeat ({', '.join(labels)})")
    return tuple((label, str(text).strip()) for label, text in pairs)


def answer_label(answer: str, choices: tuple[tuple[str, str], ...], record: Record, name: str) -> str:
    """The choice label ``answer`` names (case-insensitively), or an error naming the field."""
    for label, _ in choices:
        if label.upper() == answer.strip().upper():
            return label
    raise record.error(
        f"field {name!r} is {answer!r}, which is not among the choice labels "
        f"{', '.join(label for label, _ in choices)}"
    )
