"""A router's side of the cluster's breaker board: local breakers as a cache of the shared ones.

`FallbackRouter` calls its `BreakerSharing` where strikes, successes and probes already happen.
`LocalOnly` (tests, local composition, no Ray) does nothing: the router's own breakers decide.
`SharedBreakers` connects them to a `BreakerBoard` (`serve_app.core.breaker_board`):

- The hot path never waits on the board. The router keeps reading its local `CircuitBreaker`s;
  a background task long-polls `board.watch(version)` and copies every change into them
  (`CircuitBreaker.adopt`), so a router that starts (a new conversation, a new ingress replica)
  begins from what the cluster knows, and learns every later change within one round trip.
- Strikes are counted locally at once (the local breaker stays safe on its own) and reported to
  the board without waiting; the board's answer, cluster-wide, replaces the local count. A success
  is reported only when the shared record has something to reset (strikes, or not closed), so a
  healthy engine costs the board nothing.
- Only one router probes an engine at a time: `acquire_probe` asks the board for the lease; the
  others keep the engine out until the prober's verdict reaches them through `watch`.
- The board improves, never blocks: when it cannot be reached the router goes on with its local
  breakers, says so once, and reconnects with backoff (a new board, e.g. after the actor was
  restarted, is adopted from scratch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from serve_app.core.breaker import CircuitBreaker
from serve_app.core.breaker_board import BoardSnapshot, SharedView

logger = logging.getLogger(__name__)


class BoardApi(Protocol):
    """What a router needs of the board: `BreakerBoard` itself, or its Ray actor behind an adapter."""

    async def strike(self, engine: str, reason: str, epoch: int, replica: str | None = None) -> BoardSnapshot: ...

    async def success(self, engine: str, epoch: int) -> BoardSnapshot: ...

    async def acquire_probe(self, engine: str, holder: str) -> tuple[bool, BoardSnapshot]: ...

    async def end_probe(self, engine: str, holder: str, ok: bool, reason: str | None = None) -> BoardSnapshot: ...

    async def watch(self, known_version: int, timeout_s: float = 20.0) -> BoardSnapshot: ...


class BreakerSharing(Protocol):
    """The hook `FallbackRouter` calls; `started_at` is on the router's breaker clock."""

    @property
    def shared(self) -> bool: ...

    def attach(self, breakers: Mapping[str, CircuitBreaker]) -> None: ...

    def start(self) -> None: ...

    async def ready(self) -> None:
        """Before a router's first request: wait (briefly) until it knows what the cluster knows."""
        ...

    async def aclose(self) -> None: ...

    def strike(self, engine: str, reason: str, started_at: float, replica: str | None) -> None: ...

    def success(self, engine: str, started_at: float) -> None: ...

    async def acquire_probe(self, engine: str) -> bool: ...

    def end_probe(self, engine: str, ok: bool, reason: str | None) -> None: ...

    def view(self, engine: str) -> SharedView | None: ...


