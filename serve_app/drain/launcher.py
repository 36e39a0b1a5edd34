"""The launcher's half of the drain: create the coordinator, raise the flag, wait for zero."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

from serve_app.drain.coordinator import COORDINATOR_NAME, COORDINATOR_NAMESPACE, DrainStatus, _CoordinatorActor

logger = logging.getLogger(__name__)


def get_or_create_coordinator() -> Any:
    """The cluster's coordinator actor, created if missing (owned by the caller: the launcher)."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=0)(_CoordinatorActor)
    return actor_cls.options(  # type: ignore[attr-defined]
        name=COORDINATOR_NAME, namespace=COORDINATOR_NAMESPACE, get_if_exists=True
    ).remote()


def request_drain(coordinator: Any) -> None:
    import ray

    ray.get(coordinator.request_drain.remote(), timeout=30)


def drain_proxies() -> list[Any]:
    """Put Serve's HTTP proxies in their draining state; returns their handles (empty if unreachable).

    A draining proxy answers its own health check (`/-/healthz`) 503, for load balancers that probe
    the proxy, and still forwards requests (in HAProxy mode the handles are HAProxy's managers,
    which reload HAProxy with the health check failing: it turns 503 a moment after this returns).
    Its count of ongoing requests ends only when a response has been handed to the client's
    connection, so waiting for it protects the tail of a stream the replica has finished but a slow
    client has not read yet. Serve has no public call for this; on a Ray without it the drain falls
    back to the replicas' counts alone.
    """
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        handles = cast(dict[Any, Any], ray.get(controller.get_proxies.remote(), timeout=30))
        proxies = list(handles.values())
        ray.get([p.update_draining.remote(True) for p in proxies], timeout=30)
    except Exception as exc:
        logger.warning("cannot drain Serve's proxies (%s); waiting on the replicas only", type(exc).__name__)
        return []
    return proxies


def _proxies_drained(proxies: list[Any]) -> bool:
    import ray

    try:
        return all(ray.get([p.is_drained.remote() for p in proxies], timeout=30))
    except Exception:  # a proxy that died has nothing left in flight
        return True


def wait_drained(
    coordinator: Any,
    timeout_s: float,
    *,
    proxies: list[Any] | None = None,
    poll_s: float = 0.25,
    on_progress: Callable[[DrainStatus, float], None] | None = None,
    progress_every_s: float = 2.0,
    interrupt: Callable[[], None] | None = None,
) -> bool:
    """Poll until every live replica, then every proxy, has drained (True) or `timeout_s` passes.

    `interrupt` runs between polls; what it raises ends the wait (a forcing shutdown signal).
    """
    import ray

    started = time.monotonic()
    last_progress = started
    while True:
        if interrupt is not None:
            interrupt()
        status: DrainStatus = ray.get(coordinator.status.remote(), timeout=30)
        now = time.monotonic()
        if status.drained and _proxies_drained(proxies or []):
            return True
        if now - started >= timeout_s:
            return False
        if on_progress is not None and now - last_progress >= progress_every_s:
            on_progress(status, now - started)
            last_progress = now
        time.sleep(poll_s)
