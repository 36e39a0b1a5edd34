"""Recovery: bring an engine whose breaker opened back without waiting for user traffic.

A background task owned by the router (started lazily on the running loop, stopped by `aclose()`)
wakes when a cooldown ends and sends one short fixed phrase to the engine, never a user's text.
Success closes the breaker; failure reopens it with a doubled cooldown. With breakers shared across
the cluster (`serve_app.router.shared`), the probe first takes the board's lease: only one router
probes an engine at a time, the others learn its verdict from the board.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping

from serve_app.core.breaker import BreakerState
from serve_app.core.errors import reason_of
from serve_app.router.shared import BreakerSharing, LocalOnly
from serve_app.router.status import EngineSlot

logger = logging.getLogger(__name__)

# Speaks the probe phrase with one engine; raises on failure; returns the bytes heard.
ProbeAttempt = Callable[[str], Awaitable[int]]


class Recovery:
    """The probe loop over every open breaker of one router."""

    def __init__(
        self, slots: Mapping[str, EngineSlot], attempt: ProbeAttempt, sharing: BreakerSharing | None = None
    ) -> None:
        self._slots = slots
        self._attempt = attempt
        self._sharing: BreakerSharing = sharing or LocalOnly()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def wake(self) -> None:
        """A breaker changed: look at the schedule again."""
        self._wake.set()

    def start(self) -> None:
        """Start the loop on the running loop (idempotent; no-op without a loop or once closed)."""
        if self._closed:
            return
        task = self._loop_task
        if task is not None and not task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop_task = loop.create_task(self._run(), name="tts-router-probes")

    async def aclose(self) -> None:
        self._closed = True
        tasks = [t for t in (self._loop_task, *self._probes.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._loop_task = None

    async def _run(self) -> None:
        while not self._closed:
            delays: list[float] = []
            for name, slot in self._slots.items():
                if not slot.client.deployed or name in self._probes:
                    continue
                if slot.breaker.begin_probe():
                    task = asyncio.create_task(self._probe(name), name=f"tts-probe-{name}")
                    self._probes[name] = task
                    task.add_done_callback(functools.partial(self._probe_done, name))
                elif slot.breaker.state is BreakerState.OPEN:
                    delays.append(slot.breaker.cooldown_left)
            self._wake.clear()
            timeout = max(0.01, min(delays)) if delays else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _probe_done(self, name: str, _task: asyncio.Task[None] | None = None) -> None:
        self._probes.pop(name, None)
        self._wake.set()

    async def _probe(self, name: str) -> None:
        """One probe; its verdict closes or reopens the breaker (here and, when shared, everywhere)."""
        breaker = self._slots[name].breaker
        if not await self._sharing.acquire_probe(name):
            logger.debug("engine %s is probed by another router; waiting for its verdict", name)
            return  # the board's answer has set this breaker to what the cluster knows
        ok = False
        reason: str | None = None
        heard = 0
        try:
            heard = await self._attempt(name)
            ok = True
        except asyncio.CancelledError:
            reason = "probe cancelled"
            raise
        except Exception as exc:  # the verdict, not a crash: any failure keeps the engine out
            reason = reason_of(exc)
        finally:
            breaker.end_probe(ok, reason)
            self._sharing.end_probe(name, ok, reason)
            if ok:
                logger.info("engine %s recovered: probe spoke %d bytes; breaker closed", name, heard)
            else:
                logger.warning(
                    "engine %s probe failed (%s); breaker open for %.1fs", name, reason, breaker.current_cooldown
                )
