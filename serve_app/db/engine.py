"""The async engine and its pool, configured from Settings.

PostgreSQL (asyncpg): asyncpg has no libpq `keepalives*` parameters, so keepalives are set on
both ends of the TCP connection: the server's `tcp_keepalives_idle/interval/count` through
`server_settings` (PostgreSQL applies them to its socket for this connection, so the server drops
a peer that vanished), and SO_KEEPALIVE plus TCP_KEEPIDLE/KEEPINTVL/KEEPCNT on the client socket
(so this process notices a server or NAT that vanished instead of waiting forever on a dead
socket). Both are verified against a real server in tests/integration/test_db_postgres.py.
Connect, command and statement timeouts bound every round trip.

SQLite (aiosqlite): WAL journal (readers never block the writer), a busy timeout, and
`BEGIN IMMEDIATE` transactions, so concurrent writers queue on the lock instead of failing with
"database is locked" when a read transaction tries to upgrade. A connection marked `READ_ONLY`
(the health probe) begins a plain deferred transaction instead: it never writes, and must not
queue behind writers to say the database answers.
"""

from __future__ import annotations

import logging
import socket
from asyncio.trsock import TransportSocket
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from config.settings import Settings

logger = logging.getLogger(__name__)

APPLICATION_NAME = "voice-tts-serve"
# Execution option: this connection only reads (SQLite then skips the writer lock; ignored elsewhere).
READ_ONLY = "voice_tts_read_only"


def server_settings(settings: Settings) -> dict[str, str]:
    """PostgreSQL run-time parameters sent in the startup packet of every connection."""
    return {
        "application_name": APPLICATION_NAME,
        "tcp_keepalives_idle": str(settings.db.keepalives_idle),
        "tcp_keepalives_interval": str(settings.db.keepalives_interval),
        "tcp_keepalives_count": str(settings.db.keepalives_count),
        "statement_timeout": str(settings.db.statement_timeout_ms),
        # A transaction left open by a crashed client must not hold locks forever.
        "idle_in_transaction_session_timeout": str(max(settings.db.statement_timeout_ms * 4, 60_000)),
    }


def connect_args(settings: Settings) -> dict[str, Any]:
    """Driver arguments for the configured backend."""
    if settings.db.is_sqlite:
        # aiosqlite's timeout is SQLite's busy timeout: how long a writer waits for the lock.
        return {"timeout": max(settings.db.pool_timeout, 5.0)}
    statement_ms = settings.db.statement_timeout_ms
    # Client-side bound a little above the server's statement_timeout (0 means no limit).
    command_timeout = statement_ms / 1000 + 5 if statement_ms else None
    return {
        "timeout": settings.db.connect_timeout,
        "command_timeout": command_timeout,
        "server_settings": server_settings(settings),
    }


# asyncio hands out a TransportSocket wrapper, which has setsockopt/getsockopt like a socket.
SocketLike = socket.socket | TransportSocket


def set_client_keepalive(sock: SocketLike, settings: Settings) -> None:
    """SO_KEEPALIVE with the configured idle/interval/count on a client TCP socket."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", settings.db.keepalives_idle),
        ("TCP_KEEPINTVL", settings.db.keepalives_interval),
        ("TCP_KEEPCNT", settings.db.keepalives_count),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has all three; other platforms may lack some
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def driver_socket(dbapi_connection: Any) -> SocketLike | None:
    """The TCP socket under SQLAlchemy's asyncpg adapter connection, if there is one."""
    # The asyncpg.Connection: `driver_connection` on the adapter (and on a pool fairy).
    raw = getattr(dbapi_connection, "driver_connection", None) or getattr(dbapi_connection, "_connection", None)
    transport = getattr(raw, "_transport", None)
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket | TransportSocket) else None


def _install_postgres_listeners(engine: AsyncEngine, settings: Settings) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _keepalive(dbapi_connection: Any, _record: Any) -> None:
        sock = driver_socket(dbapi_connection)
        if sock is not None:
            try:
                set_client_keepalive(sock, settings)
            except OSError as exc:  # keepalive is a safety net; never refuse the connection over it
                logger.warning("could not enable TCP keepalive on the database socket: %s", exc)


def _install_sqlite_listeners(engine: AsyncEngine, settings: Settings) -> None:
    busy_ms = int(max(settings.db.pool_timeout, 5.0) * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver; SQLAlchemy's "begin" below decides how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's AsyncEngine with the pool sized and guarded as the settings say."""
    url = make_url(settings.db.url)
    if settings.db.is_sqlite and url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        echo=settings.db.debug_sql,
        pool_size=settings.db.pool_size,
        max_overflow=settings.db.max_overflow,
        pool_recycle=settings.db.pool_recycle,
        pool_pre_ping=settings.db.pool_pre_ping,
        pool_timeout=settings.db.pool_timeout,
        connect_args=connect_args(settings),
    )
    if settings.db.is_sqlite:
        _install_sqlite_listeners(engine, settings)
    else:
        _install_postgres_listeners(engine, settings)
    return engine


def safe_url(settings: Settings) -> str:
    """The database URL with the password hidden, for logs and health output."""
    return make_url(settings.db.url).render_as_string(hide_password=True)
