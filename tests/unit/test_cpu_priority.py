"""Look-ahead synthesis at a lower CPU priority until due: real threads, real helper processes, real libflite."""

from __future__ import annotations

import asyncio
import os
import resource
import threading
from typing import Any

import psutil
import pytest

from serve_app.core import cpu_priority
from serve_app.core.cpu_priority import CpuPriority
from serve_app.core.gate import PRIORITY_NEW, PRIORITY_PLAYING
from serve_app.engines.flite import FliteEngine, FliteLibrary

LONG = "This sentence is long enough that flite streams it out in several pieces as it goes along."

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] == 0,
    reason="moving a thread's priority back up needs root, CAP_SYS_NICE or RLIMIT_NICE",
)


def nice_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def lowered_threads(cpu: CpuPriority) -> list[int]:
    """This process's threads running lowered now."""
    lowered = []
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            if nice_of(tid) != cpu.base:
                lowered.append(tid)
        except ProcessLookupError:
            continue
    return lowered


async def test_a_look_ahead_synthesis_runs_lowered_until_its_due_time_then_normal() -> None:
    cpu = CpuPriority(10)
    assert cpu.enabled, cpu.problem
    job = cpu.job(300)  # 300 ms of slack
    assert job is not None
    attached = threading.Event()
    release = threading.Event()
    thread_id: list[int] = []

    def synthesis() -> None:
        thread_id.append(threading.get_native_id())
        job.attach(thread_id[0])
        attached.set()
        release.wait(5)
        job.detach()

    with job.timed():
        worker = threading.Thread(target=synthesis)
        worker.start()
        assert await asyncio.to_thread(attached.wait, 5)
        assert nice_of(thread_id[0]) == cpu.base + 10
        assert nice_of(threading.get_native_id()) == cpu.base  # the event loop's thread is untouched
        await asyncio.sleep(0.5)  # past its due time: it runs at the normal priority, still working
        assert nice_of(thread_id[0]) == cpu.base
        release.set()
        await asyncio.to_thread(worker.join)


async def test_a_synthesis_ending_before_its_due_time_leaves_its_thread_normal() -> None:
    cpu = CpuPriority(7)
    job = cpu.job(10_000)
    assert job is not None
    seen: list[int] = []

    def synthesis() -> None:
        tid = threading.get_native_id()
        job.attach(tid)
        seen.append(nice_of(tid))
        job.detach()
        seen.append(nice_of(tid))

    with job.timed():
        await asyncio.to_thread(synthesis)
    assert seen == [cpu.base + 7, cpu.base]
    job.attach(threading.get_native_id())  # attached after it fell due: not lowered
    job.fall_due()
    assert nice_of(threading.get_native_id()) == cpu.base


@pytest.mark.parametrize("priority", [PRIORITY_NEW, 10_000])
async def test_a_synthesis_left_early_yields_the_cores_until_it_ends(priority: int) -> None:
    """A barge-in closes the stream; the synthesis goes on to its next stop check with nobody
    waiting for it, at the lowest priority (due or not), and its thread is normal again after."""
    cpu = CpuPriority(10)
    job = cpu.job(priority)
    assert job is not None
    attached = threading.Event()
    release = threading.Event()
    during_wind_down: list[int] = []

    def synthesis() -> None:
        tid = threading.get_native_id()
        job.attach(tid)
        attached.set()
        release.wait(5)
        during_wind_down.append(nice_of(tid))  # the thread still working after the stream was closed
        job.detach()
        during_wind_down.append(nice_of(tid))

    worker = threading.Thread(target=synthesis)
    with pytest.raises(GeneratorExit), job.timed():
        worker.start()
        assert await asyncio.to_thread(attached.wait, 5)
        assert bool(lowered_threads(cpu)) == (priority > 0)  # due work runs at the normal priority
        raise GeneratorExit  # what closing the engine's stream raises at its `yield`
    release.set()
    await asyncio.to_thread(worker.join)
    assert during_wind_down == [cpu_priority.LOWEST_NICE, cpu.base]


def test_due_work_is_never_lowered_while_it_runs() -> None:
    cpu = CpuPriority(10)
    tid = threading.get_native_id()
    try:
        # A new answer's first sentence (its listener is waiting), a sentence about to be needed.
        for priority in (PRIORITY_NEW, PRIORITY_PLAYING):
            job = cpu.job(priority)
            assert job is not None
            job.attach(tid)
            assert nice_of(tid) == cpu.base
            job.detach()
    finally:
        os.setpriority(os.PRIO_PROCESS, tid, cpu.base)
    off = CpuPriority(0)
    assert not off.enabled and off.job(5000) is None and "off" in (off.problem or "")


