"""Progress reporting: a bar per epoch on a terminal, one summary line per evaluation, metrics.jsonl."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}" if abs(value) < 1000 else f"{key} {value:.0f}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class Progress:
    """A one-line bar on stderr with loss, samples/s and ETA; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None, min_interval: float = 0.2):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_interval = min_interval
        self._last = 0.0
        self._width = 0

    def start(self, label: str, total: int, done: int = 0) -> None:
        """A new bar for `total` batches, `done` of them already behind (a resumed epoch)."""
        self.label, self.total, self.done, self.samples = label, total, done, 0
        self.first = done
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, samples: int, loss: float) -> None:
        """`done` batches of the epoch are finished; the last one had `samples` samples and this loss."""
        self.done = done
        self.samples += samples
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < self.min_interval and done < self.total:
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = (done - self.first) / elapsed  # batches/s in this session
        eta = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(24 * done / max(self.total, 1))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total}"
            f"  loss {loss:.4f}  {self.samples / elapsed:,.0f} samples/s  eta {format_seconds(eta)}"
        )
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def say(message: str, quiet: bool = False) -> None:
    """A line for the user on stdout (the machine-readable output, e.g. --json, never mixes with it)."""
    if not quiet:
        print(message, flush=True)
