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
# A report speaks for its replica this long: two report periods, so one late report does not stall
# the drain, but a zero counted seconds ago (the replica may have admitted requests since, then gone
# quiet) never ends it.
FRESH_FOR_S = 2 * REPORT_INTERVAL_S
RETRY_AFTER_S = 5

ReplicaGone = Callable[[str], bool]


def _never_gone(replica_id: str) -> bool:
    return False


@dataclass(frozen=True)
class ReplicaReport:
    in_flight: int
    acked: bool  # the replica already knew about the drain when it counted
    at: float


@dataclass(frozen=True)
class DrainStatus:
    draining: bool
    in_flight: int  # summed over the live replicas' latest reports
    replicas: int  # live replicas (reported, not known to be gone)
    unconfirmed: int  # live replicas without a fresh report counted with the flag set since the drain began

    @property
    def drained(self) -> bool:
        return self.draining and self.in_flight == 0 and self.unconfirmed == 0


class DrainTally:
    """The drain flag and the replicas' in-flight counts.

    A replica counts as drained only by a fresh report of zero, taken with the flag set, received
    after the drain began and at most `fresh_for_s` ago. A replica that went quiet is waited for (its
    last zero may be stale: it can have admitted requests after it) until `gone` says it no longer
    exists; only then is it forgotten, since whatever it had in flight died with it.
    """

    def __init__(
        self,
        fresh_for_s: float = FRESH_FOR_S,
        clock: Callable[[], float] = time.monotonic,
        gone: ReplicaGone = _never_gone,
    ) -> None:
        self.fresh_for_s = fresh_for_s
        self.clock = clock
        self.gone = gone
        self.draining = False
        self.drain_started_at: float | None = None
        self._reports: dict[str, ReplicaReport] = {}

    def request_drain(self) -> None:
        if self.drain_started_at is None:
            self.drain_started_at = self.clock()
        self.draining = True

    def report(self, replica_id: str, in_flight: int, acked: bool) -> bool:
        """Record a replica's count; returns the flag so one call both reports and polls."""
        self._reports[replica_id] = ReplicaReport(max(0, int(in_flight)), bool(acked), self.clock())
        return self.draining

    def _confirms(self, report: ReplicaReport, now: float) -> bool:
        """Whether this report is a count the drain can trust: fresh, acknowledged, after the start."""
        started = self.drain_started_at
        return (
            report.acked
            and started is not None
            and report.at >= started
            and now - report.at <= self.fresh_for_s
        )

    def status(self) -> DrainStatus:
        now = self.clock()
        # Only quiet replicas are asked about: a fresh report is proof of life, and `gone` may cost a call.
        self._reports = {
            rid: r for rid, r in self._reports.items() if now - r.at <= self.fresh_for_s or not self.gone(rid)
        }
        live = self._reports.values()
        return DrainStatus(
            draining=self.draining,
            in_flight=sum(r.in_flight for r in live),
            replicas=len(self._reports),
            unconfirmed=sum(1 for r in live if not self._confirms(r, now)),
        )


def replica_actor_gone(replica_id: str) -> bool:
    """Whether the Serve replica whose actor is named `replica_id` no longer exists.

    Replicas report their full id (`ReplicaID.to_full_id_str()`), which is their actor's name in
    Serve's namespace; Ray frees the name when the actor dies. Any other id, or an unanswered
    lookup, is not proof of death, so the replica is waited for (up to the launcher's timeout).
    """
    import ray
    from ray.serve._private.common import ReplicaID
    from ray.serve._private.constants import SERVE_NAMESPACE

    if not ReplicaID.is_full_id_str(replica_id):
        return False
    try:
        ray.get_actor(replica_id, namespace=SERVE_NAMESPACE)
    except ValueError:
        return True
    except Exception:
        return False
    return False


class _CoordinatorActor:
    """The tally behind a Ray actor handle (wrapped by `ray.remote` in `get_or_create_coordinator`)."""

    def __init__(self) -> None:
        self.tally = DrainTally(gone=replica_actor_gone)

    def request_drain(self) -> None:
        self.tally.request_drain()

    def report(self, replica_id: str, in_flight: int, acked: bool) -> bool:
        return self.tally.report(replica_id, in_flight, acked)

    def status(self) -> DrainStatus:
        return self.tally.status()
