"""The ingress replica's half of the drain: its in-flight count, and the watcher that reports it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serve_app.core.tasks import running
from serve_app.drain.coordinator import (
    COORDINATOR_NAME,
    COORDINATOR_NAMESPACE,
    LOOKUP_RETRY_S,
    REPORT_INTERVAL_S,
    REPORT_TIMEOUT_S,
)

logger = logging.getLogger(__name__)


class ReplicaDrain:
    """This replica's in-flight count and what it last heard of the drain flag.

    One per app, passed to the middleware that counts and to the routes that refuse new work.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False


Lookup = Callable[[], Awaitable[Any]]


async def _lookup_coordinator() -> Any:
    """The coordinator's handle, or None; `ray.get_actor` blocks, so it runs off the event loop."""
    import ray

    def lookup() -> Any:
        try:
            return ray.get_actor(COORDINATOR_NAME, namespace=COORDINATOR_NAMESPACE)
        except ValueError:
            return None

    return await asyncio.to_thread(lookup)


class DrainWatcher:
    """Reports this replica's in-flight count and picks up the drain flag, once per interval.

    Every failure is ignored and only retried: no coordinator means nobody is draining.
    """

    def __init__(
        self,
        replica_id: str,
        state: ReplicaDrain,
        lookup: Lookup = _lookup_coordinator,
        interval_s: float = REPORT_INTERVAL_S,
    ):
        self.replica_id = replica_id
        self.state = state
        self.lookup = lookup
        self.interval_s = interval_s
        self._handle: Any = None
        self._next_lookup = 0.0

    async def tick(self) -> None:
        if self._handle is None:
            if time.monotonic() < self._next_lookup:
                return
            self._next_lookup = time.monotonic() + LOOKUP_RETRY_S
            self._handle = await self.lookup()
            if self._handle is None:
                return
        acked = self.state.draining
        try:
            ref = self._handle.report.remote(self.replica_id, self.state.in_flight, acked)
            draining = bool(await asyncio.wait_for(ref, REPORT_TIMEOUT_S))
        except Exception as exc:  # coordinator gone or slow: look it up again later
            logger.debug("drain report failed: %s", type(exc).__name__)
            self._handle = None
            return
        if draining and not self.state.draining:
            logger.info("drain requested: refusing new speech, %d request(s) in flight", self.state.in_flight)
        self.state.draining = draining

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval_s)


@contextlib.asynccontextmanager
async def watching(state: ReplicaDrain, replica_id: str | None) -> AsyncIterator[None]:
    """Run a `DrainWatcher` while the app lives, in Serve replicas only (`replica_id` None: nowhere to
    report). The id is the replica's full id, its actor's name: the coordinator tells a replica that
    died (forgotten) from one that is merely quiet (waited for) by it."""
    if replica_id is None:
        yield
        return
    async with running(DrainWatcher(replica_id, state).run(), "drain-watcher"):
        yield
