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
from dataclasses import dataclass, field
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
        self.open: dict[Any, _Batch] = {}  # batches queued and not started, by endpoint and options

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
        try:
            future = self.thread.submit(work)
        except RuntimeError:  # shutting down
            self._done()
            raise Refused(503, "the server is shutting down") from None
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), seconds)
        except asyncio.TimeoutError:
            future.cancel()  # not started yet: it never will be (started: it runs to its end)
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

    async def batched(
        self, key: Any, items: list, decode: Callable[[list], list], call: Callable[[list], dict], largest: int,
        seconds: float,
    ) -> dict:  # fmt: skip
        """call(decode(items)) on the inference thread, together with the other requests of the same
        `key` (endpoint and options) that arrived while the thread was busy: one call of the verb for
        all of them, up to `largest` inputs, each request answered with its own share of the results.
        Nothing waits on purpose: a batch forms only of requests that would have queued anyway. A
        request whose inputs do not decode is refused alone."""
        self._admit()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        with self.lock:
            batch = self.open.get(key)
            if batch is None or batch.size + len(items) > largest:
                batch = self.open[key] = _Batch(key, decode, call)
                self.thread.submit(self._run_batch, batch)
            batch.requests.append(_Request(items, answer, loop))
            batch.size += len(items)
        try:
            return await asyncio.wait_for(asyncio.shield(answer), seconds)
        except asyncio.TimeoutError:
            answer.cancel()  # a batch not started yet leaves this request out
            raise Refused(504, f"the request took longer than the limit of {seconds:g} s") from None

    def _run_batch(self, batch: _Batch) -> None:
        with self.lock:  # closed: later requests start the next batch
            if self.open.get(batch.key) is batch:
                del self.open[batch.key]
        try:
            batch.run()
        finally:
            for _ in batch.requests:
                self._done()

    def close(self) -> None:
        self.thread.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Request:
    items: list
    answer: asyncio.Future
    loop: asyncio.AbstractEventLoop
    inputs: list | None = None
    error: BaseException | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.answer, result, error)


@dataclass
class _Batch:
    """Requests answered by one call of a verb."""

    key: Any
    decode: Callable[[list], list]
    call: Callable[[list], dict]
    requests: list[_Request] = field(default_factory=list)
    size: int = 0  # inputs over every request

    def run(self) -> None:
        """Decode each request's inputs, answer the ones that decode with one call, and every request
        whatever happens: a call that fails for several requests is tried for each alone, so that
        one request's bad input does not fail the others."""
        ready = [r for r in self.requests if not r.answer.done()]  # not those answered 504 already
        try:
            for r in ready:
                try:
                    r.inputs = self.decode(r.items)
                except Exception as exc:
                    r.settle(error=exc)
                    r.error = exc
            ready = [r for r in ready if r.error is None]
            try:
                self.answer(ready)
            except Exception:
                if len(ready) == 1:
                    raise
                for r in ready:
                    try:
                        self.answer([r])
                    except Exception as alone:
                        r.settle(error=alone)
        except BaseException as exc:
            for r in ready:
                r.settle(error=exc)

    def answer(self, ready: list[_Request]) -> None:
        if not ready:
            return
        result = self.call([x for r in ready for x in r.inputs])
        entries = result.get("results") if isinstance(result, dict) else None
        if not isinstance(entries, list) or len(entries) != sum(len(r.inputs) for r in ready):
            raise RuntimeError("a batched verb must answer {'results': [one per input]}")
        start = 0
        for r in ready:
            share = dict(result)
            share["results"] = entries[start : start + len(r.inputs)]
            start += len(r.inputs)
            if len(ready) > 1:  # what the timings in the result are of
                share["batch"] = {"requests": len(ready), "inputs": len(entries)}
            r.settle(result=share)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # its client was answered 504 already
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
