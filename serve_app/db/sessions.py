"""Session queries. Every state change is one conditional UPDATE, so concurrent callers (two
replicas finalizing the same session, the sweeper racing a late heartbeat) cannot both win:
the database decides, and the loser reads the winner's result.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from serve_app.db.database import Database
from serve_app.db.models import TERMINAL_STATUSES, SessionStatus, VoiceSession, utcnow
from serve_app.db.usage import UsageEvent, apply_event

logger = logging.getLogger(__name__)

# States a finalize or a heartbeat may still change (an ABANDONED session was only presumed dead).
_OPEN = (SessionStatus.ACTIVE, SessionStatus.ABANDONED)
# Session ids derived from an Idempotency-Key: the same key always names the same row.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c2b7e-5d8a-4e4b-9a51-2f0d3c8e7a10")


def idempotent_id(key: str) -> str:
    """The session id a retried create with this key maps to (no extra column, no extra lookup)."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, key))


class IdempotencyConflict(Exception):
    """The key was already used to create a session for another room."""


class SessionNotFound(LookupError):
    """No session with this id."""


class SessionClosed(Exception):
    """The session is COMPLETED or FAILED; a heartbeat cannot reopen it."""

    def __init__(self, session: dict[str, Any]) -> None:
        super().__init__(f"session {session['id']} is {session['status']}")
        self.session = session


def _conditional_update(session_id: str, allowed: tuple[SessionStatus, ...], **values: Any) -> Any:
    return (
        update(VoiceSession)
        .where(VoiceSession.id == session_id, VoiceSession.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def _load(s: AsyncSession, session_id: str) -> VoiceSession:
    row = await s.get(VoiceSession, session_id, populate_existing=True)
    if row is None:
        raise SessionNotFound(session_id)
    return row


class SessionStore:
    """Session operations over a `Database`; each method is one guarded transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(
        self,
        *,
        room: str,
        participant: str | None = None,
        agent_name: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """The new session and False; with a key already used, the session it created and True.

        A create is retried by clients whose response was lost; the key makes the retry return the
        first session instead of starting a duplicate. The id is derived from the key, so the
        primary key itself is the guard, even for two retries racing each other.
        """
        now = utcnow()
        row = VoiceSession(
            id=idempotent_id(idempotency_key) if idempotency_key else str(uuid.uuid4()),
            room=room,
            participant=participant,
            agent_name=agent_name,
            status=SessionStatus.ACTIVE,
            created_at=now,
            updated_at=now,
            last_heartbeat_at=now,
            usage=None,
            server_usage={},
            metadata_=metadata or {},
        )

        async def work(s: AsyncSession) -> dict[str, Any]:
            s.add(row)
            await s.flush()
            return row.to_dict()

        try:
            created = await self.database.run(work)
        except IntegrityError:
            if not idempotency_key:
                raise
            existing = await self.get(row.id)
            if existing["room"] != room:
                raise IdempotencyConflict(f"Idempotency-Key already used for room {existing['room'][:64]}") from None
            logger.debug("session create replayed id=%s", existing["id"])
            return existing, True
        logger.debug("session created id=%s room=%s", created["id"], created["room"][:64])
        return created, False

    async def get(self, session_id: str) -> dict[str, Any]:
        async def work(s: AsyncSession) -> dict[str, Any]:
            return (await _load(s, session_id)).to_dict()

        return await self.database.run(work)

    async def list_sessions(
        self, *, status: SessionStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Newest first, optionally only one status."""
        query = (
            select(VoiceSession)
            .order_by(VoiceSession.created_at.desc(), VoiceSession.id)
            .limit(limit)
            .offset(offset)
        )
        if status is not None:
            query = query.where(VoiceSession.status == status)

        async def work(s: AsyncSession) -> list[dict[str, Any]]:
            return [row.to_dict() for row in (await s.scalars(query)).all()]

        return await self.database.run(work)

    async def count_by_status(self) -> dict[str, int]:
        query = select(VoiceSession.status, func.count()).group_by(VoiceSession.status)

        async def work(s: AsyncSession) -> dict[str, int]:
            return {status.value: int(n) for status, n in (await s.execute(query)).all()}

        return await self.database.run(work)

    async def heartbeat(self, session_id: str) -> dict[str, Any]:
        """Record that the agent is alive; revives a session the sweeper presumed abandoned."""
        now = utcnow()
        values = {"last_heartbeat_at": now, "updated_at": now, "status": SessionStatus.ACTIVE, "ended_at": None}
        statement = _conditional_update(session_id, _OPEN, **values)

        async def work(s: AsyncSession) -> dict[str, Any]:
            await s.execute(statement)
            return (await _load(s, session_id)).to_dict()

        session = await self.database.run(work)
        if SessionStatus(session["status"]) in TERMINAL_STATUSES:
            raise SessionClosed(session)
        return session

    async def finalize(self, session_id: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        """Mark COMPLETED with `ended_at` and the usage summary; again is a no-op returning the same."""
        now = utcnow()
        values: dict[str, Any] = {"status": SessionStatus.COMPLETED, "ended_at": now, "updated_at": now}
        if usage is not None:
            values["usage"] = usage
        statement = _conditional_update(session_id, _OPEN, **values)

        async def work(s: AsyncSession) -> tuple[bool, dict[str, Any]]:
            changed = cast(CursorResult[Any], await s.execute(statement)).rowcount == 1
            return changed, (await _load(s, session_id)).to_dict()

        changed, session = await self.database.run(work)
        if changed:
            logger.debug("session finalized id=%s", session_id)
        return session

    async def record_usage(self, session_id: str, event: UsageEvent) -> bool:
        """Add one speech request's usage to the session; False when there is no such session."""

        async def work(s: AsyncSession) -> bool:
            row = await s.scalar(select(VoiceSession).where(VoiceSession.id == session_id).with_for_update())
            if row is None:
                return False
            row.server_usage = apply_event(row.server_usage, event)
            row.updated_at = utcnow()
            return True

        return await self.database.run(work)

    async def sweep(self, ttl_s: float, *, now: datetime | None = None) -> int:
        """Mark ACTIVE sessions silent for more than `ttl_s` as ABANDONED; returns how many."""
        now = now or utcnow()
        cutoff = now - timedelta(seconds=ttl_s)
        statement = (
            update(VoiceSession)
            .where(VoiceSession.status == SessionStatus.ACTIVE, VoiceSession.last_heartbeat_at < cutoff)
            .values(status=SessionStatus.ABANDONED, ended_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )

        async def work(s: AsyncSession) -> int:
            return int(cast(CursorResult[Any], await s.execute(statement)).rowcount or 0)

        return await self.database.run(work)
