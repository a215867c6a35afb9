"""selftaught as a Python library: a config object and a runner, as TRL has them.

``STaRConfig`` is the CLI's typed config (every ``key=value`` of ``selftaught run --help`` is a
field); ``STaR(config, train_data=..., test_data=..., checker=..., callbacks=...).run()`` runs
Algorithm 1 and returns a ``STaRResult``. The run folder is the CLI's: ``selftaught report`` and
``selftaught run --resume`` read it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from selftaught.config import ConfigError, RunConfig, from_dict, load_config
from selftaught.store import RunStore, atomic_write
from selftaught.tasks import DataError, Task, get_task

Checker = Callable[[str, str], bool]  # (predicted answer, ground-truth answer) -> correct?
Callback = Callable[[dict[str, Any]], "bool | None"]  # an iteration's metrics -> True to stop
Data = Iterable[Mapping[str, Any]]  # a list of dicts or a datasets.Dataset


@dataclass
class STaRConfig(RunConfig):
    """The config of a STaR run: the same fields, defaults and checks as ``selftaught run``.

    Sections are dataclasses or plain dicts, e.g.
    ``STaRConfig(task={"train_size": 64}, loop={"iterations": 2}, output_dir="runs/mine")``;
    a wrong key or value raises ``ConfigError`` naming it.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(hints[f.name]) and isinstance(value, Mapping):
                setattr(self, f.name, from_dict(hints[f.name], dict(value), f.name + "."))
        super().__post_init__()

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, *, overrides: Sequence[str] = ()) -> "STaRConfig":
        """A YAML file (as ``selftaught run CONFIG``) then ``section.key=value`` overrides."""
        return cls.from_dict(load_config(path, list(overrides)).to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "STaRConfig":
        return from_dict(cls, dict(data))


@dataclass
class STaRResult:
    """What a run produced; every file is in ``run_dir``."""

    metrics: list[dict[str, Any]]  # one record per iteration, 0 being the few-shot base model
    run_dir: Path
    last_checkpoint: Path | None  # M_N, the last iteration's model (None if no iteration ran)
    selected_checkpoint: Path | None  # the fine-tuned model best on validation (None: none ran)
    selected_iteration: int  # its iteration (0: no iteration ran)

    @property
    def accuracy(self) -> float:
        """Held-out accuracy of the last iteration's model."""
        return self.metrics[-1]["accuracy"]


class STaR:
    """Runs STaR (Algorithm 1 of Zelikman et al., 2022) from Python.

    Args:
        config: the run's ``STaRConfig`` (or the CLI's ``RunConfig``); not modified.
        train_data: training questions in memory, each a mapping with ``question`` and
            ``answer`` (and optionally ``choices``, a list of texts or a {label: text} mapping,
            with ``answer`` the right label; and ``id``). A list of dicts or a
            ``datasets.Dataset``. Given, the run uses the ``custom`` task on this data and
            ``test_data`` (both required), saved in ``RUN/data/`` so the run can be resumed.
        test_data: held-out questions, in the same form; accuracy is measured on them.
        checker: ``checker(predicted, answer) -> bool`` deciding whether an extracted final
            answer is right, for in-memory data or ``task.name='custom'``. A checker that
            can be imported (``module:function``) is saved in config.yaml, so
            ``selftaught run --resume`` uses it too.
        callbacks: functions called with each iteration's metrics record (``iteration``,
            ``accuracy``, kept examples, ...) after it is evaluated; one returning True stops
            the run after that iteration.
        exemplars: the few-shot worked examples for in-memory data, each a mapping with
            ``question``, ``rationale`` and ``answer`` (and ``choices`` for multiple choice);
            default: the ``custom`` task's generic ones. Yours, from your domain, serve better.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        train_data: Data | None = None,
        test_data: Data | None = None,
        checker: Checker | None = None,
        callbacks: Sequence[Callback] = (),
        exemplars: Data | None = None,
    ) -> None:
        self.config = STaRConfig.from_dict(config.to_dict())  # a copy, checked
        if (train_data is None) != (test_data is None):
            raise ConfigError("give train_data and test_data together (or neither, to use config.task)")
        self.data = None if train_data is None else {"train": _rows(train_data, "train_data"),
                                                     "test": _rows(test_data, "test_data")}
        if checker is not None and not callable(checker):
            raise ConfigError(f"checker must be a function (predicted, answer) -> bool, got {checker!r}")
        if checker is not None and self.data is None and self.config.task.name != "custom":
            raise ConfigError("checker= needs train_data/test_data or config.task.name='custom'")
        self.checker = checker
        if exemplars is not None and self.data is None:
            raise ConfigError("exemplars= goes with train_data/test_data (else: task.options.prompt_file)")
        self.exemplars = None if exemplars is None else _rows(exemplars, "exemplars")
        self.callbacks = tuple(callbacks)

    def run(self, *, resume: bool = False, overwrite: bool = False) -> STaRResult:
        """Run (``resume=True``: continue) the loop; returns when it ends or a callback stops it.

        Config and data are checked before the run folder is made; ``overwrite`` deletes an
        existing folder at ``config.output_dir`` first (never one a live run holds)."""
        from selftaught.loop import check_data, default_output_dir, run

        config = STaRConfig.from_dict(self.config.to_dict())
        if config.output_dir is None:
            config.output_dir = str(default_output_dir(config))
        root = Path(config.output_dir)
        if resume:
            store = RunStore.open(root, lock=True)
            saved = STaRConfig.from_dict(store.config())
            saved.loop = config.loop  # how far to go may change; what was computed may not
            config = saved
            print(f"resuming {root}: {store.progress()}")
        else:
            if self.data is not None:
                config = self._with_data(config, root / "data")
            elif self.checker is not None:
                config.task.options["checker"] = _import_path(self.checker)
            with tempfile.TemporaryDirectory() as tmp:  # the data, checked before root exists
                if self.data is not None:
                    self._write_data(Path(tmp))
                check_data(config, self._task(config, Path(tmp) if self.data else None))
            store = RunStore.create(root, config.to_dict(), overwrite)
            if self.data is not None:
                self._write_data(root / "data")
        print(f"run folder: {store.root}")
        try:
            history = run(config, store, self._task(config), self.callbacks)
        finally:
            store.close()
        return _result(history, store.root)

    # --- one level down -------------------------------------------------------------------
    def _with_data(self, config: STaRConfig, folder: Path) -> STaRConfig:
        """``config`` with the custom task reading the in-memory data's files in ``folder``."""
        rows = self.data["train"] + self.data["test"]
        options = {k: v for k, v in config.task.options.items() if k in ("prompt_file", "checker")}
        options["data_files"] = {split: str(folder / f"{split}.jsonl") for split in ("train", "test")}
        if self.exemplars is not None:
            options["prompt_file"] = str(folder / "exemplars.yaml")
        if any(r.get("choices") for r in rows):
            options["choices_field"] = "choices"
        if all("id" in r for r in rows):
            options["id_field"] = "id"
        data = config.to_dict()
        data["task"] = {**data["task"], "name": "custom", "options": options}
        data["eval"]["split"] = "test"
        config = STaRConfig.from_dict(data)
        if self.checker is not None:
            config.task.options["checker"] = _import_path(self.checker)
        return config

    def _write_data(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in self.data.items():
            atomic_write(folder / f"{split}.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
        if self.exemplars is not None:
            atomic_write(folder / "exemplars.yaml", yaml.safe_dump(self.exemplars, sort_keys=False))

    def _task(self, config: RunConfig, data_folder: Path | None = None) -> Task:
        options = dict(config.task.options)
        if data_folder is not None:
            options["data_files"] = {s: str(data_folder / f"{s}.jsonl") for s in options["data_files"]}
            if self.exemplars is not None:
                options["prompt_file"] = str(data_folder / "exemplars.yaml")
        if self.checker is not None:  # built with a stand-in, then given the function itself
            options["checker"] = "letter" if options.get("choices_field") else "exact"
        try:
            task = get_task(config.task.name, options)
        except DataError as e:
            raise _in_memory(e, data_folder) from None
        if self.checker is not None:
            from selftaught.tasks.answers import FunctionChecker

            task.checker = FunctionChecker(config.task.options["checker"], self.checker)
        return _Named(task, data_folder) if data_folder is not None else task


class _Named:
    """A task whose data errors name the in-memory row, not the temporary file."""

    def __init__(self, task: Task, folder: Path):
        self.task, self.folder = task, folder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def load(self, split: str, size: int | None, seed: int):
        try:
            return self.task.load(split, size, seed)
        except DataError as e:
            raise _in_memory(e, self.folder) from None


def _in_memory(e: DataError, folder: Path | None) -> DataError:
    if folder is None:
        return e
    text = re.sub(rf"{re.escape(str(folder))}/(\w+)\.jsonl, line (\d+)",
                  lambda m: f"{m[1]}_data[{int(m[2]) - 1}]", str(e))
    return DataError(text)


def _rows(data: Data, name: str) -> list[dict[str, Any]]:
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise DataError(f"{name}[{i}] must be a mapping with question and answer, got {type(row).__name__}")
        for field in ("question", "answer"):
            if row.get(field) is None:
                raise DataError(f"{name}[{i}]: missing field {field!r}")
        rows.append(dict(row))
    if not rows:
        raise DataError(f"{name} is empty")
    return rows


def _import_path(fn: Callable) -> str:
    """``module:qualname``; ``selftaught run --resume`` can import it unless it is local."""
    return f"{getattr(fn, '__module__', None) or 'unknown'}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def _result(history: list[dict[str, Any]], root: Path) -> STaRResult:
    from selftaught.loop import selected

    best = selected(history)  # on validation, never on the held-out split
    trained = [m for m in history if m["iteration"] > 0]
    return STaRResult(
        metrics=history, run_dir=root,
        last_checkpoint=Path(trained[-1]["checkpoint"]) if trained else None,
        selected_checkpoint=Path(best["checkpoint"]) if best["iteration"] > 0 else None,
        selected_iteration=best["iteration"],
    )
