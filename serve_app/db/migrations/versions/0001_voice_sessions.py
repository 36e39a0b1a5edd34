"""Create voice_sessions.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from serve_app.db.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATUSES = ("ACTIVE", "COMPLETED", "FAILED", "ABANDONED")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "voice_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("room", sa.String(256), nullable=False),
        sa.Column("participant", sa.String(256), nullable=True),
        sa.Column("agent_name", sa.String(128), nullable=True),
        sa.Column(
            "status",
            sa.Enum(*_STATUSES, name="session_status", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("last_heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("usage", _json(), nullable=True),
        sa.Column("server_usage", _json(), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
    )
    op.create_index("ix_voice_sessions_room", "voice_sessions", ["room"])
    op.create_index("ix_voice_sessions_status_heartbeat", "voice_sessions", ["status", "last_heartbeat_at"])
    op.create_index("ix_voice_sessions_created_at", "voice_sessions", ["created_at"])


def downgrade() -> None:
    op.drop_table("voice_sessions")
