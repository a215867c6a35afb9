"""The generator interface: any backend that turns prompts into completions.

A new backend is one file in this package with a ``Generator`` subclass decorated by
``@register``; the loop only calls ``generate`` and ``close``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, register_options


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    n: int = 1  # completions per prompt
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Completion:
    text: str  # up to, not including, the stop string
    tokens: int  # generated tokens that were kept (the useful ones)
    finish: str  # "stop", "eos" or "length"
    stop: str | None = None  # the stop string that ended it


@dataclass
class GenerationStats:
    seconds: float = 0.0
    tokens: int = 0
    prompts: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class Generator(ABC):
    """Turns prompts into ``SamplingParams.n`` completions each, in prompt order."""

    name: ClassVar[str]
    Options: ClassVar[type | None] = None  # this backend's own config section, if it has one

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig):
        self.model_path = model_path
        self.model_config = model
        self.config = config
        self.stats = GenerationStats()

    @abstractmethod
    def generate(
        self, prompts: list[str], params: SamplingParams, desc: str = "generate",
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        """One list of ``params.n`` completions per prompt.

        ``seeds[i]`` is prompt i's seed (sample k draws with ``derive_seed(seeds[i], k)``), so
        a prompt gets the same samples however prompts are batched, chunked or resumed; None:
        seeds from ``params.seed`` and each prompt's position.
        """

    def close(self) -> None:
        """Free the model (the loop loads a new one every iteration)."""


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from its parts (run seed, iteration, stage, question id, sample...).

    A stable hash, unlike Python's hash() of a str, which changes from process to process; 31
    bits because servers and engines take a signed 32-bit seed."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def prompt_seeds(prompts: list[str], params: SamplingParams, seeds: list[int] | None) -> list[int]:
    """Each prompt's seed: the caller's, or one from params.seed and the prompt's position."""
    if seeds is None:
        return [derive_seed(params.seed, i) for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    return list(seeds)


_REGISTRY: dict[str, type[Generator]] = {}


def register(cls: type[Generator]) -> type[Generator]:
    """Make ``cls`` a backend; its ``Options`` dataclass, if any, is the generation.<name> section."""
    _REGISTRY[cls.name] = cls
    if getattr(cls, "Options", None) is not None:
        register_options("selftaught.generation", cls.name, cls.Options)
    return cls


def get_generator(model_path: str, model: ModelConfig, config: GenerationConfig) -> Generator:
    if config.backend not in _REGISTRY:
        raise ConfigError(
            f"unknown generation.backend {config.backend!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[config.backend](model_path, model, config)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def truncate_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """Cut ``text`` at the earliest stop string; return (kept text, stop or None)."""
    best, hit = len(text), None
    for s in stops:
        i = text.find(s)
        if i != -1 and i < best:
            best, hit = i, s
    return text[:best], hit
