"""The trainer interface: any backend that turns training examples into a checkpoint.

A new backend is one file in this package with a ``Trainer`` subclass decorated by
``@register``; the loop only calls ``train``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from selftaught.config import ConfigError, TrainingConfig


@dataclass(frozen=True)
class TrainExample:
    """``prompt`` is context only (no loss); the loss is on ``completion``: rationale + answer."""

    prompt: str
    completion: str


@dataclass
class TrainResult:
    checkpoint: str
    steps: int
    seconds: float
    tokens: int  # tokens processed (prompt + completion, no padding)
    losses: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class Trainer(ABC):
    name: ClassVar[str]

    def __init__(self, config: TrainingConfig, seed: int = 0):
        self.config = config
        self.seed = seed

    @abstractmethod
    def train(self, base_model: str, examples: list[TrainExample], steps: int, out_dir: Path) -> TrainResult:
        """Fine-tune ``base_model`` for ``steps`` steps; save an HF checkpoint in ``out_dir``."""


_REGISTRY: dict[str, type[Trainer]] = {}


def register(cls: type[Trainer]) -> type[Trainer]:
    _REGISTRY[cls.name] = cls
    return cls


def get_trainer(config: TrainingConfig, seed: int = 0) -> Trainer:
    if config.backend not in _REGISTRY:
        raise ConfigError(
            f"unknown training.backend {config.backend!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[config.backend](config, seed)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)
