"""The breaker board as a named Ray actor, and the routers' way to reach it.

One board per Serve application, named after it in Serve's namespace, so every router of that app
(each ingress replica, each agent conversation composed with `app_name`) finds the same one with
get-or-create: whoever comes first creates it, nobody has to start it beforehand.

It is *detached*: an actor owned by the replica that happened to create it would die with that
replica, and every other router would lose the cluster's knowledge exactly when replicas are being
replaced, which is when it matters. A detached actor lives until the cluster ends (or someone
kills it); it holds a few numbers per engine and asks for no CPU. If it is lost anyway, routers
carry on with their local breakers and the next get-or-create makes a fresh one
(`serve_app.router.shared`).

The actor class is `BreakerBoard` itself (async methods: `watch` waits on the actor's event loop
while other calls go on).
"""

from __future__ import annotations

import asyncio
from typing import Any

from config.settings import Settings
from serve_app.core.breaker import BreakerConfig
from serve_app.core.breaker_board import BoardSnapshot, BreakerBoard
from serve_app.router.shared import BoardApi, SharedBreakers

# Serve's own namespace: the board belongs with the application's deployments.
BOARD_NAMESPACE = "serve"


def board_name(app_name: str) -> str:
    return f"tts-breaker-board:{app_name}"


class ActorBoard:
    """`BoardApi` over the board actor's handle (each call one actor task, awaited)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def strike(self, engine: str, reason: str, epoch: int, replica: str | None = None) -> BoardSnapshot:
        result: BoardSnapshot = await self._handle.strike.remote(engine, reason, epoch, replica)
        return result

    async def success(self, engine: str, epoch: int) -> BoardSnapshot:
        result: BoardSnapshot = await self._handle.success.remote(engine, epoch)
        return result

    async def acquire_probe(self, engine: str, holder: str) -> tuple[bool, BoardSnapshot]:
        result: tuple[bool, BoardSnapshot] = await self._handle.acquire_probe.remote(engine, holder)
        return result

    async def end_probe(self, engine: str, holder: str, ok: bool, reason: str | None = None) -> BoardSnapshot:
        result: BoardSnapshot = await self._handle.end_probe.remote(engine, holder, ok, reason)
        return result

    async def watch(self, known_version: int, timeout_s: float = 20.0) -> BoardSnapshot:
        result: BoardSnapshot = await self._handle.watch.remote(known_version, timeout_s)
        return result


def board_actor(app_name: str, config: BreakerConfig, probe_lease_s: float) -> Any:
    """Get or create the app's board actor (blocking: call it off the event loop)."""
    import ray

    actor = ray.remote(BreakerBoard).options(  # type: ignore[attr-defined]
        name=board_name(app_name),
        namespace=BOARD_NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        max_restarts=-1,
    )
    return actor.remote(config, probe_lease_s)


def cluster_sharing(settings: Settings, app_name: str) -> SharedBreakers | None:
    """The routers' link to app `app_name`'s board; None when sharing is off or Ray is not running."""
    import ray

    if not settings.router.breaker_shared or not ray.is_initialized():
        return None
    router = settings.router
    config = BreakerConfig(router.max_strikes, router.breaker_cooldown_s, router.breaker_max_cooldown_s)

    async def connect() -> BoardApi:
        handle = await asyncio.to_thread(board_actor, app_name, config, router.breaker_probe_lease_s)
        return ActorBoard(handle)

    return SharedBreakers(connect)
