"""What a task declares about the things its trained runs do: verbs and their arguments.

A verb is one use of a trained run: ``translate``, ``transcribe``, ``generate``, and for every task
``predict`` and ``evaluate``. A task declares each verb once (its name, help, arguments as argparse
takes them) and implements it as a method ``verb(model, meta, **arguments) -> dict``. From that one
declaration the CLI builds a subcommand, ``Run`` exposes a method and ``lamina.<verb>(run, ...)`` a
function, and the server an endpoint (lamina.serve); none of them names a task. The result is one
JSON-ready dict whose shape the verb documents: what ``--json`` prints and what the API returns.

Defaults live in one place, the task method's signature; the CLI shows them in its help and passes
only what the user gave, so the method's own defaults apply.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Arg:
    """One argument of a verb, as argparse.add_argument takes it: flags, then keyword options."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    stdin: bool = False  # a positional list that reads the lines of standard input when none are given
    # What a positional list holds ("image", "audio" or "text"): the server takes uploads or texts for it.
    input: str = ""
    # The argument names a file or a run on this machine (to read or to write): the server never offers
    # it, so that no request reaches a path.
    path: bool = False

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def dest(self) -> str:
        if "dest" in self.options:
            return self.options["dest"]
        name = self.flags[0] if self.positional else next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return name.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser, default: Any = inspect.Parameter.empty) -> None:
        options = dict(self.options)
        if not self.positional:
            # Only what the user gives reaches the method, whose signature holds the default.
            options["default"] = argparse.SUPPRESS
            if default is not inspect.Parameter.empty and default not in (None, False, ""):
                options["help"] = f"{options.get('help', '')} (default: {default})".strip()
        if "help" in options:
            options["help"] = options["help"].replace("%", "%%")  # argparse formats help with %
        parser.add_argument(*self.flags, **options)


def arg(*flags: str, stdin: bool = False, input: str = "", path: bool = False, **options: Any) -> Arg:
    return Arg(tuple(flags), options, stdin, input, path)


@dataclass(frozen=True)
class Verb:
    """A use of a trained run. The task method `method` (default: the verb's name) is called as
    method(model, meta, **arguments)."""

    name: str
    help: str
    args: tuple[Arg, ...] = ()
    method: str = ""
    stream: bool = False  # the method takes emit=callable and calls it with each piece as it is produced
    returns: str = ""  # the documented shape of the result (what --json prints)

    @property
    def attr(self) -> str:
        return self.method or self.name.replace("-", "_")

    def defaults(self, implementation: Callable) -> dict[str, Any]:
        """Keyword defaults of the implementing method, to show in the help."""
        return {p.name: p.default for p in inspect.signature(implementation).parameters.values()}


# The options of every verb that searches for an output sequence (lamina.models.decoding).
SEARCH_ARGS = (
    arg("--beam", type=int, metavar="N", help="beam width (1: greedy search)"),
    arg("--length-penalty", type=float, metavar="A", help="hypotheses are scored by log-probability / length**A"),
)
