"""What a run tells the person watching it, and what it leaves for later.

    Progress     a bar per epoch on a terminal; elsewhere (nohup, CI, a notebook) a plain line every
                 PLAIN_EVERY seconds with step, loss and samples/s
    working      the same for long data preparation (decoding images, computing features)
    say          one line per evaluation on stdout
    TensorBoard  per-step training loss and learning rate, every evaluation (--tensorboard)

metrics.jsonl (engine.checkpoint) is the record that is always written.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from lamina.errors import LaminaError

PLAIN_EVERY = 30.0  # seconds between progress lines when the output is not a terminal
T = TypeVar("T")
_quiet = [False]  # data preparation's progress; a stack, so nested runs (tests, benchmarks) restore it


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
    """A one-line bar on stderr with loss, samples/s and ETA when stderr is a terminal; a plain line
    every `plain_every` seconds when it is not; nothing when disabled."""

    def __init__(
        self,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        min_interval: float = 0.2,
        plain_every: float = PLAIN_EVERY,
    ):
        self.stream = stream or sys.stderr
        self.enabled = enabled is not False
        self.tty = self.stream.isatty() if enabled is None else bool(enabled)
        self.min_interval = min_interval if self.tty else plain_every
        self._last = 0.0
        self._width = 0

    def start(self, label: str, total: int, done: int = 0) -> None:
        """A new bar for `total` batches, `done` of them already behind (a resumed epoch)."""
        self.label, self.total, self.done, self.samples = label, total, done, 0
        self.first = done
        self.t0 = time.perf_counter()
        self._last = self.t0 if not self.tty else 0.0  # plain lines: the first one after a full interval

    def update(self, done: int, samples: int, loss: float, step: int | None = None) -> None:
        """`done` batches of the epoch are finished; the last one had `samples` samples and this loss."""
        if not self.enabled:
            return
        self.done = done
        self.samples += samples
        now = time.perf_counter()
        if now - self._last < self.min_interval and (done < self.total or not self.tty):
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = (done - self.first) / elapsed  # batches/s in this session
        eta = (self.total - done) / rate if rate > 0 else 0.0
        speed = f"loss {loss:.4f}  {self.samples / elapsed:,.0f} samples/s  eta {format_seconds(eta)}"
        if not self.tty:
            where = f"step {step}  " if step is not None else ""
            print(f"{self.label}  {where}batch {done}/{self.total}  {speed}", file=self.stream, flush=True)
            return
        filled = int(24 * done / max(self.total, 1))
        line = f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total}  {speed}"
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def say(message: str, quiet: bool = False) -> None:
    """A line for the user on stdout (the machine-readable output, e.g. --json, never mixes with it)."""
    if not quiet:
        print(message, flush=True)


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No progress from data preparation inside (--quiet, and every process but the first)."""
    _quiet.append(on)
    try:
        yield
    finally:
        _quiet.pop()


def note(message: str) -> None:
    """A line about data preparation on stderr, unless quiet."""
    if not _quiet[-1]:
        print(message, file=sys.stderr, flush=True)


def working(items: Iterable[T], label: str, total: int | None = None, min_seconds: float = 2.0) -> Iterator[T]:
    """`items`, with a count on stderr while they are worked through ('decoding 12,000 images'): a
    counter on a terminal, a line every PLAIN_EVERY seconds elsewhere, and a last line with the time
    taken, once the work has lasted `min_seconds` (quick work says nothing)."""
    total = len(items) if total is None and hasattr(items, "__len__") else total  # type: ignore[arg-type]
    stream, started = sys.stderr, time.perf_counter()
    tty, shown, last, done = stream.isatty(), False, started, 0
    back = "\r" if tty else ""  # a terminal overwrites its counter; elsewhere each count is a line
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if _quiet[-1] or now - started < min_seconds or now - last < (0.5 if tty else PLAIN_EVERY):
            continue
        last, shown = now, True
        count = f"{done:,}/{total:,}" if total else f"{done:,}"
        rate = done / (now - started)
        print(f"{back}{label}: {count} ({rate:,.0f}/s)", end="" if tty else "\n", file=stream, flush=True)
    if shown and not _quiet[-1]:
        print(f"{back}{label}: {done:,} in {time.perf_counter() - started:.1f} s", file=stream, flush=True)


def require_tensorboard() -> None:
    """A one-line error now, not after the data has loaded, when --tensorboard cannot work."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise LaminaError("--tensorboard needs the tensorboard package: pip install 'lamina[tensorboard]'")


class TensorBoard:
    """Scalars for TensorBoard (torch.utils.tensorboard), in RUN/tensorboard/: `tensorboard --logdir runs`."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()
