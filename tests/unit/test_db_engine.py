"""Engine configuration: pool settings, PostgreSQL keepalives and timeouts, SQLite WAL, safe URLs."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from config.settings import Settings, load_settings
from serve_app.db import Database
from serve_app.db.engine import connect_args, safe_url, set_client_keepalive


def _settings(**overrides: object) -> Settings:
    return load_settings(_env_file=None, **overrides)


def test_postgres_connect_args_carry_keepalives_and_timeouts() -> None:
    settings = _settings(
        database_url="postgresql+asyncpg://u:secret@db.example:5432/app",
        db_keepalives_idle=11,
        db_keepalives_interval=4,
        db_keepalives_count=3,
        db_statement_timeout_ms=2500,
        db_connect_timeout=1.5,
    )
    args = connect_args(settings)
    assert args["timeout"] == 1.5
    assert args["command_timeout"] == 7.5
    server = args["server_settings"]
    assert server["tcp_keepalives_idle"] == "11"
    assert server["tcp_keepalives_interval"] == "4"
    assert server["tcp_keepalives_count"] == "3"
    assert server["statement_timeout"] == "2500"
    assert "secret" not in safe_url(settings)


def test_client_keepalive_options_are_set_on_a_real_socket() -> None:
    settings = _settings(db_keepalives_idle=17, db_keepalives_interval=6, db_keepalives_count=4)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        set_client_keepalive(sock, settings)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 17
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 6
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


async def test_sqlite_pool_from_settings_uses_wal_and_reports_status(tmp_path: Path) -> None:
    settings = _settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/nested/dir/s.db", db_pool_size=3, db_max_overflow=2
    )
    database = Database(settings)
    try:
        async with database.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() >= 5000
        assert (tmp_path / "nested" / "dir" / "s.db").exists()
        report = await database.health()
        assert report["ok"] is True and report["backend"] == "sqlite"
        pool = report["pool"]
        assert pool["size"] == 3 and pool["max_overflow"] == 2 and pool["checked_out"] == 0
        assert pool["events"]["connect"] >= 1
        assert pool["events"]["checkout"] == pool["events"]["checkin"]
    finally:
        await database.dispose()


def _writer_lock_is_free(path: Path) -> bool:
    """True when another connection (another replica, say) can take SQLite's write lock now."""
    probe = sqlite3.connect(path, timeout=0.5)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


async def test_a_transaction_whose_caller_is_cancelled_finishes_and_commits(tmp_path: Path) -> None:
    database = Database(_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db"))
    inside, release = asyncio.Event(), asyncio.Event()

    async def create(session: AsyncSession) -> None:
        await session.execute(text("CREATE TABLE t (x INTEGER)"))

    async def insert(session: AsyncSession) -> None:
        inside.set()
        await release.wait()
        await session.execute(text("INSERT INTO t VALUES (1)"))

    async def count(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT count(*) FROM t"))).scalar_one())

    try:
        await database.run(create)
        caller = asyncio.create_task(database.run(insert))
        await inside.wait()
        for _ in range(3):  # Serve cancels a request whose client left more than once
            caller.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await caller  # the caller is told at once, with the transaction still open
        release.set()
        await database.dispose()  # waits for the transaction the caller left
        assert _writer_lock_is_free(tmp_path / "s.db")
        assert await database.run(count) == 1
    finally:
        await database.dispose()


async def test_callers_cancelled_mid_statement_never_leave_the_write_lock_held(tmp_path: Path) -> None:
    """Clients that hang up while their queries run (cancelled at every point of a transaction,
    more than once each) must not leave a connection holding SQLite's write lock: other
    replicas, and this one, would get "database is locked" from then on."""
    database = Database(_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db"))
    rng = random.Random(7)

    async def read(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    try:
        for _ in range(150):
            callers = [asyncio.create_task(database.run(read)) for _ in range(3)]
            callers += [asyncio.create_task(database.health()) for _ in range(3)]
            await asyncio.sleep(rng.random() * 0.02)
            for _ in range(3):
                for caller in callers:
                    caller.cancel()
                await asyncio.sleep(rng.random() * 0.002)
            await asyncio.gather(*callers, return_exceptions=True)
            await database.dispose()  # every transaction a caller left has ended
            assert _writer_lock_is_free(tmp_path / "s.db")
        assert (await database.health())["ok"] is True
    finally:
        await database.dispose()


async def test_the_health_probe_does_not_queue_behind_a_writer(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock (a long write) must not make the database look
    down: the probe only reads, so it neither waits for the lock nor times out."""
    database = Database(_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/s.db", db_connect_timeout=0.5))
    writer = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        assert (await database.health())["ok"] is True  # creates the file, WAL on
        writer.execute("BEGIN IMMEDIATE")
        report = await database.health()
        assert report["ok"] is True, report
    finally:
        writer.close()
        await database.dispose()
