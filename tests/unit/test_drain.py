"""The drain bookkeeping without Ray: tally (flag, acknowledgements, expiry), watcher, middleware."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from serve_app.api.middleware import InFlightCounter
from serve_app.drain.coordinator import DrainTally
from serve_app.drain.replica import DrainWatcher, ReplicaDrain
from tests.support import ManualClock


@pytest.fixture
def replica_state() -> ReplicaDrain:
    return ReplicaDrain()


def test_not_drained_until_requested() -> None:
    tally = DrainTally()
    tally.report("r1", 0, acked=False)
    assert not tally.status().drained


def test_drained_needs_every_replica_to_count_with_the_flag_set() -> None:
    tally = DrainTally(clock=ManualClock())
    assert tally.report("r1", 0, acked=False) is False
    tally.request_drain()
    # r1's last count was made before it knew: a request admitted meanwhile would be missing.
    assert tally.status().unconfirmed == 1 and not tally.status().drained
    assert tally.report("r1", 2, acked=True) is True
    assert tally.status().in_flight == 2 and not tally.status().drained
    tally.report("r1", 0, acked=True)
    assert tally.status().drained


def test_counts_add_up_over_replicas() -> None:
    tally = DrainTally(clock=ManualClock())
    tally.request_drain()
    tally.report("r1", 1, acked=True)
    tally.report("r2", 3, acked=True)
    status = tally.status()
    assert (status.in_flight, status.replicas) == (4, 2)
    tally.report("r2", 0, acked=True)
    assert not tally.status().drained
    tally.report("r1", 0, acked=True)
    assert tally.status().drained


def test_a_stale_zero_does_not_end_the_drain_a_fresh_one_does() -> None:
    clock = ManualClock()
    tally = DrainTally(fresh_for_s=1.0, clock=clock)
    tally.request_drain()
    tally.report("quiet", 0, acked=True)
    tally.report("busy", 1, acked=True)
    clock.now += 0.5
    tally.report("busy", 0, acked=True)
    assert tally.status().drained  # both zeros are fresh
    clock.now += 5.0  # "quiet" went quiet after its zero: it may have admitted requests since
    tally.report("busy", 0, acked=True)
    status = tally.status()
    assert (status.replicas, status.unconfirmed, status.drained) == (2, 1, False)
    clock.now += 60.0  # however long it stays quiet
    tally.report("busy", 0, acked=True)
    assert not tally.status().drained
    tally.report("quiet", 0, acked=True)
    assert tally.status().drained


def test_a_zero_from_before_the_drain_does_not_count() -> None:
    clock = ManualClock()
    tally = DrainTally(fresh_for_s=1.0, clock=clock)
    tally.report("r1", 0, acked=True)  # acknowledged a flag, but this drain had not begun
    clock.now += 0.1
    tally.request_drain()
    assert not tally.status().drained
    clock.now += 0.1
    tally.report("r1", 0, acked=True)
    assert tally.status().drained


def test_a_quiet_replica_is_forgotten_only_once_it_is_gone() -> None:
    clock = ManualClock()
    dead: set[str] = set()
    asked: list[str] = []

    def gone(replica_id: str) -> bool:
        asked.append(replica_id)
        return replica_id in dead

    tally = DrainTally(fresh_for_s=1.0, clock=clock, gone=gone)
    tally.request_drain()
    tally.report("dying", 3, acked=True)
    tally.report("alive", 0, acked=True)
    assert tally.status().in_flight == 3 and asked == []  # fresh reports are proof of life
    clock.now += 2.0
    tally.report("alive", 0, acked=True)
    assert not tally.status().drained and asked == ["dying"]  # quiet, but still there
    dead.add("dying")  # its requests died with it
    status = tally.status()
    assert (status.in_flight, status.replicas, status.drained) == (0, 1, True)


def test_no_replica_known_is_drained_once_requested() -> None:
    tally = DrainTally()
    tally.request_drain()
    assert tally.status().drained


class FakeCoordinator:
    """Stands for the actor handle: `report.remote(...)` returns an awaitable like an ObjectRef."""

    def __init__(self, tally: DrainTally, fail: bool = False) -> None:
        self.tally = tally
        self.fail = fail
        self.report = self

    def remote(self, replica_id: str, in_flight: int, acked: bool) -> Any:
        async def call() -> bool:
            if self.fail:
                raise ConnectionError("coordinator gone")
            return self.tally.report(replica_id, in_flight, acked)

        return call()


async def test_watcher_reports_picks_up_the_flag_and_acknowledges(replica_state: ReplicaDrain) -> None:
    tally = DrainTally()
    coordinator = FakeCoordinator(tally)

    async def lookup() -> Any:
        return coordinator

    watcher = DrainWatcher("r1", replica_state, lookup=lookup)
    replica_state.in_flight = 2
    await watcher.tick()
    assert tally.status().in_flight == 2 and not replica_state.draining
    tally.request_drain()
    await watcher.tick()
    assert replica_state.draining
    assert tally.status().unconfirmed == 1  # that count was taken before the flag arrived
    replica_state.in_flight = 0
    await watcher.tick()
    assert tally.status().drained


async def test_watcher_without_coordinator_never_drains_and_retries_later(replica_state: ReplicaDrain) -> None:
    lookups = 0

    async def lookup() -> Any:
        nonlocal lookups
        lookups += 1
        return None

    watcher = DrainWatcher("r1", replica_state, lookup=lookup)
    for _ in range(5):
        await watcher.tick()
    assert lookups == 1  # looked up again only after LOOKUP_RETRY_S
    assert not replica_state.draining


async def test_watcher_forgets_a_failing_coordinator(replica_state: ReplicaDrain) -> None:
    coordinator = FakeCoordinator(DrainTally(), fail=True)

    async def lookup() -> Any:
        return coordinator

    watcher = DrainWatcher("r1", replica_state, lookup=lookup)
    await watcher.tick()
    assert watcher._handle is None and not replica_state.draining


async def test_in_flight_counter_spans_the_whole_streamed_body(replica_state: ReplicaDrain) -> None:
    seen: list[int] = []
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> Any:
            for _ in range(3):
                seen.append(replica_state.in_flight)  # still counted while the body is being sent
                yield b"x"

        return StreamingResponse(body())

    app.add_middleware(InFlightCounter, drain=replica_state)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/stream")
    assert response.content == b"xxx"
    assert seen == [1, 1, 1]
    assert replica_state.in_flight == 0
