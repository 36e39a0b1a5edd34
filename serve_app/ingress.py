"""The ingress deployment: owns the router over the engines and serves the FastAPI app.

The router reaches most engines through their deployments' handles; an engine declared in-process
(`EngineSpec.in_process`: Flite) is built here, in each ingress replica, and called directly.

Serve builds the app after this constructor (`__serve_build_asgi_app__`), on the replica, so
settings (and their failsafes) are read where the code runs, not where `serve run` was typed, and
the router is handed to the app directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve

from config.logging import configure_from_settings
from config.settings import get_settings
from serve_app.api.app import create_app
from serve_app.core import spoken
from serve_app.core.errors import EngineUnavailable
from serve_app.engines import registry
from serve_app.engines.base import Engine
from serve_app.router import compose_router_from_handles

logger = logging.getLogger(__name__)


# Past its replicas' slots and a short queue, Serve's proxy refuses a request with 503 and
# Retry-After before any audio (serve_config.yaml may size both).
@serve.deployment(
    name="Ingress",
    max_ongoing_requests=200,
    max_queued_requests=100,
    backpressure_config={"status_code": 503, "retry_after_s": 1},
)
@serve.ingress()
class Ingress:
    """One per ingress replica: the router over the engine deployments, and the HTTP app."""

    def __init__(
        self,
        engines: dict[str, Any],
        unavailable: dict[str, str] | None = None,
        in_process: tuple[str, ...] | list[str] = (),
    ) -> None:
        configure_from_settings()
        self.settings = get_settings()
        self.local, failed = registry.host_in_process(list(in_process), self.settings)
        for name, reason in failed.items():
            logger.error("engine %s: %s", name, reason)
        # The breakers follow this application's breaker board (one per engine for the cluster).
        app_name = serve.get_replica_context().app_name
        self.router = compose_router_from_handles(
            self.settings, engines, {**(unavailable or {}), **failed}, app_name=app_name, local=self.local
        )
        # Spoken-form grammars load in the background, so the first request finds them ready.
        spoken.warm_up()
        logger.info("ingress ready; chain=%s", ",".join(self.router.chain))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings, self.router, add_request_id=False)

    async def check_health(self) -> None:
        """Serve's health probe: fails when an engine hosted here has a fault a restart can fix (a
        synthesis that never returns), as an engine's own replica would (`EngineHost.check_health`).
        The whole ingress replica is then replaced, streams of other engines included: a stuck
        libflite is rare, and requests queued behind it would otherwise never start."""
        problem = await hosted_engines_problem(self.local)
        if problem:
            raise EngineUnavailable(problem)


async def hosted_engines_problem(engines: Mapping[str, Engine]) -> str | None:
    """What is wrong with the in-process engines that only a new process cures (their `health()`)."""
    for engine in engines.values():
        health = getattr(engine, "health", None)
        problem = await health() if health is not None else None
        if problem:
            return f"{engine.name}: {problem}"
    return None
