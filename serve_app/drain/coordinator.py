"""The drain tally and the named actor that holds it, shared by the launcher and the replicas."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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


class DrainTally:
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
    """The tally behind a Ray actor handle (wrapped by `ray.remote` in `get_or_create_coordinator`)."""

    def __init__(self) -> None:
        self.tally = DrainTally()

    def request_drain(self) -> None:
        self.tally.request_drain()

    def report(self, replica_id: str, in_flight: int, acked: bool) -> bool:
        return self.tally.report(replica_id, in_flight, acked)

    def status(self) -> DrainStatus:
        return self.tally.status()


