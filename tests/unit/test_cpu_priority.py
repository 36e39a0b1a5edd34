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
from serve_app.engines.flite import FliteEngine

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


async def test_a_synthesis_left_early_runs_normal_while_it_winds_down() -> None:
    """A barge-in closes the stream and then waits for the synthesis thread to reach its stop check:
    that wait must not run at the look-ahead priority."""
    cpu = CpuPriority(10)
    job = cpu.job(10_000)
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

    worker = threading.Thread(target=synthesis)
    with pytest.raises(GeneratorExit), job.timed():
        worker.start()
        assert await asyncio.to_thread(attached.wait, 5)
        assert lowered_threads(cpu)
        raise GeneratorExit  # what closing the engine's stream raises at its `yield`
    release.set()
    await asyncio.to_thread(worker.join)
    assert during_wind_down == [cpu.base]


def test_due_work_is_never_lowered() -> None:
    cpu = CpuPriority(10)
    assert cpu.job(PRIORITY_NEW) is None  # a new answer's first sentence: its listener is waiting
    assert cpu.job(PRIORITY_PLAYING) is None  # a sentence its listener is about to need
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
