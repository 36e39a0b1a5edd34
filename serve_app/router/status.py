"""What `/v1/engines` and `/health/ready` show of one engine: availability, breaker, counters, TTFB."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serve_app.core.breaker import CircuitBreaker
from serve_app.core.breaker_board import SharedView
from serve_app.engines.base import EngineCheck
from serve_app.router.admission import Limiter
from serve_app.router.clients import EngineClient
from serve_app.router.types import EngineLimits


@dataclass
class EngineSlot:
    """The router's record of one engine: its client, breaker, slots, budgets and counters."""

    name: str
    client: EngineClient
    breaker: CircuitBreaker
    limiter: Limiter
    limits: EngineLimits
    requests: int = 0
    failures: int = 0
    busy_skips: int = 0
    ttfbs: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    # After busy answers (a full queue, a deployment with no replica yet), others are tried first
    # until this loop time; each busy answer in a row doubles the wait, a started request ends it.
    busy_until: float = 0.0
    busy_streak: int = 0

    def busy_answer(self, now: float) -> None:
        # The streak stops counting once the wait is at its ceiling: under a flood thousands of busy
        # answers come in a row, and 2**streak would overflow a float (that once failed sentences).
        self.busy_until = now + min(BUSY_BACKOFF_MAX_S, BUSY_BACKOFF_S * 2.0**self.busy_streak)
        self.busy_streak = min(self.busy_streak + 1, _BUSY_STREAK_CEILING)

    def started(self) -> None:
        self.busy_until = 0.0
        self.busy_streak = 0


BUSY_BACKOFF_S = 0.5
BUSY_BACKOFF_MAX_S = 30.0
_BUSY_STREAK_CEILING = 16  # 0.5 s * 2**16 is far past the 30 s ceiling


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def engine_status(
    slot: EngineSlot, check: EngineCheck, shared: bool = False, cluster: SharedView | None = None
) -> dict[str, Any]:
    """`shared`: the breaker follows the cluster's board; `cluster`: the board's record as last seen
    (strikes from every router, the last replica that failed, who is probing), None until synced."""
    breaker = slot.breaker
    snapshot = {**breaker.snapshot(), "shared": shared, "cluster": cluster.to_dict() if cluster else None}
    return {
        "name": slot.name,
        "available": slot.client.deployed and check.available and breaker.allows_traffic(),
        "deployed": slot.client.deployed,
        "state": breaker.state.value,
        "strikes": breaker.strikes,
        "last_error": breaker.last_error,
        "cooldown_left_s": round(breaker.cooldown_left, 3),
        "reason": check.reason,
        "check": check.to_dict(),
        "breaker": snapshot,
        "requests": slot.requests,
        "failures": slot.failures,
        "busy_skips": slot.busy_skips,
        "in_flight": slot.limiter.in_use,
        "concurrency_limit": slot.limiter.limit,
        "ttfb_p50_ms": _ms(percentile(slot.ttfbs, 0.5)),
        "ttfb_p95_ms": _ms(percentile(slot.ttfbs, 0.95)),
    }
