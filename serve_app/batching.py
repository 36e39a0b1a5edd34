"""Request batching for engines that speak several requests with one model call, each streaming.

An engine that batches implements `BatchRunner.run_batch(rows)`: a blocking call, run in a
worker thread, that speaks a whole batch and feeds each row's stream as audio is produced
(`row.emit`), ending each row on its own (`row.finish` / `row.fail`). `Batcher` sits between the
callers (each an async stream on the event loop) and that runner:

- Batch forming: the first waiting request opens a window of `wait_s`; the batch leaves when
  `max_batch_size` requests wait or the window closes. Up to `max_concurrent_batches` batches run
  at once (default one: a GPU runs one batch's steps at a time anyway).
- Admission marker: when a request leaves the queue and joins a batch, its stream yields one
  empty chunk `b""` first. The router starts its first-byte timer there, so time spent queued
  behind a full batch is not counted against the engine.
- Busy, not broken: when `max_queued` requests already wait, a new one gets `EngineBusy` at once
  (the router tries another engine without a strike) instead of waiting for minutes.
- Cancellation: when a caller stops reading (the async generator is closed or its task
  cancelled: client disconnect, barge-in, router failover), its row is flagged; the runner checks
  `row.cancelled` every step and drops the row, and a batch whose rows are all cancelled stops. A
  request cancelled while still queued never reaches a batch. Cancelled rows are counted (stats,
  and the Ray metric `tts_engine_cancelled_rows` when running inside Ray).
- Failures: the runner fails only the rows a problem belongs to (one bad request does not fail
  its batch); if the runner raises, or returns with rows still open, those rows fail with
  `EngineUnavailable`.

Model-agnostic: nothing here knows what a request or a model is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from serve_app.core.gate import PRIORITY_NEW, due_at
from serve_app.engines.base import EngineBusy, EngineUnavailable, InvalidInput

logger = logging.getLogger(__name__)

R = TypeVar("R")
ADMITTED = b""  # the marker a stream yields when its request joins a batch


class _End:
    """Sentinel: the row's stream is complete."""


_END = _End()
Item = bytes | BaseException | _End


class Row(Generic[R]):
    """One request inside a batch: what the runner reads (`request`, `cancelled`) and feeds.

    `emit`, `finish` and `fail` may be called from any thread; `sink` delivers to the caller.
    """

    def __init__(self, request: R, sink: Callable[[Item], None], priority: int = PRIORITY_NEW) -> None:
        self.request = request
        self.due = due_at(priority)  # rows join batches earliest due first (`serve_app.core.gate`)
        self._sink = sink
        self._cancelled = threading.Event()
        self._closed = False
        self.admitted = False
        self.frames = 0  # progress the runner reports (steps done for this row), for stats and tests

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def open(self) -> bool:
        """Still wants output: not finished, failed or cancelled."""
        return not self._closed and not self.cancelled

    def cancel(self) -> None:
        self._cancelled.set()

    def admit(self) -> None:
        self.admitted = True
        self._deliver(ADMITTED)

    def emit(self, chunk: bytes) -> None:
        if chunk and self.open:
            self._deliver(chunk)

    def finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._deliver(_END)

    def fail(self, exc: BaseException) -> None:
        if not self._closed:
            self._closed = True
            self._deliver(exc)

    def _deliver(self, item: Item) -> None:
        try:
            self._sink(item)
        except RuntimeError:  # the caller's event loop is gone (shutdown): nobody is listening
            self._cancelled.set()


class BatchRunner(Protocol[R]):
    def run_batch(self, rows: list[Row[R]]) -> None:
        """Speak every row (blocking, in a worker thread); end each with finish() or fail()."""


@dataclass
class BatchStats:
    """How batching goes on this replica; `to_dict()` is reported by the engine's `check()`."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    cancelled: int = 0
    busy_rejections: int = 0
    failed_batches: int = 0
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=32))

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.recent.append(size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "largest": self.largest,
            "cancelled": self.cancelled,
            "busy_rejections": self.busy_rejections,
            "failed_batches": self.failed_batches,
            "recent": list(self.recent),
        }


class _CancelledRowsMetric:
    """Ray's counter of cancelled rows, created on first use and only inside a Ray worker."""

    def __init__(self) -> None:
        self._counter: Any = None
        self._tried = False

    def inc(self, engine: str) -> None:
        if not self._tried:
            self._tried = True
            try:
                import ray

                if ray.is_initialized():
                    from ray.util.metrics import Counter

                    self._counter = Counter(
                        "tts_engine_cancelled_rows",
                        description="Requests whose caller left while queued or generating (rows dropped)",
                        tag_keys=("engine",),
                    )
            except Exception as exc:  # metrics are best effort; serving never depends on them
                logger.debug("cancelled-rows metric unavailable: %s", exc)
        if self._counter is not None:
            self._counter.inc(1.0, tags={"engine": engine})


_CANCELLED_METRIC = _CancelledRowsMetric()


