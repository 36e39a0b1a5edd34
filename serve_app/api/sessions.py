"""Sessions API: create, read, list, heartbeat, finalize (idempotent).

The database itself is opened with the app's state (serve_app/db/lifecycle.py). A database outage
becomes 503 with Retry-After, never a hung request (serve_app/db/guard.py).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.deps import SessionsDep, require_api_key
from serve_app.core.errors import Conflict, NotFound, ServiceError
from serve_app.db.models import SessionStatus
from serve_app.db.sessions import IdempotencyConflict, SessionClosed, SessionNotFound

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


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"session '{session_id[:64]}' not found", code="session_not_found", param="session_id")


@router.post("/v1/sessions", status_code=201, responses={409: {}, 503: {"description": "database unavailable"}})
async def create_session(
    body: CreateSessionBody,
    store: SessionsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> dict[str, Any]:
    """A new session; with `Idempotency-Key`, a retry of the same create returns the same session."""
    try:
        session, replayed = await store.create(
            room=body.room,
            participant=body.participant,
            agent_name=body.agent_name,
            metadata=body.metadata,
            idempotency_key=idempotency_key or None,
        )
    except IdempotencyConflict as exc:
        raise Conflict(str(exc), code="idempotency_key_reused", param="Idempotency-Key") from None
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return session


@router.get("/v1/sessions", responses={503: {"description": "database unavailable"}})
async def list_sessions(
    store: SessionsDep,
    status: str | None = Query(None, description="ACTIVE, COMPLETED, FAILED or ABANDONED"),
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    wanted: SessionStatus | None = None
    if status:
        try:
            wanted = SessionStatus(status.upper())
        except ValueError:
            choices = ", ".join(s.value for s in SessionStatus)
            message = f"status must be one of {choices}"
            raise ServiceError(message, status=422, code="invalid_value", param="status") from None
    data = await store.list_sessions(status=wanted, limit=limit, offset=offset)
    return {"object": "list", "data": data, "limit": limit, "offset": offset}


@router.get("/v1/sessions/{session_id}", responses={404: {}, 503: {}})
async def get_session(session_id: str, store: SessionsDep) -> dict[str, Any]:
    try:
        return await store.get(session_id)
    except SessionNotFound:
        raise _not_found(session_id) from None


@router.post("/v1/sessions/{session_id}/heartbeat", responses={404: {}, 409: {}, 503: {}})
async def heartbeat(session_id: str, store: SessionsDep) -> dict[str, Any]:
    try:
        return await store.heartbeat(session_id)
    except SessionNotFound:
        raise _not_found(session_id) from None
    except SessionClosed as exc:
        message = f"session is {exc.session['status']}"
        raise Conflict(message, code="session_closed", param="session_id") from None


@router.patch("/v1/sessions/{session_id}/finalize", responses={404: {}, 422: {}, 503: {}})
async def finalize_session(
    session_id: str, store: SessionsDep, body: FinalizeBody | None = None
) -> dict[str, Any]:
    """COMPLETED with `ended_at` and the usage summary; finalizing again returns the same session."""
    usage = body.usage.model_dump(mode="json") if body is not None and body.usage is not None else None
    try:
        return await store.finalize(session_id, usage)
    except SessionNotFound:
        raise _not_found(session_id) from None
