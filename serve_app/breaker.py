"""Strike counter and circuit breaker for one engine (pure: no Ray, no I/O, injectable clock).

closed --(N consecutive strikes)--> open --(cooldown)--> half_open --(probe ok)--> closed
                                      ^                        |
                                      +----(probe fails: cooldown doubles, capped)---+

The seed switched engines permanently after three strikes; this breaker brings an engine back
once a probe succeeds, with exponential backoff so a flapping engine is not hammered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class BreakerConfig:
    max_strikes: int = 3
    cooldown_s: float = 5.0
    max_cooldown_s: float = 120.0


class CircuitBreaker:
    """Counts consecutive strikes; opens after `max_strikes`; lets one probe through after cooldown."""

    def __init__(self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.strikes = 0
        self.opened_count = 0
        self.last_error: str | None = None
        self._cooldown = self.config.cooldown_s
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def cooldown_left(self) -> float:
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown - self._clock())

    @property
    def current_cooldown(self) -> float:
        return self._cooldown

    def allows_traffic(self) -> bool:
        """True when user requests may use the engine (closed only; half-open waits for the probe)."""
        return self.state is BreakerState.CLOSED

    def probe_due(self) -> bool:
        """True once when an open breaker's cooldown has passed: the caller runs one probe."""
        if self.state is BreakerState.OPEN and self.cooldown_left <= 0 and not self._probe_in_flight:
            self.state = BreakerState.HALF_OPEN
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            self._cooldown = self.config.cooldown_s
        self.state = BreakerState.CLOSED
        self.strikes = 0
        self._probe_in_flight = False

    def record_strike(self, reason: str) -> bool:
        """Count one strike; returns True when this strike opened (or re-opened) the breaker."""
        self.last_error = reason
        if self.state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False
            self._cooldown = min(self._cooldown * 2, self.config.max_cooldown_s)
            self._open()
            return True
        if self.state is BreakerState.OPEN:
            return False
        self.strikes += 1
        if self.strikes >= self.config.max_strikes:
            self._open()
            return True
        return False

    def force_open(self, reason: str) -> None:
        """Open without strikes (engine reported unavailable by its dependency check)."""
        self.last_error = reason
        if self.state is not BreakerState.OPEN:
            self._open()

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_count += 1
        self._opened_at = self._clock()

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "strikes": self.strikes,
            "last_error": self.last_error,
            "cooldown_left_s": round(self.cooldown_left, 3),
            "cooldown_s": self._cooldown,
            "times_opened": self.opened_count,
        }
