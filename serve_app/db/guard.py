"""A circuit breaker around the database, so an outage costs callers milliseconds, not minutes.

Without it every request waits out the connect timeout (or the pool timeout, once the pool is
full of requests doing that) while the database is down. With it, after `DB_BREAKER_FAILURES`
consecutive outage errors the breaker opens and calls fail at once with `DatabaseUnavailable`
(the API answers 503); after `DB_BREAKER_RESET_S` one call is let through as a probe, and its
success closes the breaker again. It reuses the engines' breaker (serve_app/breaker.py).

Only outage errors count (refused or dropped connections, timeouts, server shutting down, pool
exhausted); an answer from the database, even an error such as a constraint violation, proves it
is up and counts as a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc

from serve_app.core.breaker import BreakerConfig, BreakerState, CircuitBreaker
from serve_app.core.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)


_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; ConnectionError is a subclass
    TimeoutError,  # connect/command timeouts and our own operation deadline
    sa_exc.TimeoutError,  # the pool had no connection to give within DB_POOL_TIMEOUT
    sa_exc.DisconnectionError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sqlite3.OperationalError,  # unable to open file, locked past the busy timeout, I/O error
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.InterfaceError,  # connection closed underneath us
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
)


def is_outage(error: BaseException) -> bool:
    """True when `error` (or what it wraps) says the database is unreachable or unusable."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DatabaseUnavailable, *_OUTAGE_TYPES)):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
    return False


def describe(error: BaseException) -> str:
    inner = getattr(error, "orig", None) or error.__cause__ or error
    return f"{type(inner).__name__}: {str(inner).splitlines()[0][:200] if str(inner) else ''}"


class DatabaseGuard:
    """Breaker-guarded attempts: `async with guard.attempt(): ...` around each database call."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        config = BreakerConfig(max_strikes=failures, cooldown_s=reset_s, max_cooldown_s=reset_s * 4)
        self.breaker = CircuitBreaker(config, clock=clock)

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def snapshot(self) -> dict[str, Any]:
        return self.breaker.snapshot()

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Fail fast while open; otherwise run the body and record how the database did."""
        breaker = self.breaker
        if not breaker.allows_traffic() and not breaker.probe_due():
            raise DatabaseUnavailable(
                f"database unavailable (circuit open: {breaker.last_error or 'outage'})",
                retry_after_s=max(breaker.cooldown_left, 0.1),
            )
        probing = breaker.state is BreakerState.HALF_OPEN
        # Results of calls that began before the breaker last changed state are stale: a slow
        # success from before an outage must not close the breaker, nor an old failure reopen it.
        started = breaker.now()
        try:
            yield
        except asyncio.CancelledError:
            if probing:  # the probe never finished: count it, or the breaker would wait forever
                breaker.record_strike("probe cancelled", started_at=started)
            raise
        except BaseException as error:
            if not is_outage(error):
                self._success(probing, started)
                raise
            reason = describe(error)
            if breaker.record_strike(reason, started_at=started):
                logger.warning("database circuit opened for %.1fs: %s", breaker.current_cooldown, reason)
            else:
                logger.debug("database outage error (%d strikes): %s", breaker.strikes, reason)
            if isinstance(error, DatabaseUnavailable):
                raise
            raise DatabaseUnavailable(f"database unavailable ({reason})") from error
        else:
            self._success(probing, started)

    def _success(self, probing: bool, started: float) -> None:
        was_closed = self.breaker.state is BreakerState.CLOSED
        self.breaker.record_success(started_at=started)
        if not was_closed and self.breaker.state is BreakerState.CLOSED:
            logger.info("database reachable again; circuit closed%s", " by probe" if probing else "")
