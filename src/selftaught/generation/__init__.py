"""Generators: backends that turn prompts into completions."""

from selftaught.generation import transformers_backend  # noqa: F401  (registers the backend)
from selftaught.generation.base import (
    Completion,
    Generator,
    SamplingParams,
    backend_names,
    get_generator,
    register,
)

__all__ = ["Completion", "Generator", "SamplingParams", "backend_names", "get_generator", "register"]
