"""The applications lamina knows, by name.

The built-in tasks are listed here (no folder scanning); another package adds its own with
``lamina.register_task`` or, to be found by the ``lamina`` command, through the entry point group
``lamina.tasks`` (a module or callable that registers its tasks when loaded).
"""

from __future__ import annotations

from lamina.errors import UsageError, choices
from lamina.tasks.base import Prepared, Task

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a Task subclass known by its name; a duplicate name (or a verb name
    another task already declares) is a programming error."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    for verb in cls.verbs:
        owner = next((t for t in TASKS.values() if t is not cls and verb.name in {v.name for v in t.verbs}), None)
        if owner is not None:
            raise ValueError(f"verb {verb.name!r} of task {cls.name!r} is already declared by task {owner.name!r}")
    TASKS[cls.name] = cls
    return cls


def _load() -> None:
    if _load.done:
        return
    _load.done = True
    from importlib.metadata import entry_points

    from lamina.tasks import classify, lm, transcribe, translate  # noqa: F401  (each registers itself)

    for entry in entry_points(group="lamina.tasks"):
        loaded = entry.load()
        if callable(loaded) and not isinstance(loaded, type):
            loaded()


_load.done = False


def get_task(name: str) -> type[Task]:
    _load()
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose from: {choices(TASKS)}")
    return TASKS[name]


def list_tasks() -> list[type[Task]]:
    _load()
    return list(TASKS.values())


__all__ = ["TASKS", "Prepared", "Task", "get_task", "list_tasks", "register_task"]
