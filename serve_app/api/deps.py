"""Typed dependencies of the routes: each route receives exactly what it uses.

The state lives on the FastAPI app (`app.state.services`, set by the lifespan in
`serve_app.api.app`), so the same app runs inside a Serve replica, under plain uvicorn and in
tests, with no module-global registry.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, WebSocket

from config.settings import Settings
from serve_app.core.errors import DatabaseUnavailable, ServiceUnavailable, Unauthorized
from serve_app.db.lifecycle import UsageRecorder
from serve_app.db.sessions import SessionStore
from serve_app.drain.replica import ReplicaDrain
from serve_app.router import FallbackRouter
from serve_app.state import AppState
from serve_app.voice_store import VoiceStore


class AuthConfigurationError(RuntimeError):
    """Production without API_KEYS: the service refuses to start rather than run open."""


def check_auth_settings(settings: Settings) -> None:
    """Failsafe like CORS: production must configure API keys."""
    if settings.is_production and not settings.http.api_keys:
        raise AuthConfigurationError("API_KEYS must be set when ENV=production (comma-separated bearer keys)")


# Dependencies are `async def` although none of them waits: FastAPI runs a plain `def` dependency in
# its thread pool, a thread hop per dependency per request (about 3 ms of the ingress's CPU per
# speech request, profiled), where these only read attributes.


async def get_state(request: Request) -> AppState:
    return state_of(request.app)


def state_of(app: object) -> AppState:
    """The app's state (routes that are not plain HTTP, like the WebSocket, call this directly)."""
    state: AppState | None = getattr(getattr(app, "state", None), "services", None)
    if state is None:
        raise ServiceUnavailable("service is starting", code="not_ready", retry_after_s=1.0)
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings_dep(state: StateDep) -> Settings:
    return state.settings


async def get_router(state: StateDep) -> FallbackRouter:
    return state.router


async def get_drain(state: StateDep) -> ReplicaDrain:
    return state.drain


def voice_store_of(state: AppState) -> VoiceStore:
    """The voice store, or 503 while the replica is starting."""
    if state.voices is None:
        raise ServiceUnavailable("service is starting", code="not_ready", retry_after_s=1.0)
    return state.voices


async def get_voice_store(state: StateDep) -> VoiceStore:
    return voice_store_of(state)


async def get_sessions(state: StateDep) -> SessionStore:
    if state.sessions is None:
        raise DatabaseUnavailable("session database is not configured")
    return state.sessions


async def get_usage(state: StateDep) -> UsageRecorder | None:
    return state.usage


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RouterDep = Annotated[FallbackRouter, Depends(get_router)]
DrainDep = Annotated[ReplicaDrain, Depends(get_drain)]
VoiceStoreDep = Annotated[VoiceStore, Depends(get_voice_store)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
UsageDep = Annotated[UsageRecorder | None, Depends(get_usage)]


def _key_problem(request: Request, settings: Settings) -> str | None:
    """Why the request is not authorized, or None (always None when API_KEYS is not set)."""
    keys = settings.http.api_keys
    if not keys:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "missing bearer API key"
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        return "invalid API key"
    return None


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Bearer auth when API_KEYS is set (always in production); open in development without keys."""
    problem = _key_problem(request, settings)
    if problem is not None:
        raise Unauthorized(problem)


async def sees_details(request: Request, settings: SettingsDep) -> bool:
    """Whether the caller may see internals (pool, breakers, reasons) on the open health routes."""
    return _key_problem(request, settings) is None


DetailsDep = Annotated[bool, Depends(sees_details)]


def require_api_key_ws(websocket: WebSocket, settings: Settings) -> None:
    """`require_api_key` for the WebSocket: the same bearer header, or an `api_key` query parameter,
    because a browser's WebSocket cannot set headers. Raises `Unauthorized`."""
    keys = settings.http.api_keys
    if not keys:
        return
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        token = websocket.query_params.get("api_key", "")
    if not token:
        raise Unauthorized("missing API key (bearer header or api_key query parameter)")
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        raise Unauthorized("invalid API key")
