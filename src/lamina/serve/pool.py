"""Where models run in a server process: one inference thread, fed by a bounded queue.

One thread, because torch's process-wide settings (threads, grad mode, autocast caches) are not
made to be changed from several threads at once, and two inferences side by side on the same cores
only slow each other down; more throughput comes from more processes (`lamina serve --workers N`,
uvicorn's), each with its own models and its own share of the cores. The event loop stays free
while a model runs (torch releases the GIL), so /health and refusals are answered at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from lamina.serve.inputs import Refused


class Stopped(Exception):
    """Raised inside a streaming verb when its client left or its time ran out."""


class InferencePool:
    def __init__(self, queue: int):
        self.capacity = queue
        self.pending = 0  # requests accepted and not finished (waiting or running)
        self.lock = threading.Lock()
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lamina-inference")

    def _admit(self) -> None:
        with self.lock:
            if self.pending >= self.capacity:
                raise Refused(503, f"the server is busy ({self.pending} requests waiting): try again shortly")
            self.pending += 1

    def _done(self, _future=None) -> None:
        with self.lock:
            self.pending -= 1

    async def run(self, work: Callable[[], Any], seconds: float) -> Any:
        """work() on the inference thread. After `seconds` the client is answered 504; the work itself
        cannot be interrupted and keeps its place in the queue until it ends."""
        self._admit()
        future = self.thread.submit(work)
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), seconds)
        except asyncio.TimeoutError:
            raise Refused(504, f"the request took longer than the limit of {seconds:g} s") from None

    async def stream(self, work: Callable[[Callable[[Any], None]], Any], seconds: float) -> AsyncIterator[Any]:
        """Run work(emit) on the inference thread; yield each piece it emits, then ('result', value).
        When the consumer stops listening (a client disconnects) or `seconds` pass, the next emit
        raises Stopped, which ends the work."""
        self._admit()
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def emit(piece: Any) -> None:
            if stop.is_set():
                raise Stopped()
            loop.call_soon_threadsafe(pieces.put_nowait, ("piece", piece))

        def task() -> None:
            try:
                outcome = ("result", work(emit))
            except BaseException as exc:  # reported to the consumer, which decides what it means
                outcome = ("error", exc)
            loop.call_soon_threadsafe(pieces.put_nowait, outcome)

        future = self.thread.submit(task)
        future.add_done_callback(self._done)
        deadline = loop.time() + seconds
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(pieces.get(), max(deadline - loop.time(), 0))
                except asyncio.TimeoutError:
                    raise Refused(504, f"the request took longer than the limit of {seconds:g} s") from None
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "result":
                    return
        finally:
            stop.set()

    def close(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)
