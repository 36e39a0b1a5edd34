"""The sessions database: models, an async engine with a monitored pool, a breaker, queries.

Everything here talks SQLAlchemy 2 async to PostgreSQL (asyncpg) in production or SQLite
(aiosqlite) by default, so `make run` needs no database server.
"""

from serve_app.db.database import Database
from serve_app.db.guard import DatabaseUnavailable
from serve_app.db.models import SessionStatus, VoiceSession

__all__ = ["Database", "DatabaseUnavailable", "SessionStatus", "VoiceSession"]
