"""`compose_router`: the one way a router is built, used by the ingress and the agent alike."""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from serve_app.engines import registry
from serve_app.engines.base import Engine
from serve_app.router.board_actor import cluster_sharing
from serve_app.router.clients import EngineClient, clients_from_handles
from serve_app.router.core import FallbackRouter
from serve_app.router.shared import BreakerSharing
from serve_app.router.types import RouterConfig


def router_config(settings: Settings) -> RouterConfig:
    """The router's budgets from the global settings and each registered engine's own."""
    specs = registry.specs()
    engines = {name: registry.engine_settings(name) for name in specs}
    speed_ranges = {name: spec.speed_range for name, spec in specs.items()}
    return RouterConfig.from_settings(settings, engines, speed_ranges)


def compose_router(
    settings: Settings, clients: dict[str, EngineClient], sharing: BreakerSharing | None = None
) -> FallbackRouter:
    """A router over `clients`; `sharing` links its breakers to the cluster's (None: its own only)."""
    return FallbackRouter(clients, router_config(settings), shared=sharing)


def compose_router_from_handles(
    settings: Settings,
    handles: dict[str, Any],
    unavailable: dict[str, str] | None = None,
    *,
    app_name: str | None = None,
    local: dict[str, Engine] | None = None,
) -> FallbackRouter:
    """A router over engine deployments' handles (in the cluster) and the engines this process
    hosts itself (`local`), with unusable ones reported.

    With `app_name` (the Serve application the engines belong to) and Ray running, its breakers
    follow that application's breaker board (`TTS_BREAKER_SHARED`).
    """
    sharing = cluster_sharing(settings, app_name) if app_name else None
    return compose_router(settings, clients_from_handles(handles, unavailable or {}, local), sharing)
