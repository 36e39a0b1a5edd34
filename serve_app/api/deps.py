"""Shared state and dependencies of the routes: the process's services and API-key auth.

The Serve ingress replica (or a test, or plain uvicorn) fills `Services` once; routes reach it
through `get_services()`, so the same FastAPI app runs inside and outside Ray.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from config.settings import Settings
from serve_app.api.errors import ApiError
from serve_app.router import FallbackRouter


class AuthConfigurationError(RuntimeError):
    """Production without API_KEYS: the service refuses to start rather than run open."""


@dataclass
class Services:
    settings: Settings
    router: FallbackRouter | None = None
    # Filled by the sessions layer (serve_app/db): a `Database` with pool, breaker and health.
    database: Any = None
    # Extra voice ids known to the service (registered Zonos clones), refreshed by the voices store.
    extra_voices: Callable[[], set[str]] = field(default=lambda: set())
    extras: dict[str, Any] = field(default_factory=dict)


_services: Services | None = None


def set_services(services: Services | None) -> None:
    global _services
    _services = services


def get_services() -> Services:
    if _services is None:
        raise ApiError(503, "service is starting", "not_ready")
    return _services


def get_router() -> FallbackRouter:
    services = get_services()
    if services.router is None:
        raise ApiError(503, "speech router is not ready", "not_ready")
    return services.router


def check_auth_settings(settings: Settings) -> None:
    """Failsafe like CORS: production must configure API keys."""
    if settings.is_production and not settings.api_keys:
        raise AuthConfigurationError("API_KEYS must be set when ENV=production (comma-separated bearer keys)")


def require_api_key(request: Request) -> None:
    """Bearer auth when API_KEYS is set (always in production); open in development without keys."""
    settings = get_services().settings
    keys = settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing bearer API key", "invalid_api_key")
    if not any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in keys):
        raise ApiError(401, "invalid API key", "invalid_api_key")
