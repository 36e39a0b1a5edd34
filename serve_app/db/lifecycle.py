"""The sessions database's life in one ingress replica: open the pool, migrate, sweep, close.

A database that is down at start does not stop the service: `/health/db` says 503, session routes
answer 503 with Retry-After, and the sweeper retries the migration until it succeeds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from config.settings import Settings
from serve_app.core.errors import DatabaseUnavailable
from serve_app.db.database import Database
from serve_app.db.guard import describe
from serve_app.db.sessions import SessionStore
from serve_app.db.sweeper import Sweeper
from serve_app.db.usage import UsageEvent

logger = logging.getLogger(__name__)


class UsageRecorder:
    """The speech route's `usage_recorder`: adds each request's usage to its session, best effort."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def __call__(
        self,
        session_id: str,
        *,
        characters: int,
        audio_seconds: float,
        engines: dict[str, int],
        ttfb_s: float | None,
        ok: bool,
        elapsed_s: float | None,
    ) -> None:
        event = UsageEvent(
            characters=characters, audio_seconds=audio_seconds, engines=dict(engines), ok=ok,
            elapsed_s=elapsed_s, ttfb_s=ttfb_s,
        )
        try:
            found = await self.store.record_usage(session_id[:64], event)
        except DatabaseUnavailable as exc:
            logger.debug("usage for session %s not recorded: %s", session_id[:64], exc)
            return
        if not found:
            logger.debug("usage for unknown session %s ignored", session_id[:64])


@dataclass(frozen=True)
class OpenDatabase:
    """What the routes use of an open database."""

    database: Database
    sessions: SessionStore
    usage: UsageRecorder


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[OpenDatabase]:
    database = Database(settings)
    migrated = not settings.db.migrate_on_start
    if settings.db.migrate_on_start:
        try:
            await database.migrate()
            migrated = True
        except DatabaseUnavailable as exc:
            # Start anyway: /health/db says 503 and the sweeper retries the migration.
            logger.error("database migration at start failed, will retry: %s", exc)
        except Exception as exc:
            logger.exception("database migration at start failed, will retry: %s", describe(exc))
    store = SessionStore(database)
    sweeper = Sweeper(
        database,
        ttl_s=settings.sessions.ttl_s,
        interval_s=settings.sessions.sweep_interval_s,
        migrated=migrated,
    )
    sweeper.start()
    logger.info("session database ready (%s)", database.backend)
    try:
        yield OpenDatabase(database, store, UsageRecorder(store))
    finally:
        await sweeper.stop()
        await database.dispose()