def test_where_a_lowered_priority_cannot_be_restored_nothing_is_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.setpriority

    def unprivileged(which: int, who: int, nice: int) -> None:
        if nice < os.getpriority(which, who):
            raise PermissionError(13, "Permission denied")
        real(which, who, nice)

    monkeypatch.setattr(cpu_priority.os, "setpriority", unprivileged)
    cpu = CpuPriority(10)
    assert not cpu.enabled and "CAP_SYS_NICE" in (cpu.problem or "")
    assert cpu.job(5000) is None
    assert nice_of(threading.get_native_id()) == cpu.base  # the probe ran on a thread of its own


async def test_flite_runs_look_ahead_lowered_in_process_and_in_its_helper_and_due_work_normal() -> None:
    cpu = CpuPriority(10)
    others = {child.pid for child in psutil.Process().children()}  # processes of earlier tests
    # Two helpers: with one, a look-ahead sentence would wait for its due time (the reserved slot).
    engine = FliteEngine(backend="library", overflow_processes=2, cpu_priority=cpu)
    assert engine._helpers is not None
    try:
        check = await engine.check()
        assert check.details and check.details["lookahead_priority"] == "nice +10"
        # In-process: the synthesis thread is lowered while the look-ahead sentence is spoken.
        ahead = engine.synthesize(LONG, priority=5000)
        assert await ahead.__anext__() == b""
        first: Any = await ahead.__anext__()
        assert first is not None
        assert len(lowered_threads(cpu)) == 1
        rest = [piece async for piece in ahead]
        assert rest and lowered_threads(cpu) == []

        # A due synthesis holds libflite at the normal priority; look-ahead goes to the helper, lowered.
        due = engine.synthesize(LONG * 30, priority=PRIORITY_NEW)
        assert await due.__anext__() == b""
        ahead = engine.synthesize(LONG, priority=5000)
        assert await ahead.__anext__() == b""
        await ahead.__anext__()  # the helper is speaking it now
        helpers = [child for child in psutil.Process().children() if child.pid not in others]
        (helper,) = [h for h in helpers if h.nice() != cpu.base]  # the one speaking it
        assert helper.nice() == cpu.base + 10
        assert lowered_threads(cpu) == []  # libflite's thread speaks the due sentence: normal
        [piece async for piece in ahead]
        assert [h.nice() for h in helpers] == [cpu.base] * len(helpers)  # normal for their next request
        await due.aclose()
    finally:
        engine.close()


async def test_a_helper_left_mid_sentence_winds_down_lowest_then_serves_normal() -> None:
    """A barge-in on a sentence a helper speaks: the helper stops in place at the lowest priority,
    and is back at the normal one, in the pool, once it has."""
    cpu = CpuPriority(10)
    others = {child.pid for child in psutil.Process().children()}  # processes of earlier tests
    engine = FliteEngine(backend="library", overflow_processes=1, cpu_priority=cpu)
    assert engine._helpers is not None
    workers = engine._helpers.workers
    try:
        workers.prestart()
        assert workers._filling is not None
        await workers._filling  # its one helper, started before any request
        library = engine._backend
        assert isinstance(library, FliteLibrary)
        for _ in range(500):  # an earlier test's abandoned synthesis may still be winding down
            if not library.busy:
                break
            await asyncio.sleep(0.01)
        held = engine.synthesize(LONG * 30, priority=PRIORITY_NEW)  # libflite is taken ...
        assert await held.__anext__() == b""
        spoken = engine.synthesize(LONG * 30, priority=PRIORITY_NEW)  # ... so a helper speaks this one
        assert await spoken.__anext__() == b""
        await spoken.__anext__()
        (helper,) = [child for child in psutil.Process().children() if child.pid not in others]
        assert helper.nice() == cpu.base  # due work: normal
        await spoken.aclose()  # type: ignore[attr-defined]
        draining = list(workers._draining)
        if draining:  # it may already have stopped, between two audio callbacks
            assert helper.nice() == cpu_priority.LOWEST_NICE
            await asyncio.gather(*draining)
        assert helper.nice() == cpu.base
        assert [kept.proc.pid for kept in workers._idle] == [helper.pid] and workers._started == 1  # kept
        await held.aclose()  # type: ignore[attr-defined]
    finally:
        engine.close()
