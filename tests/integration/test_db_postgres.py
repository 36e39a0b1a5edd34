"""The database layer against the real PostgreSQL at 127.0.0.1:5432, in a throwaway database.

Checks what only a real server can show: keepalives actually in force on both ends of the TCP
connection, row-level races resolved by the database, 200 concurrent sessions with the pool
back to zero, and timeouts that bound a slow statement.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from serve_app.db import Database, DatabaseUnavailable
from serve_app.db.engine import driver_socket
from serve_app.db.sessions import SessionStore
from tests.integration.test_sessions_api import db_settings
from tests.support import PG_ADMIN_DSN, running_app, throwaway_database

pytestmark = [pytest.mark.postgres]



@pytest.fixture(scope="module")
async def pg_url() -> AsyncIterator[str]:
    """A fresh database for this module, dropped at the end."""
    host_part = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    async with throwaway_database("tts_test") as name:
        yield f"{host_part}/{name}"


@pytest.fixture
async def database(pg_url: str) -> AsyncIterator[Database]:
    db = Database(db_settings(pg_url, db_keepalives_idle=42, db_keepalives_interval=7, db_keepalives_count=4))
    await db.migrate()
    try:
        yield db
    finally:
        await db.dispose()


async def test_keepalives_are_in_force_on_server_and_client(database: Database) -> None:
    async with database.engine.connect() as conn:
        shown = {
            name: (await conn.execute(text(f"SHOW {name}"))).scalar()
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "statement_timeout")
        }
        app_name = (await conn.execute(text("SELECT current_setting('application_name')"))).scalar()
        raw = await conn.get_raw_connection()
        sock = driver_socket(raw.dbapi_connection)
    # The server applies these to its socket for this TCP connection (0 would mean "OS default").
    assert shown["tcp_keepalives_idle"] == "42"
    assert shown["tcp_keepalives_interval"] == "7"
    assert shown["tcp_keepalives_count"] == "4"
    assert shown["statement_timeout"] == "15s"
    assert app_name == "voice-tts-serve"
    assert sock is not None and sock.family == socket.AF_INET
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4


async def test_concurrent_finalize_of_one_session(database: Database) -> None:
    store = SessionStore(database)
    created = (await store.create(room="pg-race"))[0]
    results = await asyncio.gather(*(store.finalize(created["id"], {"characters": i}) for i in range(30)))
    assert {r["status"] for r in results} == {"COMPLETED"}
    assert len({r["ended_at"] for r in results}) == 1, "exactly one finalize wins; the rest read its result"
    assert len({str(r["usage"]) for r in results}) == 1


async def test_200_sessions_concurrently_in_the_database_layer(database: Database) -> None:
    store = SessionStore(database)

    async def one(i: int) -> str:
        created = (await store.create(room=f"pg-load-{i}", agent_name="load"))[0]
        await store.heartbeat(created["id"])
        done = await store.finalize(created["id"], {"characters": i})
        assert done["status"] == "COMPLETED"
        return created["id"]

    ids = await asyncio.gather(*(one(i) for i in range(200)))
    async with database.engine.connect() as conn:
        statuses = (
            await conn.execute(
                text("SELECT status, count(*) FROM voice_sessions WHERE id = ANY(:ids) GROUP BY status"), {"ids": ids}
            )
        ).all()
    assert dict(statuses) == {"COMPLETED": 200}
    pool = database.pool_status()
    assert pool["checked_out"] == 0
    assert pool["events"]["checkout"] == pool["events"]["checkin"]
    assert pool["size"] == 10 and pool["max_overflow"] == 20


async def test_200_sessions_concurrently_over_http(pg_url: str) -> None:
    async with running_app(db_settings(pg_url)) as (_, client):

        async def one(i: int) -> dict[str, Any]:
            r = await client.post("/v1/sessions", json={"room": f"http-{i}", "participant": f"p{i}"})
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert (await client.post(f"/v1/sessions/{sid}/heartbeat")).status_code == 200
            r = await client.patch(f"/v1/sessions/{sid}/finalize", json={"usage": {"characters": i}})
            assert r.status_code == 200, r.text
            return r.json()

        finished = await asyncio.gather(*(one(i) for i in range(200)))
        assert all(s["status"] == "COMPLETED" and s["ended_at"] for s in finished)
        ids = {s["id"] for s in finished}
        listed = (await client.get("/v1/sessions", params={"status": "COMPLETED", "limit": 500})).json()["data"]
        assert ids <= {s["id"] for s in listed}
        health = (await client.get("/health/db")).json()
        assert health["ok"] is True and health["backend"] == "postgresql"
        assert health["pool"]["checked_out"] == 0


async def test_statement_timeout_bounds_a_slow_query(pg_url: str) -> None:
    db = Database(db_settings(pg_url, db_statement_timeout_ms=300, db_breaker_failures=5))
    try:

        async def slow(session: Any) -> None:
            await session.execute(text("SELECT pg_sleep(30)"))

        with pytest.raises(DatabaseUnavailable, match="statement timeout"):
            await db.run(slow)
        assert db.pool_status()["checked_out"] == 0
        assert (await db.health())["ok"] is True, "one slow statement does not open the breaker"
    finally:
        await db.dispose()
