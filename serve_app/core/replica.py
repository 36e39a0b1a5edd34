"""What an engine replica says about itself: which replica served a stream, and whether it keeps failing.

- `ReplicaTag`: the first item of an engine host's stream when the caller asks for it
  (`tag_replica`), so the router can name the replica in a strike's log and in the shared
  breaker's record. Serve's handles do not say which replica a call went to; the replica does.
- `FailureStreak`: the replica's own consecutive engine failures. Strikes are counted per engine
  across all replicas, so one bad replica among healthy ones never opens the breaker (their
  successes reset it) and would stay in rotation for ever; counted here, it fails the replica's
  health check and Serve replaces it. Only the engine's own errors count: a caller's mistake, a
  busy answer or a cancelled request (the caller left, the router failed over) says nothing about
  the replica, and a success ends the streak.
"""

from __future__ import annotations

from dataclasses import dataclass


def serve_replica_id() -> str | None:
    """This Serve replica's full id (`ReplicaID.to_full_id_str()`), or None outside a replica.

    The full id is also the replica actor's name in Serve's namespace, so whoever holds it can tell
    a replica that died from one that is merely quiet (the drain does), and it names the replica in
    what an ingress replica says about itself (`/v1/engines`).
    """
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # plain uvicorn, in-process tests: no replica context
        return None


@dataclass(frozen=True)
class ReplicaTag:
    """Which replica of an engine deployment serves this stream (Serve's replica id)."""

    replica: str


class FailureStreak:
    """Consecutive failures of one replica's engine; a problem for the health check past `limit`."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0 (0: never)")
        self.limit = limit
        self.count = 0
        self.last_reason: str | None = None

    def failed(self, reason: str) -> None:
        self.count += 1
        self.last_reason = reason

    def succeeded(self) -> None:
        self.count = 0

    def problem(self) -> str | None:
        """Why the replica should be replaced, or None."""
        if self.limit == 0 or self.count < self.limit:
            return None
        return f"{self.count} consecutive engine failures (last: {self.last_reason})"
