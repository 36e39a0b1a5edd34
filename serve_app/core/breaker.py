"""Strike counter and circuit breaker for one engine (pure: no Ray, no I/O, no asyncio, injectable clock).

    closed --(max_strikes consecutive strikes)--> open --(cooldown passes)--> half_open (one probe)
      ^                                            ^                              |
      |                                            +---- probe fails: reopen -----+
      +------------------------ probe succeeds (or any real success) -------------+

Why each rule:
- Strikes must be *consecutive*: one success resets them, so a healthy engine with rare hiccups
  is never switched away from, while one that keeps failing is, after `max_strikes` (the seed's 3).
- While open the engine is skipped at no cost; only the router's background probe (a short fixed
  phrase, never a user's text) is let through once the cooldown has passed.
- The cooldown grows exponentially (base * 2**n, capped) with every opening that was not followed
  by real user traffic succeeding: a failed probe doubles it, and so does an engine that passes the
  short probe but fails real sentences again (flapping). A success on user traffic resets it.
- A strike from an attempt that started before the breaker last changed state (pass `started_at`)
  is stale: it is noted as the last error but neither counts nor reopens, so requests that were
  already in flight when the engine died cannot double the cooldown or spoil a probe's verdict.
- Callers that probe with real traffic (the database guard) use `probe_due()` then
  `record_success()` / `record_strike()`; the TTS router probes in the background with
  `begin_probe()` / `end_probe()`.
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


@dataclass(frozen=True)
class BreakerConfig:
    """Strikes before opening, first cooldown, and the cap the doubling cooldown never exceeds."""

    max_strikes: int = 3
    cooldown_s: float = 5.0
    max_cooldown_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_strikes < 1:
            raise ValueError("max_strikes must be >= 1")
        if self.cooldown_s <= 0 or self.max_cooldown_s < self.cooldown_s:
            raise ValueError("need 0 < cooldown_s <= max_cooldown_s")


Listener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    """Counts consecutive strikes of one engine, opens, and decides when a probe may test it."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Listener | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self.strikes = 0
        self.total_strikes = 0
        self.opened_count = 0
        self.probes = 0
        self.failed_probes = 0
        self.last_error: str | None = None
        self._backoff_exp = 0
        self._cooldown = self.config.cooldown_s
        self._opened_at = 0.0
        self._changed_at = float("-inf")

    # ------------------------------------------------------------------ queries
    def now(self) -> float:
        """The breaker's clock, for callers that pass `started_at`."""
        return self._clock()

    @property
    def cooldown_left(self) -> float:
        """Seconds until a probe may run (0 when not open or when a probe is due)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown - self._clock())

    @property
    def current_cooldown(self) -> float:
        """Length of the current (or last) open period."""
        return self._cooldown

    def allows_traffic(self) -> bool:
        """True when user requests may use the engine: closed only (half-open waits for its probe)."""
        return self.state is BreakerState.CLOSED

    def probe_ready(self) -> bool:
        """True when the breaker is open and its cooldown has passed (no state change)."""
        return self.state is BreakerState.OPEN and self.cooldown_left <= 0.0

    def probe_due(self) -> bool:
        """Once per cooldown: moves open -> half_open and returns True; the caller's next call is the probe."""
        return self.begin_probe()

    # ------------------------------------------------------------------ transitions
    def record_success(self, started_at: float | None = None) -> None:
        """Real traffic succeeded: strikes and backoff reset; an open breaker closes (it works).

        A success of an attempt started before the last transition does not close a breaker
        that opened since (it says how the engine was, not how it is).
        """
        if started_at is not None and started_at < self._changed_at and self.state is not BreakerState.CLOSED:
            return
        self.strikes = 0
        self._backoff_exp = 0
        self._set(BreakerState.CLOSED)

    def record_strike(self, reason: str, started_at: float | None = None) -> bool:
        """Count one strike; returns True when this strike opened (or reopened) the breaker.

        `started_at` (same clock) marks when the failed attempt began; a strike older than the
        breaker's last transition is stale and only updates `last_error`.
        """
        self.last_error = reason
        if started_at is not None and started_at < self._changed_at:
            return False
        self.total_strikes += 1
        if self.state is BreakerState.HALF_OPEN:
            self.failed_probes += 1
            self._open()
            return True
        if self.state is BreakerState.OPEN:
            return False
        self.strikes += 1
        if self.strikes >= self.config.max_strikes:
            self._open()
            return True
        return False

    def begin_probe(self) -> bool:
        """Move open -> half_open if the cooldown has passed; True means: run exactly one probe now."""
        if not self.probe_ready():
            return False
        self.probes += 1
        self._set(BreakerState.HALF_OPEN)
        return True

    def end_probe(self, ok: bool, reason: str | None = None) -> None:
        """Result of the probe started by `begin_probe`: close, or reopen with a longer cooldown."""
        if self.state is not BreakerState.HALF_OPEN:
            return  # real traffic already decided (a success closed it meanwhile)
        if ok:
            self.strikes = 0
            self._set(BreakerState.CLOSED)  # backoff is kept until real traffic succeeds
            return
        self.failed_probes += 1
        self.last_error = reason or self.last_error
        self._open()

    def adopt(
        self, state: BreakerState, strikes: int, cooldown_s: float, cooldown_left_s: float, last_error: str | None
    ) -> None:
        """Take a verdict reached elsewhere (the cluster's breaker board): this breaker becomes its cache.

        The hot path keeps reading this object; only the board decides while it is reachable. An
        open breaker gets the board's cooldown and what is left of it, on this breaker's clock.
        """
        self.strikes = strikes
        self.last_error = last_error
        if state is BreakerState.OPEN:
            self._cooldown = cooldown_s
            self._opened_at = self._clock() - max(0.0, cooldown_s - cooldown_left_s)
        self._set(state)

    def force_open(self, reason: str) -> None:
        """Open without strikes (engine not deployed or reported unavailable by its dependency check)."""
        self.last_error = reason
        if self.state is not BreakerState.OPEN:
            self._open()

    # ------------------------------------------------------------------ internals
    def _open(self) -> None:
        self._cooldown = min(self.config.cooldown_s * (2.0**self._backoff_exp), self.config.max_cooldown_s)
        self._backoff_exp = min(self._backoff_exp + 1, 62)
        self.opened_count += 1
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        previous, self.state = self.state, state
        if previous is state:
            return
        self._changed_at = self._clock()
        if self._on_change is not None:
            self._on_change(previous, state)

    def snapshot(self) -> dict[str, Any]:
        """What `GET /v1/engines` shows of this breaker."""
        return {
            "state": self.state.value,
            "strikes": self.strikes,
            "max_strikes": self.config.max_strikes,
            "last_error": self.last_error,
            "cooldown_left_s": round(self.cooldown_left, 3),
            "cooldown_s": round(self._cooldown, 3),
            "times_opened": self.opened_count,
            "total_strikes": self.total_strikes,
            "probes": self.probes,
            "failed_probes": self.failed_probes,
        }
