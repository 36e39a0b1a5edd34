"""Admission: per-engine concurrency slots, and waiting for any slot to free up.

A full engine is busy, not broken: the router skips it without a strike and only queues (for a
bounded time) when every candidate is full.
"""

from __future__ import annotations

import asyncio
import contextlib


class Limiter:
    """Concurrency slots of one engine. Never blocks: a full engine is skipped, not waited on."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class CapacitySignal:
    """Lets sentences that found every engine full wait for the next released slot."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self, timeout: float) -> None:
        """Return when a slot is released anywhere, or after `timeout` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            async with asyncio.timeout(timeout):  # not `wait_for`: it can swallow a cancel (Python 3.11)
                await future
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
