"""Engine configuration: pool settings, PostgreSQL keepalives and timeouts, SQLite WAL, safe URLs."""

from __future__ import annotations

import socket
from pathlib import Path

from sqlalchemy import text

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
