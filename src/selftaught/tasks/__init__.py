"""Tasks: data, few-shot prompts, hints, answer extraction and checking."""

from selftaught.tasks import addition, commonsenseqa, custom, gsm8k, reasoning_gym  # noqa: F401  (registers them)
from selftaught.tasks.base import (
    DataError, Example, Task, describe_options, get_task, register, task_class, task_names,
)

__all__ = [
    "DataError", "Example", "Task", "describe_options", "get_task", "register", "task_class",
    "task_names",
]
