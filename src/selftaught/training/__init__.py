"""Trainers: backends that fine-tune the base model on kept rationales."""

from selftaught.training import transformers_backend  # noqa: F401  (registers the backend)
from selftaught.training.base import TrainExample, Trainer, TrainResult, backend_names, get_trainer, register

__all__ = ["TrainExample", "TrainResult", "Trainer", "backend_names", "get_trainer", "register"]
