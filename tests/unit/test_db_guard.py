"""The database breaker: which errors are outages, fail fast while open, recover through a probe."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from serve_app.core.breaker import BreakerState
from serve_app.db.guard import DatabaseGuard, DatabaseUnavailable, is_outage


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _fail(guard: DatabaseGuard, error: BaseException) -> None:
    with pytest.raises(DatabaseUnavailable):
        async with guard.attempt():
            raise error


def test_outage_classification() -> None:
    assert is_outage(ConnectionRefusedError(111, "refused"))
    assert is_outage(TimeoutError())
    assert is_outage(sa_exc.TimeoutError("QueuePool limit reached"))
    assert is_outage(sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open database")))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = OSError("network unreachable")
    assert is_outage(wrapped)
    # The database answered: not an outage.
    assert not is_outage(sa_exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not is_outage(ValueError("bad input"))
    assert not is_outage(LookupError("no such session"))


async def test_opens_after_consecutive_outages_then_fails_fast() -> None:
    clock = Clock()
    guard = DatabaseGuard(failures=3, reset_s=2.0, clock=clock)
    for _ in range(2):
        await _fail(guard, ConnectionRefusedError(111, "refused"))
    assert guard.state is BreakerState.CLOSED
    await _fail(guard, ConnectionRefusedError(111, "refused"))
    assert guard.state is BreakerState.OPEN

    ran = False
    with pytest.raises(DatabaseUnavailable) as info:
        async with guard.attempt():
            ran = True
    assert not ran, "an open breaker must not let the call reach the database"
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0


async def test_non_outage_errors_pass_through_and_reset_strikes() -> None:
    guard = DatabaseGuard(failures=2, reset_s=1.0, clock=Clock())
    await _fail(guard, OSError("reset"))
    with pytest.raises(LookupError):
        async with guard.attempt():
            raise LookupError("session not found")
    await _fail(guard, OSError("reset"))
    assert guard.state is BreakerState.CLOSED, "strikes must be consecutive"


async def test_probe_after_reset_closes_or_reopens_with_longer_cooldown() -> None:
    clock = Clock()
    guard = DatabaseGuard(failures=1, reset_s=2.0, clock=clock)
    await _fail(guard, OSError("down"))
    clock.t += 2.5
    await _fail(guard, OSError("still down"))  # this call was the probe
    assert guard.state is BreakerState.OPEN
    assert guard.breaker.current_cooldown == 4.0
    clock.t += 2.5
    with pytest.raises(DatabaseUnavailable):  # cooldown doubled: not yet
        async with guard.attempt():
            pass
    clock.t += 2.0
    async with guard.attempt():
        pass
    assert guard.state is BreakerState.CLOSED


async def test_only_one_probe_while_half_open_and_cancelled_probe_reopens() -> None:
    clock = Clock()
    guard = DatabaseGuard(failures=1, reset_s=1.0, clock=clock)
    await _fail(guard, OSError("down"))
    clock.t += 1.5
    probe_entered = asyncio.Event()

    async def probe() -> None:
        async with guard.attempt():
            probe_entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(probe())
    await probe_entered.wait()
    assert guard.state is BreakerState.HALF_OPEN
    with pytest.raises(DatabaseUnavailable):
        async with guard.attempt():
            pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.state is BreakerState.OPEN, "a probe that never finished must not leave the breaker half-open"


async def test_stale_success_does_not_close_a_breaker_opened_meanwhile() -> None:
    clock = Clock()
    guard = DatabaseGuard(failures=1, reset_s=5.0, clock=clock)
    slow_inside = asyncio.Event()
    release = asyncio.Event()

    async def slow_success() -> None:
        async with guard.attempt():
            slow_inside.set()
            await release.wait()

    task = asyncio.create_task(slow_success())
    await slow_inside.wait()
    clock.t += 0.1
    await _fail(guard, OSError("down"))
    release.set()
    await task
    assert guard.state is BreakerState.OPEN
