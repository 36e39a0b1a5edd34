"""The priority gate: answers already playing before new ones, then arrival order; nobody lost."""

from __future__ import annotations

import asyncio
import math

import pytest

from serve_app.core.gate import PRIORITY_NEW, PRIORITY_PLAYING, PriorityGate, due_at


class HeldGate:
    """A one-slot gate taken by a holder, and waiters that record the order in which they enter."""

    def __init__(self) -> None:
        self.gate = PriorityGate(1)
        self.order: list[str] = []
        self._release = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def hold(self) -> None:
        self._tasks.append(asyncio.create_task(self._holder()))
        await asyncio.sleep(0)

    def wait(self, name: str, priority: int) -> None:
        self._tasks.append(asyncio.create_task(self._waiter(name, priority)))

    async def release(self) -> list[str]:
        self._release.set()
        await asyncio.gather(*self._tasks)
        return self.order

    async def _holder(self) -> None:
        async with self.gate.hold():
            await self._release.wait()

    async def _waiter(self, name: str, priority: int) -> None:
        async with self.gate.hold(priority):
            self.order.append(name)


async def test_waiters_enter_by_priority_then_arrival() -> None:
    held = HeldGate()
    await held.hold()
    held.wait("new-1", PRIORITY_NEW)
    held.wait("playing-1", PRIORITY_PLAYING)
    held.wait("new-2", PRIORITY_NEW)
    held.wait("playing-2", PRIORITY_PLAYING)
    await asyncio.sleep(0.01)
    assert held.gate.waiting == 4 and held.order == []
    assert await held.release() == ["playing-1", "playing-2", "new-1", "new-2"]
    assert held.gate.waiting == 0


async def test_a_waiter_that_leaves_is_skipped_and_slots_are_not_lost() -> None:
    gate = PriorityGate(2)
    entered: list[str] = []
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with gate.hold():
            entered.append(name)
            await release.wait()

    holders = [asyncio.create_task(hold(f"h{i}")) for i in range(2)]
    await asyncio.sleep(0.01)
    leaver = asyncio.create_task(hold("leaver"))
    stayer = asyncio.create_task(hold("stayer"))
    await asyncio.sleep(0.01)
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    release.set()
    await asyncio.gather(*holders, stayer)
    assert entered == ["h0", "h1", "stayer"]
    # Both slots are free again: two holders enter at once.
    both = [asyncio.create_task(hold(f"again{i}")) for i in range(2)]
    await asyncio.sleep(0.01)
    assert {"again0", "again1"} <= set(entered)
    await asyncio.gather(*both)


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        PriorityGate(0)


async def test_a_sentence_with_slack_waits_behind_new_answers_until_it_is_due() -> None:
    held = HeldGate()
    await held.hold()
    held.wait("look-ahead", 100)  # its listener holds 100 ms more than the margin
    await asyncio.sleep(0)
    held.wait("new-before-due", PRIORITY_NEW)
    await asyncio.sleep(0.2)  # past the look-ahead sentence's due time
    held.wait("new-after-due", PRIORITY_NEW)
    held.wait("playing-now", PRIORITY_PLAYING)
    await asyncio.sleep(0.01)
    assert await held.release() == ["playing-now", "new-before-due", "look-ahead", "new-after-due"]


def test_due_times() -> None:
    assert due_at(PRIORITY_PLAYING, 10.0) == -math.inf
    assert due_at(PRIORITY_NEW, 10.0) == 10.0
    assert due_at(1500, 10.0) == 11.5


async def test_the_reserved_slot_is_kept_for_work_that_is_due() -> None:
    gate = PriorityGate(2, reserve=1)
    entered: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, priority: int) -> None:
        async with gate.hold(priority):
            entered.append(name)
            await release.wait()

    tasks = [asyncio.create_task(hold("look-ahead-1", 10_000))]
    await asyncio.sleep(0.01)
    assert entered == ["look-ahead-1"]  # two free: one may go to work with slack
    tasks.append(asyncio.create_task(hold("look-ahead-2", 10_000)))
    await asyncio.sleep(0.01)
    assert entered == ["look-ahead-1"] and gate.waiting == 1  # the last free slot is kept
    tasks.append(asyncio.create_task(hold("new", PRIORITY_NEW)))
    await asyncio.sleep(0.01)
    assert entered == ["look-ahead-1", "new"]  # a new answer starts at once
    release.set()
    await asyncio.gather(*tasks)
    assert entered == ["look-ahead-1", "new", "look-ahead-2"]
    assert gate.waiting == 0


async def test_work_held_back_by_the_reserve_enters_when_it_falls_due() -> None:
    gate = PriorityGate(2, reserve=1)
    release = asyncio.Event()
    entered = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(PRIORITY_NEW):
            await release.wait()

    async def due_soon() -> None:
        async with gate.hold(50):  # due 50 ms after it asks
            entered.set()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(due_soon())
    await asyncio.sleep(0.01)
    assert not entered.is_set()  # one slot free, and it is the reserve
    await asyncio.wait_for(entered.wait(), 5)  # no slot was released: it fell due
    release.set()
    await asyncio.gather(held, waiter)


def test_a_gate_reserves_fewer_slots_than_it_has() -> None:
    with pytest.raises(ValueError):
        PriorityGate(2, reserve=2)
    PriorityGate(2, reserve=1)
