"""Who goes first when an engine is full: the sentences of answers already playing, then new answers.

A new answer that waits too long is refused before its first byte (503, the router's admission
wait); an answer already playing must never starve, or its listener hears a gap and, past the
stall budget, the stream is cut. So an engine that queues work serves waiting requests by
priority, then arrival: `PRIORITY_PLAYING` (a later sentence of an admitted answer) before
`PRIORITY_NEW` (an answer's first sentence). The router sets it per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

PRIORITY_PLAYING = 0
PRIORITY_NEW = 1


class PriorityGate:
    """At most `slots` holders at a time; waiters admitted by (priority, arrival)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self.slots = slots
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiters if not future.done())

    @contextlib.asynccontextmanager
    async def hold(self, priority: int = PRIORITY_NEW) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot came just as the caller left: hand it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():  # a waiter that left is skipped
                future.set_result(None)
                return
        self._free += 1
