"""Background upkeep: migrate when the database first answers, then sweep abandoned sessions.

A crashed agent never finalizes; without the sweeper its sessions would stay ACTIVE forever.
Every replica may run one: the sweep is a single idempotent UPDATE, so overlap is harmless.
The loop never dies on a database error (it waits for the next tick; the breaker keeps it
from hammering a database that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from serve_app.db.database import Database
from serve_app.db.guard import DatabaseUnavailable
from serve_app.db.sessions import SessionStore

logger = logging.getLogger(__name__)


class Sweeper:
    """Runs `SessionStore.sweep` every `interval_s`; `migrated` is False until migrations ran."""

    def __init__(self, database: Database, *, ttl_s: float, interval_s: float, migrated: bool) -> None:
        self.database = database
        self.store = SessionStore(database)
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.migrated = migrated
        self.swept_total = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="session-sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self) -> int:
        """One round: migrate if still pending, then sweep. Returns sessions marked ABANDONED."""
        if not self.migrated:
            await self.database.migrate()
            self.migrated = True
            logger.info("database migrations applied")
        swept = await self.store.sweep(self.ttl_s)
        self.swept_total += swept
        if swept:
            logger.info("marked %d silent session(s) ABANDONED (ttl %.0fs)", swept, self.ttl_s)
        return swept

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except DatabaseUnavailable as exc:
                logger.debug("sweep skipped: %s", exc)
            except Exception:
                logger.exception("session sweep failed")
            await asyncio.sleep(self.interval_s)
