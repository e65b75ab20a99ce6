"""The applications lamina knows, by name.

The built-in tasks are listed here (no folder scanning); another package adds its own with
``lamina.register_task`` or, to be found by the ``lamina`` command, through the entry point group
``lamina.tasks`` (a module or callable that registers its tasks when loaded).
"""

from __future__ import annotations

from lamina.errors import UsageError, choices
from lamina.tasks.base import Prepared, Task

TASKS: dict[str, type[Task]] = {}


# What a task's declarations must not take: lamina's own commands, what every verb gets, what the
# train command has besides settings, and what Run has besides verbs.
COMMANDS = {
    "train", "evaluate", "predict", "export", "inspect", "attack", "search", "explain", "serve", "models", "config",
    "runs", "data", "help",
}  # fmt: skip
VERB_OPTIONS = {"run", "device", "json", "help"}
TRAIN_OPTIONS = {"--out", "--resume", "--config", "--set", "--json", "--help"}
RUN_ATTRIBUTES = {"path", "info", "config", "task", "model", "meta", "call", "evaluate", "predict"}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a Task subclass known by its name. A duplicate name, a verb another
    task already declares, or a name lamina itself uses is a programming error, said here rather
    than by every command later."""
    from lamina import config

    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered")
    for verb in cls.verbs:
        owner = next((t for t in TASKS.values() if t is not cls and verb.name in {v.name for v in t.verbs}), None)
        if owner is not None:
            raise ValueError(f"verb {verb.name!r} of task {cls.name!r} is already declared by task {owner.name!r}")
        if verb.name in COMMANDS or verb.attr in RUN_ATTRIBUTES:
            raise ValueError(f"verb {verb.name!r} of task {cls.name!r} would hide lamina's own {verb.name!r}")
        taken = {a.dest for a in verb.args} & VERB_OPTIONS
        if taken:
            raise ValueError(
                f"verb {verb.name!r} of task {cls.name!r} declares {', '.join(sorted(taken))}, "
                "which every verb has already"
            )
    shared = config.flags()
    for key, flag in config.flags(cls.Data).items():
        if flag in TRAIN_OPTIONS or (flag in shared.values() and shared.get(key) != flag):
            raise ValueError(f"{key} of task {cls.name!r} declares {flag}, which lamina train has already")
    TASKS[cls.name] = cls
    return cls


_loaded = []


def _load() -> None:
    if _loaded:
        return
    _loaded.append(True)
    from importlib.metadata import entry_points

    from lamina.tasks import (  # noqa: F401  (each registers itself)
        caption,
        classify,
        detect,
        lm,
        read,
        transcribe,
        translate,
    )

    for entry in entry_points(group="lamina.tasks"):
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:  # a broken plugin must not break every command
            from lamina.errors import warn

            warn(f"the lamina.tasks plugin {entry.name!r} failed to load: {type(exc).__name__}: {exc}")


def get_task(name: str) -> type[Task]:
    _load()
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose from: {choices(TASKS)}")
    return TASKS[name]


def list_tasks() -> list[type[Task]]:
    _load()
    return list(TASKS.values())


__all__ = ["TASKS", "Prepared", "Task", "get_task", "list_tasks", "register_task"]
