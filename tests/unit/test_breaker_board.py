"""BreakerBoard as a plain object (the same class the cluster runs as a Ray actor), on a fake clock.

Routers are just names here: strikes and successes from any of them act on one breaker per engine;
epochs make verdicts of attempts that started before a transition stale; one probe lease at a time.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.core.breaker import BreakerConfig, BreakerState
from serve_app.core.breaker_board import BreakerBoard
from tests.support import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def board(clock: ManualClock) -> BreakerBoard:
    return BreakerBoard(BreakerConfig(max_strikes=3, cooldown_s=5.0, max_cooldown_s=40.0), probe_lease_s=10.0,
                        clock=clock)


async def test_strikes_from_any_router_add_up_and_open_after_max_strikes(board: BreakerBoard) -> None:
    await board.strike("zonos", "EngineUnavailable: a", 0, "replica-1")
    await board.strike("zonos", "EngineUnavailable: b", 0, "replica-2")
    view = (await board.snapshot()).engines["zonos"]
    assert view.state is BreakerState.CLOSED and view.strikes == 2
    snap = await board.strike("zonos", "FirstByteTimeout: c", 0, "replica-1")
    view = snap.engines["zonos"]
    assert view.state is BreakerState.OPEN and view.strikes == 3
    assert view.epoch == 1 and view.last_error == "FirstByteTimeout: c" and view.last_replica == "replica-1"
    assert view.cooldown_s == 5.0 and view.cooldown_left_s == 5.0


async def test_a_success_anywhere_resets_the_count(board: BreakerBoard) -> None:
    await board.strike("edge", "x", 0)
    await board.strike("edge", "x", 0)
    await board.success("edge", 0)
    await board.strike("edge", "x", 0)
    view = (await board.snapshot()).engines["edge"]
    assert view.state is BreakerState.CLOSED and view.strikes == 1


async def test_verdicts_of_attempts_from_an_older_epoch_are_stale(board: BreakerBoard, clock: ManualClock) -> None:
    for _ in range(3):
        await board.strike("zonos", "down", 0)
    # In flight when it opened: a late strike neither counts nor doubles anything; a late success
    # does not close it.
    await board.strike("zonos", "late failure", 0)
    await board.success("zonos", 0)
    view = (await board.snapshot()).engines["zonos"]
    assert view.state is BreakerState.OPEN and view.total_strikes == 3 and view.last_error == "late failure"
    # A router that knew the current epoch (last-resort traffic on the open engine) closes it.
    await board.success("zonos", view.epoch)
    view = (await board.snapshot()).engines["zonos"]
    assert view.state is BreakerState.CLOSED and view.strikes == 0 and view.epoch == 2


async def test_one_probe_lease_at_a_time_and_its_verdict_is_everyones(board: BreakerBoard, clock: ManualClock) -> None:
    for _ in range(3):
        await board.strike("zonos", "down", 0)
    granted, _ = await board.acquire_probe("zonos", "router-a")
    assert not granted  # cooldown not over
    clock.now += 5.0
    granted_a, snap = await board.acquire_probe("zonos", "router-a")
    granted_b, _ = await board.acquire_probe("zonos", "router-b")
    assert granted_a and not granted_b
    assert snap.engines["zonos"].state is BreakerState.HALF_OPEN and snap.engines["zonos"].prober == "router-a"
    await board.end_probe("zonos", "router-b", True)  # not the holder: ignored
    assert (await board.snapshot()).engines["zonos"].state is BreakerState.HALF_OPEN
    snap = await board.end_probe("zonos", "router-a", True)
    view = snap.engines["zonos"]
    assert view.state is BreakerState.CLOSED and view.prober is None and view.probes == 1


async def test_a_failed_probe_reopens_with_a_longer_cooldown(board: BreakerBoard, clock: ManualClock) -> None:
    for _ in range(3):
        await board.strike("zonos", "down", 0)
    clock.now += 5.0
    assert (await board.acquire_probe("zonos", "router-a"))[0]
    view = (await board.end_probe("zonos", "router-a", False, "still down")).engines["zonos"]
    assert view.state is BreakerState.OPEN and view.cooldown_s == 10.0 and view.failed_probes == 1


async def test_an_expired_lease_counts_as_a_failed_probe_and_frees_the_engine(
    board: BreakerBoard, clock: ManualClock
) -> None:
    for _ in range(3):
        await board.strike("zonos", "down", 0)
    clock.now += 5.0
    assert (await board.acquire_probe("zonos", "router-a"))[0]
    clock.now += 10.0  # router-a went silent past its lease
    view = (await board.snapshot()).engines["zonos"]
    assert view.state is BreakerState.OPEN and view.prober is None and "lease expired" in (view.last_error or "")
    clock.now += view.cooldown_s
    assert (await board.acquire_probe("zonos", "router-b"))[0]
    await board.end_probe("zonos", "router-a", True)  # the silent one comes back late: ignored
    assert (await board.snapshot()).engines["zonos"].prober == "router-b"


async def test_watch_answers_when_something_changes() -> None:
    board = BreakerBoard(BreakerConfig(max_strikes=2))
    first = await board.watch(-1, timeout_s=5.0)  # a new router: the current state at once
    waiting = asyncio.create_task(board.watch(first.version, timeout_s=30.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await board.strike("edge", "down", 0)
    snap = await asyncio.wait_for(waiting, 5.0)
    assert snap.version == first.version + 1 and snap.engines["edge"].strikes == 1
    # Nothing changes: the watch ends after its timeout with the same version.
    again = await board.watch(snap.version, timeout_s=0.05)
    assert again.version == snap.version and again.board_id == board.board_id


async def test_repeating_the_same_verdict_does_not_bump_the_version(board: BreakerBoard) -> None:
    await board.success("flite", 0)
    version = (await board.snapshot()).version
    await board.success("flite", 0)
    assert (await board.snapshot()).version == version
