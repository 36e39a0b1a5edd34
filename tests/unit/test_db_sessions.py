"""Session queries on a real SQLite file: migrations, lifecycle, races, sweeper, outage behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from config.settings import load_settings
from serve_app.db import Database, DatabaseUnavailable
from serve_app.db.migrate import current_revision
from serve_app.db.models import Base, utcnow
from serve_app.db.sessions import IdempotencyConflict, SessionClosed, SessionNotFound, SessionStore
from serve_app.db.sweeper import Sweeper
from serve_app.db.usage import UsageEvent


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    settings = load_settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/sessions.db")
    db = Database(settings)
    await db.migrate()
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def store(database: Database) -> SessionStore:
    return SessionStore(database)


async def test_migrations_reach_head_and_match_the_models(database: Database) -> None:
    assert await current_revision(database.engine) == "0002"
    await database.migrate()  # a second run (another replica) is a no-op

    def diff(sync_conn: object) -> list[object]:
        return compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)  # type: ignore[arg-type]

    async with database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
    assert {"voice_sessions", "voices", "voice_embeddings"} <= set(tables)


async def test_lifecycle_create_heartbeat_finalize(store: SessionStore) -> None:
    created = (await store.create(room="room-1", participant="alice", agent_name="agent", metadata={"lang": "en"}))[0]
    assert created["status"] == "ACTIVE" and created["ended_at"] is None
    assert created["metadata"] == {"lang": "en"}
    beat = await store.heartbeat(created["id"])
    assert beat["last_heartbeat_at"] >= created["last_heartbeat_at"]
    usage = {"characters": 42, "engines": {"flite": {"requests": 2, "fallbacks": 0}}}
    done = await store.finalize(created["id"], usage)
    assert done["status"] == "COMPLETED" and done["ended_at"] is not None
    assert done["usage"] == usage
    again = await store.finalize(created["id"], {"characters": 1})
    assert again == done, "finalizing again returns the same session unchanged"
    with pytest.raises(SessionClosed):
        await store.heartbeat(created["id"])
    with pytest.raises(SessionNotFound):
        await store.finalize("no-such-session")
    with pytest.raises(SessionNotFound):
        await store.get("no-such-session")


async def test_concurrent_finalize_of_one_session_has_one_winner(store: SessionStore) -> None:
    created = (await store.create(room="race"))[0]
    results = await asyncio.gather(*(store.finalize(created["id"], {"characters": i}) for i in range(25)))
    assert {r["status"] for r in results} == {"COMPLETED"}
    assert len({r["ended_at"] for r in results}) == 1
    assert len({str(r["usage"]) for r in results}) == 1


async def test_200_sessions_created_and_finalized_concurrently(store: SessionStore, database: Database) -> None:
    async def one(i: int) -> str:
        created = (await store.create(room=f"load-{i}", participant=f"user-{i}"))[0]
        await store.heartbeat(created["id"])
        await store.finalize(created["id"], {"characters": i})
        return created["id"]

    ids = await asyncio.gather(*(one(i) for i in range(200)))
    assert len(set(ids)) == 200
    assert await store.count_by_status() == {"COMPLETED": 200}
    pool = database.pool_status()
    assert pool["checked_out"] == 0
    assert pool["events"]["checkout"] == pool["events"]["checkin"]
    completed = await store.list_sessions(status=None, limit=500)
    assert all(s["ended_at"] for s in completed)


async def test_sweeper_abandons_silent_sessions_and_heartbeat_revives(database: Database) -> None:
    store = SessionStore(database)
    silent = (await store.create(room="silent"))[0]
    alive = (await store.create(room="alive"))[0]
    later = utcnow() + timedelta(seconds=120)
    await store.heartbeat(alive["id"])
    assert await store.sweep(ttl_s=60, now=later) == 2
    assert (await store.get(silent["id"]))["status"] == "ABANDONED"
    revived = await store.heartbeat(silent["id"])
    assert revived["status"] == "ACTIVE" and revived["ended_at"] is None
    finalized = await store.finalize(alive["id"])  # a late finalize still completes an abandoned session
    assert finalized["status"] == "COMPLETED"

    sweeper = Sweeper(database, ttl_s=0.05, interval_s=0.05, migrated=True)
    sweeper.start()
    try:
        for _ in range(200):
            if (await store.get(silent["id"]))["status"] == "ABANDONED":
                break
            await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()
    assert (await store.get(silent["id"]))["status"] == "ABANDONED"
    assert sweeper.swept_total >= 1
    assert (await store.get(alive["id"]))["status"] == "COMPLETED", "the sweeper never touches finished sessions"


async def test_usage_recording_accumulates_under_concurrency(store: SessionStore) -> None:
    created = (await store.create(room="usage"))[0]
    events = [UsageEvent(characters=10, audio_seconds=0.5, engines={"flite": 2}, elapsed_s=0.1) for _ in range(30)]
    assert all(await asyncio.gather(*(store.record_usage(created["id"], e) for e in events)))
    usage = (await store.get(created["id"]))["server_usage"]
    assert usage["requests"] == 30 and usage["characters"] == 300 and usage["audio_seconds"] == 15.0
    assert usage["engines"]["flite"] == {"requests": 30, "chunks": 60}
    assert not await store.record_usage("missing", events[0])


async def test_list_filters_by_status(store: SessionStore) -> None:
    a = (await store.create(room="list-a"))[0]
    b = (await store.create(room="list-b"))[0]
    await store.finalize(b["id"])
    active = [s["id"] for s in await store.list_sessions(status=None)]
    assert active.index(b["id"]) < active.index(a["id"]), "newest first"
    from serve_app.db.models import SessionStatus

    completed = await store.list_sessions(status=SessionStatus.COMPLETED)
    assert [s["id"] for s in completed] == [b["id"]]


async def test_unreachable_database_fails_fast_and_health_reports_it(tmp_path: Path) -> None:
    # The database file's directory vanishes after start: SQLite cannot open it (a real outage).
    folder = tmp_path / "gone"
    settings = load_settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{folder}/sessions.db",
        db_breaker_failures=2,
        db_breaker_reset_s=30,
    )
    db = Database(settings)
    folder.rmdir()
    try:
        store = SessionStore(db)
        for _ in range(2):
            with pytest.raises(DatabaseUnavailable):
                await store.create(room="x")
        connects_before = db.pool_status()["events"]["connect"]
        with pytest.raises(DatabaseUnavailable, match="circuit open"):
            await store.create(room="x")
        report = await db.health()
        assert report["ok"] is False and report["breaker"]["state"] == "open"
        assert "error" in report
        assert db.pool_status()["events"]["connect"] == connects_before, "open breaker: no connection attempts"
        assert report["pool"]["checked_out"] == 0
    finally:
        await db.dispose()


async def test_health_reports_a_database_that_does_not_exist_instead_of_raising() -> None:
    # The server answers, with an error: the probe must say "not ok", never raise (a 500).
    settings = load_settings(
        _env_file=None, database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/tts_no_such_database_here"
    )
    db = Database(settings)
    try:
        report = await db.health()
        assert report["ok"] is False and "tts_no_such_database_here" in report["error"]
    finally:
        await db.dispose()


async def test_create_with_an_idempotency_key_returns_the_first_session(store: SessionStore) -> None:
    first, replayed = await store.create(room="idem", participant="p", idempotency_key="key-1")
    assert not replayed
    again = await asyncio.gather(*(store.create(room="idem", idempotency_key="key-1") for _ in range(5)))
    assert all(s["id"] == first["id"] and was for s, was in again)
    other, replayed_other = await store.create(room="idem", idempotency_key="key-2")
    assert other["id"] != first["id"] and not replayed_other
    with pytest.raises(IdempotencyConflict):
        await store.create(room="another-room", idempotency_key="key-1")
    assert len(await store.list_sessions()) == 2
