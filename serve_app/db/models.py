"""ORM models: voice-agent sessions with their usage summary, and registered voice clones.

Timestamps are timezone-aware UTC everywhere (`UTCDateTime`): SQLite has no time zones, so the
type stores naive UTC there and gives aware datetimes back, which keeps comparisons (the sweeper's
heartbeat cut-off) identical on both backends.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, Float, ForeignKey, Index, Integer, LargeBinary, String, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class SessionStatus(enum.StrEnum):
    """Life of a session: ACTIVE until finalized (COMPLETED), failed, or swept (ABANDONED)."""

    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABANDONED = "ABANDONED"


TERMINAL_STATUSES = frozenset({SessionStatus.COMPLETED, SessionStatus.FAILED})


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")

STATUS_TYPE = Enum(
    SessionStatus,
    name="session_status",
    native_enum=False,
    create_constraint=True,
    length=16,
    validate_strings=True,
    values_callable=lambda e: [m.value for m in e],
)


class Base(DeclarativeBase):
    pass


class VoiceSession(Base):
    """A voice-agent session: who, where, state, heartbeat, and what it consumed."""

    __tablename__ = "voice_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    room: Mapped[str] = mapped_column(String(256), index=True)
    participant: Mapped[str | None] = mapped_column(String(256))
    agent_name: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[SessionStatus] = mapped_column(STATUS_TYPE, default=SessionStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The agent's own summary sent with finalize (characters, audio seconds, per-engine requests
    # and fallbacks, latency percentiles); None until finalized with one.
    usage: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # What this service measured for the session's speech requests (see db/usage.py).
    server_usage: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonDoc, default=dict)

    __table_args__ = (
        # The sweeper's query: ACTIVE sessions with an old heartbeat.
        Index("ix_voice_sessions_status_heartbeat", "status", "last_heartbeat_at"),
        Index("ix_voice_sessions_created_at", "created_at"),
    )

    def to_dict(self) -> dict[str, Any]:
        """The session's public JSON (the API contract the agent and load test build on)."""
        return {
            "id": self.id,
            "object": "session",
            "room": self.room,
            "participant": self.participant,
            "agent_name": self.agent_name,
            "status": self.status.value,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "ended_at": _iso(self.ended_at),
            "last_heartbeat_at": _iso(self.last_heartbeat_at),
            "usage": self.usage,
            "server_usage": self.server_usage or {},
            "metadata": self.metadata_ or {},
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


class StoredClip(Base):
    """A registered voice clone (serve_app.db.voices): the normalised WAV and its public record.

    Every replica reads clips from here, so an upload through any ingress is spoken by any engine
    replica without a shared directory.
    """

    __tablename__ = "voices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    duration_s: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    audio: Mapped[bytes] = mapped_column(LargeBinary)


class ClipEmbedding(Base):
    """A speaker embedding computed from a clip by one engine and model (`key`), for other replicas."""

    __tablename__ = "voice_embeddings"

    voice_id: Mapped[str] = mapped_column(String(32), ForeignKey("voices.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