class LocalOnly:
    """No sharing: every decision is the router's own breakers'."""

    shared = False

    def attach(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        pass

    def start(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def strike(self, engine: str, reason: str, started_at: float, replica: str | None) -> None:
        pass

    def success(self, engine: str, started_at: float) -> None:
        pass

    async def acquire_probe(self, engine: str) -> bool:
        return True

    def end_probe(self, engine: str, ok: bool, reason: str | None) -> None:
        pass

    def view(self, engine: str) -> SharedView | None:
        return None


Connect = Callable[[], Awaitable[BoardApi]]


class SharedBreakers:
    """Keeps one router's breakers in step with the board, and reports to it without waiting."""

    shared = True

    def __init__(
        self,
        connect: Connect,
        *,
        watch_timeout_s: float = 20.0,
        call_timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
        first_sync_s: float = 0.5,
        holder: str | None = None,
    ) -> None:
        self._connect = connect
        self._first_sync_s = first_sync_s
        self._watch_timeout_s = watch_timeout_s
        self._call_timeout_s = call_timeout_s
        self._max_backoff_s = max_backoff_s
        self.holder = holder or uuid.uuid4().hex[:12]
        self._breakers: dict[str, CircuitBreaker] = {}
        self._board: BoardApi | None = None
        self._board_id: str | None = None
        self._version = -1
        self._views: dict[str, SharedView] = {}
        self._learned_at: dict[str, float] = {}  # when this router learned each engine's epoch
        self._reachable = True  # until shown otherwise: the first failure is logged
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._synced = asyncio.Event()
        self._settled = asyncio.Event()  # synced once, or found unreachable: ready() waits no more
        self._waited = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def attach(self, breakers: Mapping[str, CircuitBreaker]) -> None:
        """The router's breakers of deployed engines (an undeployed engine stays the router's own)."""
        self._breakers = dict(breakers)

    def start(self) -> None:
        """Start following the board on the running loop (idempotent; no-op without a loop)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._task = loop.create_task(self._follow(), name="tts-breaker-board")

    async def synced(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until the board's state has been adopted once."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout_s)
        return self._synced.is_set()

    async def ready(self) -> None:
        """A new router's first request waits up to `first_sync_s` for the board's state, once: a
        conversation starts knowing which engines the cluster has found dead (no board: no wait)."""
        if self._waited or self._settled.is_set():
            return
        self._waited = True
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), self._first_sync_s)

    async def aclose(self) -> None:
        self._closed = True
        tasks = [t for t in (self._task, *self._calls) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._task = None

    @property
    def connected(self) -> bool:
        return self._board is not None

    def view(self, engine: str) -> SharedView | None:
        return self._views.get(engine)

    # ------------------------------------------------------------------ reports (never awaited by the router)
    def strike(self, engine: str, reason: str, started_at: float, replica: str | None) -> None:
        board = self._board
        if board is None or engine not in self._breakers:
            return
        epoch = self._epoch_at(engine, started_at)
        self._call(board.strike(engine, reason, epoch, replica))

    def success(self, engine: str, started_at: float) -> None:
        board = self._board
        view = self._views.get(engine)
        if board is None or view is None or engine not in self._breakers:
            return
        if view.strikes == 0 and view.state == "closed":
            return  # nothing to reset: the common case costs no call
        self._call(board.success(engine, self._epoch_at(engine, started_at)))

    async def acquire_probe(self, engine: str) -> bool:
        """Whether this router probes `engine` now; True when the board cannot say (local decides)."""
        board = self._board
        if board is None or engine not in self._breakers:
            return True
        try:
            granted, snapshot = await asyncio.wait_for(board.acquire_probe(engine, self.holder), self._call_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the board improves, never blocks
            self._lost(exc)
            return True
        self._apply(snapshot)
        if not granted:
            self._readopt(engine)  # leave the half-open state our own begin_probe set
        return granted

    def end_probe(self, engine: str, ok: bool, reason: str | None) -> None:
        board = self._board
        if board is None or engine not in self._breakers:
            return
        self._call(board.end_probe(engine, self.holder, ok, reason))

    # ------------------------------------------------------------------ internals
    def _epoch_at(self, engine: str, started_at: float) -> int:
        """The board epoch current when an attempt started: older than the latest learned, if before it."""
        view = self._views.get(engine)
        if view is None:
            return 0
        learned = self._learned_at.get(engine, float("-inf"))
        return view.epoch if started_at >= learned else view.epoch - 1

    def _call(self, call: Coroutine[Any, Any, BoardSnapshot]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            call.close()
            return
        task = loop.create_task(self._report(call))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _report(self, call: Coroutine[Any, Any, BoardSnapshot]) -> None:
        try:
            snapshot = await asyncio.wait_for(call, self._call_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the local breakers already counted it
            self._lost(exc)
            return
        self._apply(snapshot)

    async def _follow(self) -> None:
        """Connect, then long-poll the board for changes; reconnect with backoff when it is gone."""
        backoff = 0.5
        while not self._closed:
            try:
                if self._board is None:
                    self._board = await asyncio.wait_for(self._connect(), self._call_timeout_s * 2)
                known = self._version if self._board_id is not None else -1
                snapshot = await asyncio.wait_for(
                    self._board.watch(known, self._watch_timeout_s), self._watch_timeout_s + self._call_timeout_s
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable board: local breakers carry on
                self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            backoff = 0.5
            if not self._reachable:
                self._reachable = True
                logger.info("breaker board reachable again; following the cluster's breakers")
            self._apply(snapshot)

    def _lost(self, exc: BaseException) -> None:
        self._board = None
        self._settled.set()  # nobody waits for a board that does not answer
        if self._reachable:
            self._reachable = False
            logger.warning(
                "breaker board unreachable (%s: %s); local breakers only until it answers",
                type(exc).__name__, str(exc)[:200],
            )

    def _readopt(self, engine: str) -> None:
        view, breaker = self._views.get(engine), self._breakers.get(engine)
        if view is not None and breaker is not None:
            breaker.adopt(view.state, view.strikes, view.cooldown_s, view.cooldown_left_s, view.last_error)

    def _apply(self, snapshot: BoardSnapshot) -> None:
        """Adopt a snapshot newer than the last one (or from a new board); older ones are ignored."""
        if snapshot.board_id == self._board_id and snapshot.version <= self._version:
            return
        if snapshot.board_id != self._board_id:
            self._views.clear()  # a new board (restarted): its epochs and versions start again
        self._board_id, self._version = snapshot.board_id, snapshot.version
        for engine, view in snapshot.engines.items():
            breaker = self._breakers.get(engine)
            if breaker is None:
                continue
            previous = self._views.get(engine)
            self._views[engine] = view
            if previous is None or previous.epoch != view.epoch:
                self._learned_at[engine] = breaker.now()
            if previous == view:
                continue
            breaker.adopt(view.state, view.strikes, view.cooldown_s, view.cooldown_left_s, view.last_error)
        self._synced.set()
        self._settled.set()
