"""Sessions API: create, read, list, heartbeat, finalize (idempotent); plus the database lifespan.

`setup(app)` registers the lifespan hook that opens the `Database` (migrating when
DB_MIGRATE_ON_START), starts the sweeper, and gives the speech route a usage recorder; the
hook's closer stops the sweeper and closes the pool. A database outage becomes 503 with
Retry-After, never a hung request (serve_app/db/guard.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.deps import Services, get_services, require_api_key
from serve_app.api.errors import ApiError, error_response
from serve_app.db.database import Database
from serve_app.db.guard import DatabaseUnavailable, describe
from serve_app.db.models import SessionStatus
from serve_app.db.sessions import SessionClosed, SessionNotFound, SessionStore
from serve_app.db.sweeper import Sweeper
from serve_app.db.usage import UsageEvent

logger = logging.getLogger(__name__)

router = APIRouter(tags=["sessions"], dependencies=[Depends(require_api_key)])


class CreateSessionBody(BaseModel):
    """A new voice-agent session; only the room is required."""

    model_config = ConfigDict(extra="ignore")

    room: str = Field(..., min_length=1, max_length=256)
    participant: str | None = Field(None, max_length=256)
    agent_name: str | None = Field(None, max_length=128)
    metadata: dict[str, Any] | None = None


class EngineUsage(BaseModel):
    model_config = ConfigDict(extra="allow")

    requests: int = Field(0, ge=0)
    fallbacks: int = Field(0, ge=0)
    failures: int = Field(0, ge=0)


class UsageSummary(BaseModel):
    """The agent's usage summary; known fields are validated, extra ones are kept as sent."""

    model_config = ConfigDict(extra="allow")

    characters: int = Field(0, ge=0)
    audio_seconds: float = Field(0.0, ge=0)
    requests: int = Field(0, ge=0)
    fallbacks: int = Field(0, ge=0)
    engines: dict[str, EngineUsage] = Field(default_factory=dict)
    latency_ms: dict[str, Any] = Field(default_factory=dict, description="percentiles, e.g. {p50, p95, p99}")


class FinalizeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usage: UsageSummary | None = None


def get_store() -> SessionStore:
    store = get_services().extras.get("session_store")
    if store is None:
        raise ApiError(503, "session database is not configured", "database_unavailable")
    return store


def _not_found(session_id: str) -> ApiError:
    return ApiError(404, f"session '{session_id[:64]}' not found", "session_not_found", "session_id")


@router.post("/v1/sessions", status_code=201, responses={503: {"description": "database unavailable"}})
async def create_session(body: CreateSessionBody, store: SessionStore = Depends(get_store)) -> dict[str, Any]:
    return await store.create(
        room=body.room, participant=body.participant, agent_name=body.agent_name, metadata=body.metadata
    )


@router.get("/v1/sessions", responses={503: {"description": "database unavailable"}})
async def list_sessions(
    status: str | None = Query(None, description="ACTIVE, COMPLETED, FAILED or ABANDONED"),
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0),
    store: SessionStore = Depends(get_store),
) -> dict[str, Any]:
    wanted: SessionStatus | None = None
    if status:
        try:
            wanted = SessionStatus(status.upper())
        except ValueError:
            choices = ", ".join(s.value for s in SessionStatus)
            raise ApiError(422, f"status must be one of {choices}", "invalid_value", "status") from None
    data = await store.list_sessions(status=wanted, limit=limit, offset=offset)
    return {"object": "list", "data": data, "limit": limit, "offset": offset}


@router.get("/v1/sessions/{session_id}", responses={404: {}, 503: {}})
async def get_session(session_id: str, store: SessionStore = Depends(get_store)) -> dict[str, Any]:
    try:
        return await store.get(session_id)
    except SessionNotFound:
        raise _not_found(session_id) from None


@router.post("/v1/sessions/{session_id}/heartbeat", responses={404: {}, 409: {}, 503: {}})
async def heartbeat(session_id: str, store: SessionStore = Depends(get_store)) -> dict[str, Any]:
    try:
        return await store.heartbeat(session_id)
    except SessionNotFound:
        raise _not_found(session_id) from None
    except SessionClosed as exc:
        raise ApiError(409, f"session is {exc.session['status']}", "session_closed", "session_id") from None


@router.patch("/v1/sessions/{session_id}/finalize", responses={404: {}, 422: {}, 503: {}})
async def finalize_session(
    session_id: str, body: FinalizeBody | None = None, store: SessionStore = Depends(get_store)
) -> dict[str, Any]:
    """COMPLETED with `ended_at` and the usage summary; finalizing again returns the same session."""
    usage = body.usage.model_dump(mode="json") if body is not None and body.usage is not None else None
    try:
        return await store.finalize(session_id, usage)
    except SessionNotFound:
        raise _not_found(session_id) from None


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


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    retry = getattr(exc, "retry_after_s", None)
    return error_response(503, str(exc)[:300], "database_unavailable", retry_after_s=retry or 1.0)


async def open_database(services: Services) -> Callable[[], Awaitable[None]]:
    """Lifespan hook: open the pool, migrate, start the sweeper; returns the closer."""
    settings = services.settings
    database = Database(settings)
    migrated = not settings.db_migrate_on_start
    if settings.db_migrate_on_start:
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
        ttl_s=settings.session_ttl_s,
        interval_s=settings.session_sweep_interval_s,
        migrated=migrated,
    )
    services.database = database
    services.extras["session_store"] = store
    services.extras["usage_recorder"] = UsageRecorder(store)
    sweeper.start()
    logger.info("session database ready (%s)", database.backend)

    async def close() -> None:
        await sweeper.stop()
        if services.database is database:
            services.database = None
            services.extras.pop("session_store", None)
            services.extras.pop("usage_recorder", None)
        await database.dispose()

    return close


def setup(app: FastAPI) -> None:
    """Called by serve_app.ingress for each app it builds."""
    from serve_app.ingress import register_lifespan_hook

    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    register_lifespan_hook(open_database)
