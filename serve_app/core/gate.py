"""Who goes first when an engine is full: by when each waiting sentence is needed, then arrival.

A new answer that waits too long is refused before its first byte (503, the router's admission
wait); an answer already playing must never starve, or its listener hears a gap and, past the
stall budget, the stream is cut. But a later sentence synthesized ahead (look-ahead) is usually
not needed for seconds: its listener is still hearing the sentences before it. So a waiting
request is due at a time, and the earliest due goes first (then arrival):
- `PRIORITY_PLAYING`: a later sentence its listener is about to need: due at once, before any new
  answer;
- `PRIORITY_NEW`: an answer's first sentence: due when it arrives;
- a priority above 0: a later sentence with that many milliseconds of slack (audio its listener
  still holds, less a margin): due that much after it arrives, so new answers' first sentences
  that arrive before then go ahead of it, and later ones behind it (nothing starves).
The router sets it per attempt (`serve_app.router.core`); a slack travels as a relative time, so
it means the same in an engine replica on another machine.

A gate may keep `reserve` slots for work that is due: a sentence not due yet takes a slot only
while more than `reserve` are free, and otherwise waits until it is due (or until more slots are
free). Look-ahead work then never holds every slot when a new answer arrives, so the new answer's
first sentence starts at once instead of waiting for a whole sentence to finish somewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator

PRIORITY_PLAYING = -1
PRIORITY_NEW = 0
# A waiter this close to its due time counts as due: the timer that wakes it may fire a little early
# (uvloop rounds its timers to milliseconds), and must not find it "not due yet" and leave it waiting.
_DUE_TOLERANCE_S = 0.002


def due_at(priority: int, now: float | None = None) -> float:
    """When a request of `priority` queued at `now` (time.monotonic()) is due; earliest goes first."""
    if priority < 0:
        return -math.inf
    return (time.monotonic() if now is None else now) + priority / 1000


class PriorityGate:
    """At most `slots` holders at a time; waiters admitted by (when due, arrival), and the last
    `reserve` free slots only to waiters that are due."""

    def __init__(self, slots: int, *, reserve: int = 0) -> None:
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        if not 0 <= reserve < slots:
            raise ValueError("a gate reserves fewer slots than it has")
        self.slots = slots
        self.reserve = reserve
        self._free = slots
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
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
        due = due_at(priority)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (due, next(self._arrivals), future))
        self._dispatch()
        if future.done():
            return
        # Not due yet, and held back only by the reserve: look again when it falls due.
        until_due = due - time.monotonic()
        timer = loop.call_later(until_due, self._dispatch) if until_due > 0 else None
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot came just as the caller left: hand it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _release(self) -> None:
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters, earliest due first; one not due yet leaves the reserve free
        (and so does every waiter behind it, none of which is due earlier)."""
        now = time.monotonic() + _DUE_TOLERANCE_S
        while self._free > 0 and self._waiters:
            due, _, future = self._waiters[0]
            if future.done():  # a waiter that left is skipped
                heapq.heappop(self._waiters)
                continue
            if due > now and self._free <= self.reserve:
                return
            heapq.heappop(self._waiters)
            self._free -= 1
            future.set_result(None)
