"""Experiment tracking (``report_to``): each iteration's metrics and each fine-tune's losses.

Off by default. The run folder already holds everything; a tracker is a live view of it in
TensorBoard or Weights & Biases. Each is an optional extra, imported only when asked for, so
a missing package is a one-line error before any work starts.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from selftaught.config import ConfigError


class Tracker(ABC):
    name: ClassVar[str]
    package: ClassVar[str]  # the import that must succeed, and the pip extra to name

    def __init__(self, config: dict[str, Any], run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)

    @abstractmethod
    def metrics(self, record: dict[str, Any]) -> None:
        """Scalars of one iteration's metrics record, at step = iteration."""

    @abstractmethod
    def losses(self, n: int, losses: list[float]) -> None:
        """The per-step training loss of iteration n's fine-tune."""

    def close(self) -> None:
        pass


_REGISTRY: dict[str, type[Tracker]] = {}


def register(cls: type[Tracker]) -> type[Tracker]:
    _REGISTRY[cls.name] = cls
    return cls


class Trackers:
    """All the trackers a run asked for, called as one."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def metrics(self, record: dict[str, Any]) -> None:
        for t in self.trackers:
            t.metrics(record)

    def losses(self, n: int, losses: list[float]) -> None:
        for t in self.trackers:
            t.losses(n, losses)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def check_trackers(names: list[str]) -> None:
    """Raise ConfigError unless every tracker in ``names`` exists and its package imports."""
    for name in names:
        if name not in _REGISTRY:
            raise ConfigError(f"unknown report_to {name!r}; available: {', '.join(sorted(_REGISTRY))}")
        package = _REGISTRY[name].package
        try:
            __import__(package)
        except ImportError:
            raise ConfigError(
                f"report_to={name} needs the {package} package, which is not installed: "
                f"pip install 'selftaught[{name}]' (or drop {name} from report_to)"
            ) from None


def open_trackers(names: list[str], config: dict[str, Any], run_dir: Path) -> Trackers:
    names = list(dict.fromkeys(names))
    check_trackers(names)
    return Trackers([_REGISTRY[name](config, run_dir) for name in names])


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record, nested keys joined with '/': 'accuracy_by_group/2 digits'."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in scalars(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iteration":
            out[key] = float(value)
    return out


@register
class TensorBoard(Tracker):
    """Event files in RUN/tensorboard: ``tensorboard --logdir RUN/tensorboard``."""

    name = "tensorboard"
    package = "tensorboard"

    def __init__(self, config: dict[str, Any], run_dir: Path):
        super().__init__(config, run_dir)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def metrics(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(f"iteration/{key}", value, record["iteration"])
        self.writer.flush()

    def losses(self, n: int, losses: list[float]) -> None:
        # One curve per iteration: each fine-tune starts again from the base model M.
        for step, loss in enumerate(losses, 1):
            self.writer.add_scalar(f"train/loss_iteration_{n:02d}", loss, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register
class WandB(Tracker):
    """A Weights & Biases run; a resumed selftaught run continues the same W&B run."""

    name = "wandb"
    package = "wandb"

    def __init__(self, config: dict[str, Any], run_dir: Path):
        super().__init__(config, run_dir)
        import wandb

        id_file = self.run_dir / "wandb-id.txt"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:8])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "selftaught"), name=self.run_dir.name,
            id=id_file.read_text().strip(), resume="allow", dir=str(self.run_dir),
            config=config,
        )
        self.run.define_metric("iteration")
        self.run.define_metric("iteration/*", step_metric="iteration")
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")

    def metrics(self, record: dict[str, Any]) -> None:
        self.run.log({"iteration": record["iteration"],
                      **{f"iteration/{k}": v for k, v in scalars(record).items()}})

    def losses(self, n: int, losses: list[float]) -> None:
        for step, loss in enumerate(losses, 1):
            self.run.log({"train/step": step, f"train/loss_iteration_{n:02d}": loss})

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() can return before wandb-core has written the history (offline: 5 runs in 16
        # here); teardown waits for it, so the run folder is complete when the run ends.
        wandb.teardown()
