"""Tasks: data, few-shot prompts, hints, answer extraction and checking."""

from selftaught.tasks import addition  # noqa: F401  (registers the task)
from selftaught.tasks.base import DataError, Example, Task, get_task, register, task_names

__all__ = ["DataError", "Example", "Task", "get_task", "register", "task_names"]
