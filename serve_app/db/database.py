"""`Database`: the engine, its monitored pool, the breaker, transactions and the health check.

One per process (the ingress replica's lifespan opens it). Every query goes through `run()`,
which applies the breaker and an overall deadline, so no caller waits longer than the pool
timeout plus the connect and statement timeouts, whatever the network does.

A caller's cancellation (a client that hung up, a proxy that gave up) never reaches a transaction
in flight: the transaction runs in a task of its own and finishes (commit or rollback, its
connection back in the pool) while the caller is told at once. Cancelled mid-statement,
SQLAlchemy hands the connection to a clean-up task that closes it, and a second cancellation
(Serve cancels a request more than once) can end that task too: a SQLite connection then keeps
its write lock for good, and every later transaction of every process fails with "database is
locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from config.settings import Settings
from serve_app.db.engine import READ_ONLY, create_engine, safe_url
from serve_app.db.guard import DatabaseGuard, DatabaseUnavailable
from serve_app.db.pool_monitor import PoolMonitor

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Database:
    """The process's database access: guarded transactions, migrations, health, disposal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings)
        self.monitor = PoolMonitor(self.engine)
        self.guard = DatabaseGuard(settings.db.breaker_failures, settings.db.breaker_reset_s)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        statement_s = settings.db.statement_timeout_ms / 1000 if not settings.db.is_sqlite else 0.0
        # Waiting for a pooled connection, opening one, then running the statements.
        self.operation_timeout_s = settings.db.pool_timeout + settings.db.connect_timeout + statement_s + 1.0
        self.health_timeout_s = settings.db.connect_timeout + 1.0
        # SQLite has one writer at a time and every transaction here begins IMMEDIATE. Queuing
        # this process's transactions on a lock is fair and instant, where contending for the
        # file lock makes SQLite's busy handler sleep in steps of up to 100 ms. Other processes
        # sharing the file still wait on the busy timeout.
        self._sqlite_lock: asyncio.Lock | None = asyncio.Lock() if settings.db.is_sqlite else None
        # Transactions whose caller left: referenced until done, so none is collected half-way.
        self._orphans: set[asyncio.Task[Any]] = set()
        logger.debug("database engine created for %s", safe_url(settings))

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in one transaction (committed on return), guarded and bounded in time.

        If the caller is cancelled the transaction still runs to its end (within the same deadline).
        """
        return await self._uncancellable(self._transaction(work))

    async def _uncancellable(self, operation: Awaitable[T]) -> T:
        task = asyncio.ensure_future(operation)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._orphans.add(task)
                task.add_done_callback(self._orphan_done)
            raise

    def _orphan_done(self, task: asyncio.Task[Any]) -> None:
        self._orphans.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.debug("a transaction whose caller left failed: %s", type(error).__name__)

    async def _transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with (
            self.guard.attempt(),
            asyncio.timeout(self.operation_timeout_s),
            self._sqlite_lock or contextlib.nullcontext(),
            self.sessionmaker() as session,
            session.begin(),
        ):
            return await work(session)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe to run from several replicas)."""
        from serve_app.db.migrate import upgrade

        async with self.guard.attempt(), asyncio.timeout(max(self.operation_timeout_s, 60.0)):
            await upgrade(self.engine)

    def pool_status(self) -> dict[str, Any]:
        return self.monitor.status()

    async def health(self) -> dict[str, Any]:
        """`{"ok", "backend", "latency_ms", "pool": {size, checked_out, overflow, ...}, "breaker"}`.

        The probe query goes through the breaker: while it is open the report says so at once,
        and once the reset time has passed the health check itself may be the probe that closes it.
        """
        return await self._uncancellable(self._health())

    async def _health(self) -> dict[str, Any]:
        started = time.perf_counter()
        error: str | None = None
        try:
            async with (
                self.guard.attempt(),
                asyncio.timeout(self.health_timeout_s),
                self.engine.connect() as conn,
            ):
                await conn.execution_options(**{READ_ONLY: True})  # no queueing behind writers
                await conn.execute(text("SELECT 1"))
        except DatabaseUnavailable as exc:
            error = str(exc)[:300]
        except Exception as exc:  # the server answers, with an error (a missing database): not ready either
            error = f"{type(exc).__name__}: {str(exc)[:240]}"
        report: dict[str, Any] = {
            "ok": error is None,
            "backend": self.backend,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "pool": self.pool_status(),
            "breaker": self.guard.snapshot(),
        }
        if error is not None:
            report["error"] = error
        return report

    async def dispose(self) -> None:
        """Let transactions whose caller left finish, then close every pooled connection (at shutdown)."""
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=self.operation_timeout_s)
        await self.engine.dispose()
