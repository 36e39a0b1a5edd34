"""The cluster's breaker board: one circuit breaker per engine, shared by every router.

Each ingress replica and each agent conversation composes its own `FallbackRouter`; alone, each
would learn that an engine died on its own, paying `max_strikes` first-byte timeouts every time.
The board keeps, per engine, the breaker all of them share: strikes from any router count towards
`max_strikes`, a success anywhere resets them, and one probe (leased to one router at a time, so
there is no probe herd) closes it for everybody.

The board is a plain object (no Ray, no I/O): the routers' side (`serve_app.router.shared`) talks
to it in-process in tests and through a named Ray actor in the cluster
(`serve_app.router.board_actor`), where this very class is the actor. Its methods are async so
that one class serves both; all but `watch` return at once.

Why the pieces are shaped so:
- The state machine is `CircuitBreaker` itself (one definition of strikes, cooldowns, backoff).
- `version` grows with every change of any engine's record; routers long-poll `watch(version)`,
  which answers as soon as something changed, so their local caches follow within one round trip
  and the hot path never waits on the board.
- `epoch` counts an engine's state transitions. A router reports a strike or success with the
  epoch it knew when the attempt started; an attempt from an older epoch is stale (it says how the
  engine was, not how it is) and only notes its error, as `CircuitBreaker` does with `started_at`.
- A probe lease expires (`probe_lease_s`): a router that died mid-probe cannot keep an engine
  half-open for ever; the expired probe counts as failed and the engine reopens.
- `board_id` is new with every board: a router that meets a new board (the actor was restarted)
  starts again from its state instead of ignoring its lower versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from serve_app.core.breaker import BreakerConfig, BreakerState, CircuitBreaker


@dataclass(frozen=True)
class SharedView:
    """One engine's shared breaker as the routers see it (picklable, compared by value)."""

    state: BreakerState
    strikes: int
    epoch: int
    cooldown_s: float
    cooldown_left_s: float
    last_error: str | None
    last_replica: str | None
    prober: str | None
    times_opened: int
    total_strikes: int
    probes: int
    failed_probes: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


@dataclass(frozen=True)
class BoardSnapshot:
    """Every engine's shared breaker at one `version` of one board."""

    board_id: str
    version: int
    engines: dict[str, SharedView]


@dataclass
class _Entry:
    breaker: CircuitBreaker
    epoch: int = 0
    last_replica: str | None = None
    prober: str | None = None
    lease_until: float = 0.0


class BreakerBoard:
    """Per engine: consecutive strikes across all routers, state, cooldown, last error, probe lease."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        probe_lease_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if probe_lease_s <= 0:
            raise ValueError("probe_lease_s must be > 0")
        self.config = config or BreakerConfig()
        self.board_id = uuid.uuid4().hex
        self.probe_lease_s = probe_lease_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self.version = 0
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ what routers call
    async def snapshot(self) -> BoardSnapshot:
        self._expire()
        return self._snapshot()

    async def strike(self, engine: str, reason: str, epoch: int, replica: str | None = None) -> BoardSnapshot:
        """A router's attempt on `engine` failed (an engine error, a timeout, no audio)."""
        with self._changing(engine) as entry:
            current = epoch >= entry.epoch
            entry.breaker.record_strike(reason, None if current else float("-inf"))
            if replica is not None:
                entry.last_replica = replica
        return self._snapshot()

    async def success(self, engine: str, epoch: int) -> BoardSnapshot:
        """A router's real traffic on `engine` succeeded: strikes reset, an open breaker closes."""
        with self._changing(engine) as entry:
            entry.breaker.record_success(None if epoch >= entry.epoch else float("-inf"))
        return self._snapshot()

    async def acquire_probe(self, engine: str, holder: str) -> tuple[bool, BoardSnapshot]:
        """True: `holder` probes `engine` now (it is open and its cooldown passed); others wait."""
        granted = False
        with self._changing(engine) as entry:
            if entry.breaker.state is BreakerState.HALF_OPEN:
                granted = entry.prober == holder
            elif entry.breaker.begin_probe():
                entry.prober = holder
                entry.lease_until = self._clock() + self.probe_lease_s
                granted = True
        return granted, self._snapshot()

    async def end_probe(self, engine: str, holder: str, ok: bool, reason: str | None = None) -> BoardSnapshot:
        """The verdict of `holder`'s probe; ignored when its lease expired and went to another."""
        with self._changing(engine) as entry:
            if entry.prober == holder:
                entry.breaker.end_probe(ok, reason)
        return self._snapshot()

    async def watch(self, known_version: int, timeout_s: float = 20.0) -> BoardSnapshot:
        """The snapshot as soon as the version differs from `known_version` (or after `timeout_s`)."""
        deadline = self._clock() + timeout_s
        while True:
            self._expire()
            left = deadline - self._clock()
            if self.version != known_version or left <= 0:
                return self._snapshot()
            leases = [e.lease_until - self._clock() for e in self._entries.values() if e.prober is not None]
            wait = min([left, *leases])
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.01, wait))

    # ------------------------------------------------------------------ internals
    def _entry(self, engine: str) -> _Entry:
        entry = self._entries.get(engine)
        if entry is None:
            entry = _Entry(CircuitBreaker(self.config, clock=self._clock))
            self._entries[engine] = entry
        return entry

    def _changing(self, engine: str) -> _Change:
        self._expire()
        return _Change(self, self._entry(engine))

    def _expire(self) -> None:
        """A half-open engine whose prober went silent past its lease: the probe failed."""
        now = self._clock()
        for entry in self._entries.values():
            if entry.prober is not None and entry.lease_until <= now:
                with _Change(self, entry):
                    entry.breaker.end_probe(False, "probe lease expired: the probing router went silent")

    def _bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _view(self, entry: _Entry) -> SharedView:
        breaker = entry.breaker
        return SharedView(
            state=breaker.state,
            strikes=breaker.strikes,
            epoch=entry.epoch,
            cooldown_s=round(breaker.current_cooldown, 3),
            cooldown_left_s=round(breaker.cooldown_left, 3),
            last_error=breaker.last_error,
            last_replica=entry.last_replica,
            prober=entry.prober,
            times_opened=breaker.opened_count,
            total_strikes=breaker.total_strikes,
            probes=breaker.probes,
            failed_probes=breaker.failed_probes,
        )

    def _snapshot(self) -> BoardSnapshot:
        return BoardSnapshot(self.board_id, self.version, {n: self._view(e) for n, e in self._entries.items()})


class _Change:
    """Around a mutation of one entry: epoch on a transition, lease cleared off half-open, version."""

    def __init__(self, board: BreakerBoard, entry: _Entry) -> None:
        self._board = board
        self._entry = entry
        self._before: tuple[Any, ...] = ()

    def _key(self) -> tuple[Any, ...]:
        view = self._board._view(self._entry)
        return (view.state, view.strikes, view.cooldown_s, view.last_error, view.last_replica, view.prober,
                view.total_strikes, view.probes, view.failed_probes)

    def __enter__(self) -> _Entry:
        self._before = self._key()
        return self._entry

    def __exit__(self, *exc: object) -> None:
        entry = self._entry
        if entry.breaker.state is not BreakerState.HALF_OPEN:
            entry.prober = None
        after = self._key()
        if after[0] is not self._before[0]:
            entry.epoch += 1
        if after != self._before:
            self._board._bump()