class Batcher(Generic[R]):
    """Collects requests into batches for a `BatchRunner` and streams each row back to its caller."""

    def __init__(
        self,
        runner: BatchRunner[R],
        *,
        name: str,
        max_batch_size: int = 8,
        wait_s: float = 0.02,
        max_queued: int = 32,
        max_concurrent_batches: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_concurrent_batches < 1 or max_queued < 0 or wait_s < 0:
            raise ValueError("batch size and concurrency must be positive, queue and wait not negative")
        self.runner = runner
        self.name = name
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_queued = max_queued
        self.max_concurrent_batches = max_concurrent_batches
        self.stats = BatchStats()
        self._pending: deque[Row[R]] = deque()
        self._running: set[Row[R]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # running batches (the loop keeps only weak references)
        self._last_event = time.monotonic()  # when a running row last delivered anything

    # --- callers ------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return sum(1 for row in self._pending if not row.cancelled)

    @property
    def running(self) -> int:
        return len(self._running)

    def stalled_for(self) -> float:
        """Seconds rows have been running without delivering anything (0 when nothing runs).

        A batch that makes progress delivers a chunk every few frames; one that delivers nothing
        for long is hung (a stuck kernel, a dead device), which the replica's health check reports
        so Serve replaces it.
        """
        if not self._running:
            return 0.0
        return time.monotonic() - self._last_event

    async def stream(self, request: R, priority: int = PRIORITY_NEW) -> AsyncIterator[bytes]:
        """`request`'s audio: `b""` when it joins a batch, then chunks. Raises the row's error.

        Waiting rows join batches by when they are due (`priority`: `serve_app.core.gate`), then arrival."""
        self._ensure_dispatcher()
        if self.queued >= self.max_queued:
            self.stats.busy_rejections += 1
            raise EngineBusy(
                f"{self.name} is at capacity: {self.queued} requests queued, "
                f"{self.running} in {self.max_concurrent_batches} running batch(es)",
                retry_after_s=1.0,
            )
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Item] = asyncio.Queue()

        def sink(item: Item) -> None:
            self._last_event = time.monotonic()
            loop.call_soon_threadsafe(items.put_nowait, item)

        row: Row[R] = Row(request, sink, priority)
        later = next((i for i, other in enumerate(self._pending) if other.due > row.due), None)
        if later is None:
            self._pending.append(row)
        else:
            self._pending.insert(later, row)
        assert self._changed is not None
        self._changed.set()
        done = False
        try:
            while True:
                item = await items.get()
                if isinstance(item, _End):
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
        finally:
            if not done:
                self._cancel(row)

    def _cancel(self, row: Row[R]) -> None:
        """The caller left before its row ended: flag it (the runner drops it) or unqueue it."""
        if row.cancelled:
            return
        row.cancel()
        self.stats.cancelled += 1
        _CANCELLED_METRIC.inc(self.name)
        with contextlib.suppress(ValueError):  # ValueError: already in a batch, the runner sees the flag
            self._pending.remove(row)
        logger.debug("%s row cancelled (admitted=%s)", self.name, row.admitted)

    # --- batch forming ----------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        """A dispatcher runs while requests are queued; the next request starts a new one.

        (An idle dispatcher parked on an event would be garbage with its batcher, and asyncio
        complains about destroying a pending task.)
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests): fresh loop-bound primitives
            self._loop = loop
            self._changed = asyncio.Event()
            self._slots = asyncio.Semaphore(self.max_concurrent_batches)
            self._pending = deque(row for row in self._pending if not row.cancelled)
            self._dispatcher = None
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch(), name=f"{self.name}-batcher")

    async def _dispatch(self) -> None:
        assert self._changed is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while self.queued:
            await self._slots.acquire()
            deadline = loop.time() + self.wait_s
            while self.queued < self.max_batch_size and (left := deadline - loop.time()) > 0:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
            rows: list[Row[R]] = []
            while self._pending and len(rows) < self.max_batch_size:
                row = self._pending.popleft()
                if not row.cancelled:
                    rows.append(row)
            if not rows:
                self._slots.release()
                continue
            for row in rows:
                row.admit()
                self._running.add(row)
            self.stats.record(len(rows))
            task = loop.create_task(self._run(rows))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, rows: list[Row[R]]) -> None:
        assert self._slots is not None
        self._last_event = time.monotonic()
        try:
            await asyncio.to_thread(self._run_blocking, rows)
        finally:
            self._running.difference_update(rows)
            self._slots.release()

    def _run_blocking(self, rows: list[Row[R]]) -> None:
        try:
            self.runner.run_batch(rows)
        except Exception as exc:
            self.stats.failed_batches += 1
            logger.error("%s batch of %d failed: %s: %s", self.name, len(rows), type(exc).__name__, str(exc)[:200])
            error = exc if isinstance(exc, InvalidInput | EngineUnavailable) else None
            reason = f"{self.name} batch failed: {type(exc).__name__}: {str(exc)[:200]}"
            for row in rows:
                row.fail(error or EngineUnavailable(reason))
            return
        for row in rows:
            if not row.cancelled:
                row.fail(EngineUnavailable(f"{self.name} ended the batch without finishing this request"))

    async def close(self) -> None:
        """Stop forming batches (replica shutdown, benchmarks): queued callers get EngineUnavailable."""
        for row in list(self._pending):
            row.fail(EngineUnavailable(f"{self.name} is shutting down"))
        self._pending.clear()
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self._dispatcher = None

    def run_now(self, requests: list[R]) -> list[bytes | BaseException]:
        """Run one batch synchronously in this thread, collecting each row's audio (warm-up, benchmarks).

        Bypasses the queue: no admission marker, no busy check. Returns PCM or the row's error.
        """
        outputs: list[list[Item]] = [[] for _ in requests]
        rows = [Row(r, out.append) for r, out in zip(requests, outputs, strict=True)]
        self.stats.record(len(rows))
        self._run_blocking(rows)
        results: list[bytes | BaseException] = []
        for out in outputs:
            error = next((item for item in out if isinstance(item, BaseException)), None)
            results.append(error if error is not None else b"".join(i for i in out if isinstance(i, bytes)))
        return results
