"""The applications lamina knows, by name."""

from __future__ import annotations

from lamina.errors import UsageError, choices
from lamina.tasks.base import Prepared, Task
from lamina.tasks.classify import ClassifyTask
from lamina.tasks.lm import LanguageModelTask
from lamina.tasks.transcribe import TranscribeTask
from lamina.tasks.translate import TranslateTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (ClassifyTask, LanguageModelTask, TranslateTask, TranscribeTask)
}


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose from: {choices(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Prepared", "Task", "get_task"]
