"""Generators: backends that turn prompts into completions."""

# Importing a backend registers it; vllm_backend imports vllm only when it is used.
from selftaught.generation import openai_server, transformers_backend, vllm_backend  # noqa: F401
from selftaught.generation.base import (
    Completion,
    Generator,
    SamplingParams,
    backend_names,
    get_generator,
    register,
)

__all__ = ["Completion", "Generator", "SamplingParams", "backend_names", "get_generator", "register"]
