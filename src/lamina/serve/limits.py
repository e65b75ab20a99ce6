"""What one request may ask of the server: over a limit, it is refused with a one-line reason (413 for
what is too big to take in, 422 for a value out of bounds) before any model runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lamina.errors import UsageError


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 16 * 2**20  # a whole request (every upload in it), read no further
    image_pixels: int = 4096 * 4096  # width x height, checked from the header before any pixel is decoded
    audio_seconds: float = 60.0
    text_chars: int = 2000  # each text
    inputs: int = 16  # files or texts in one request
    request_seconds: float = 60.0  # a request still running then is answered 504 (a stream is stopped)
    queue: int = 16  # requests waiting or running in one worker process; one more is answered 503
    # Inputs of concurrent requests (same verb, same options) that one call of the verb may answer
    # together (1: one call per request).
    batch: int = 32
    # The largest value of the numeric options that decide how long a verb runs, by option name
    # (`lamina generate --length`, every search's `--beam`, ...).
    options: dict[str, float] = field(
        default_factory=lambda: {"length": 2000, "beam": 16, "top_k": 1000, "threshold": 1.0}
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Limits:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown server limit {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_limit(text: str) -> tuple[str, float]:
    """`--limit name=value` of `lamina serve` (e.g. audio_seconds=30)."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or number is None or number <= 0:
        raise UsageError(f"--limit {text}: give NAME=VALUE with a positive number (e.g. audio_seconds=30)")
    return name, number


def with_overrides(limits: Limits, pairs: list[str]) -> Limits:
    """`limits` with `--limit NAME=VALUE` pairs applied: a field of Limits, or else an option's largest value."""
    from lamina.tasks import list_tasks

    declared = {a.dest for t in list_tasks() for verb in t.verbs for a in verb.args} | {
        a.dest for t in list_tasks() for a in t.predict_args
    }
    values, options = limits.to_dict(), dict(limits.options)
    for text in pairs:
        name, number = parse_limit(text)
        if name in values and name != "options":
            if isinstance(values[name], int) and not (number.is_integer() and number >= 1):
                raise UsageError(f"--limit {text}: {name} is a whole number of at least 1")
            values[name] = int(number) if isinstance(values[name], int) else number
        elif name in declared:
            options[name] = number
        else:
            fields = ", ".join(k for k in values if k != "options")
            raise UsageError(f"--limit {text}: no such limit ({fields}, or the largest value of an option)")
    return Limits.from_dict({**values, "options": options})
