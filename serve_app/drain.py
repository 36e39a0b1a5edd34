"""Graceful drain of the Serve application: finish what is in flight, refuse what is new.

Ray 2.60 has no HTTP drain of its own for this case (see tests/integration/test_hardening_faults.py):
SIGTERM to `serve run` cuts streams within a second, and `serve.shutdown()`/`serve.delete()` stop
the proxy or the engines while answers are still being spoken. So the launcher
(`python -m serve_app.launch`) drains first and only then shuts Serve down:

- `DrainLedger` (plain class, unit-tested without Ray) holds the `draining` flag and the in-flight
  count each ingress replica last reported, with the time of the report, so the count of a replica
  that died stops counting after `stale_after_s`. A report also says whether the replica already
  knew about the drain when it counted: the drain is over only when every live replica has counted
  with the flag set (a request it admitted just before seeing the flag is then in the count) and
  the counts add up to zero.
- `DrainCoordinator` is that ledger in a named Ray actor (0 CPUs). The launcher creates it before
  deploying, so it lives exactly as long as the launcher's cluster; under plain `serve run` there is
  no coordinator and replicas never drain.
- The launcher also puts Serve's proxies in their draining state and waits for their ongoing
  requests (`drain_proxies`), so bytes a slow client has not read yet are not lost at shutdown.
- In each ingress replica, `InFlightCounter` (pure ASGI middleware) counts HTTP requests until their
  response, streamed body included, is finished, and `DrainWatcher` (a lifespan background task)
  reports that count every `REPORT_INTERVAL_S` and takes the flag back in the same actor call.
  While the flag is set, `/health/ready` answers 503 "draining" and new speech requests get 503
  "draining" with Retry-After; streams already running continue, on engines that stay up because
  nothing is stopped before the drain ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

COORDINATOR_NAME = "tts-drain"
COORDINATOR_NAMESPACE = "tts"
REPORT_INTERVAL_S = 0.5
LOOKUP_RETRY_S = 5.0  # no coordinator (plain `serve run`): look again now and then, not every tick
REPORT_TIMEOUT_S = 2.0
STALE_AFTER_S = 5.0
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class ReplicaReport:
    in_flight: int
    acked: bool  # the replica already knew about the drain when it counted
    at: float


@dataclass(frozen=True)
class DrainStatus:
    draining: bool
    in_flight: int  # summed over replicas with a fresh report
    replicas: int  # replicas with a fresh report
    unacked: int  # fresh replicas that have not yet counted with the flag set

    @property
    def drained(self) -> bool:
        return self.draining and self.in_flight == 0 and self.unacked == 0


class DrainLedger:
    """The drain flag and the replicas' in-flight counts; expiry keeps a dead replica from blocking."""

    def __init__(self, stale_after_s: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.draining = False
        self._reports: dict[str, ReplicaReport] = {}

    def request_drain(self) -> None:
        self.draining = True

    def report(self, replica_id: str, in_flight: int, acked: bool) -> bool:
        """Record a replica's count; returns the flag so one call both reports and polls."""
        self._reports[replica_id] = ReplicaReport(max(0, int(in_flight)), bool(acked), self.clock())
        return self.draining

    def status(self) -> DrainStatus:
        now = self.clock()
        self._reports = {rid: r for rid, r in self._reports.items() if now - r.at <= self.stale_after_s}
        fresh = self._reports.values()
        return DrainStatus(
            draining=self.draining,
            in_flight=sum(r.in_flight for r in fresh),
            replicas=len(self._reports),
            unacked=sum(1 for r in fresh if not r.acked),
        )


class _CoordinatorActor:
    """The ledger behind a Ray actor handle (wrapped by `ray.remote` in `get_or_create_coordinator`)."""

    def __init__(self) -> None:
        self.ledger = DrainLedger()

    def request_drain(self) -> None:
        self.ledger.request_drain()

    def report(self, replica_id: str, in_flight: int, acked: bool) -> bool:
        return self.ledger.report(replica_id, in_flight, acked)

    def status(self) -> DrainStatus:
        return self.ledger.status()


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
    the proxy, and still forwards requests. Its count of ongoing requests ends only when a response
    has been handed to the client's connection, so waiting for it protects the tail of a stream the
    replica has finished but a slow client has not read yet. Serve has no public call for this; on
    a Ray without it the drain falls back to the replicas' counts alone.
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
) -> bool:
    """Poll until every live replica, then every proxy, has drained (True) or `timeout_s` passes."""
    import ray

    started = time.monotonic()
    last_progress = started
    while True:
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


# --- the replica side -------------------------------------------------------------------------


class _ReplicaState:
    """This process's in-flight count and what it last heard of the drain flag."""

    in_flight = 0
    draining = False


def in_flight() -> int:
    return _ReplicaState.in_flight


def is_draining() -> bool:
    """True in an ingress replica once the coordinator's flag has reached it."""
    return _ReplicaState.draining


class InFlightCounter:
    """Counts HTTP requests until the app returns, which for a streamed answer is after its last byte.

    Pure ASGI like the other middlewares of the ingress, so exceptions pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        _ReplicaState.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _ReplicaState.in_flight -= 1


Lookup = Callable[[], Awaitable[Any]]


async def _lookup_coordinator() -> Any:
    """The coordinator's handle, or None; `ray.get_actor` blocks, so it runs off the event loop."""
    import ray

    def lookup() -> Any:
        try:
            return ray.get_actor(COORDINATOR_NAME, namespace=COORDINATOR_NAMESPACE)
        except ValueError:
            return None

    return await asyncio.to_thread(lookup)


class DrainWatcher:
    """Reports this replica's in-flight count and picks up the drain flag, once per interval.

    Every failure is ignored and only retried: no coordinator means nobody is draining.
    """

    def __init__(self, replica_id: str, lookup: Lookup = _lookup_coordinator, interval_s: float = REPORT_INTERVAL_S):
        self.replica_id = replica_id
        self.lookup = lookup
        self.interval_s = interval_s
        self._handle: Any = None
        self._next_lookup = 0.0

    async def tick(self) -> None:
        if self._handle is None:
            if time.monotonic() < self._next_lookup:
                return
            self._next_lookup = time.monotonic() + LOOKUP_RETRY_S
            self._handle = await self.lookup()
            if self._handle is None:
                return
        acked = _ReplicaState.draining
        try:
            ref = self._handle.report.remote(self.replica_id, _ReplicaState.in_flight, acked)
            draining = bool(await asyncio.wait_for(ref, REPORT_TIMEOUT_S))
        except Exception as exc:  # coordinator gone or slow: look it up again later
            logger.debug("drain report failed: %s", type(exc).__name__)
            self._handle = None
            return
        if draining and not _ReplicaState.draining:
            logger.info("drain requested: refusing new speech, %d request(s) in flight", _ReplicaState.in_flight)
        _ReplicaState.draining = draining

    async def run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval_s)


def _replica_id() -> str | None:
    """This Serve replica's id, or None outside a replica (plain uvicorn, in-process tests)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id)
    except Exception:
        return None


async def drain_lifespan(_: Any) -> Callable[[], Awaitable[None]] | None:
    """Lifespan hook of the ingress: run a `DrainWatcher` in Serve replicas, nowhere else."""
    replica_id = _replica_id()
    if replica_id is None:
        return None
    task = asyncio.create_task(DrainWatcher(replica_id).run(), name="drain-watcher")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
