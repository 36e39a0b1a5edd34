"""bench.paired: our system's first byte against the floor's, alternating, each alone on the machine.

The alternation is checked with sides that record what is stopped when each request is made; the
stopping itself on real process trees (a parent and its grandchild), read back from the kernel.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from bench.paired import Paired, ProcessTree, Side, alternate


class Recorder:
    """Two sides whose stop/resume flip a flag, and a first byte that says who was running."""

    def __init__(self, system_s: float, floor_s: float) -> None:
        self.running = {"system": True, "floor": True}
        self.seconds = {"system": system_s, "floor": floor_s}
        self.calls: list[tuple[str, dict[str, bool]]] = []

    def side(self, name: str) -> Side:
        def stop() -> None:
            self.running[name] = False

        def resume() -> None:
            self.running[name] = True

        return Side(name, stop, resume)

    async def first_byte(self, url: str) -> float:
        self.calls.append((url, dict(self.running)))
        return self.seconds[url]


def test_each_side_is_measured_alone_and_the_sides_alternate() -> None:
    recorder = Recorder(system_s=0.024, floor_s=0.020)
    found = asyncio.run(
        alternate(recorder.side("system"), recorder.side("floor"), recorder.first_byte,
                  slices=3, requests=2, settle_s=0)
    )
    for url, running in recorder.calls:
        other = "floor" if url == "system" else "system"
        assert running[url] and not running[other], (url, running)
    order = [url for url, _ in recorder.calls]
    per_slice = 3 + 2  # warm-up requests, then the counted ones
    assert order == (["floor"] * per_slice + ["system"] * per_slice) * 3
    # Both are left running for what the bench measures next.
    assert recorder.running == {"system": True, "floor": True}
    assert found == Paired(system_ms=24.0, floor_ms=20.0, slice_ratios=[1.2, 1.2, 1.2])
    assert found.ratio == 1.2


def test_a_side_failing_mid_slice_leaves_both_running() -> None:
    recorder = Recorder(system_s=0.024, floor_s=0.020)

    async def failing(url: str) -> float:
        if url == "system":
            raise RuntimeError("HTTP 503")
        return await recorder.first_byte(url)

    with pytest.raises(RuntimeError):
        asyncio.run(alternate(recorder.side("system"), recorder.side("floor"), failing, slices=2, requests=1,
                              settle_s=0))
    assert recorder.running == {"system": True, "floor": True}


def _state(pid: int) -> str:
    return psutil.Process(pid).status()


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_process_tree_is_stopped_and_resumed_whole() -> None:
    # A parent whose child starts a grandchild: Ray's processes hang below the launcher that way.
    grandchild = "import time; time.sleep(60)"
    child = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"
    parent_code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    try:
        tree = ProcessTree(parent.pid)
        assert _wait_for(lambda: len(tree.processes()) == 3)
        pids = [proc.pid for proc in tree.processes()]
        tree.stop()
        assert _wait_for(lambda: all(_state(pid) == psutil.STATUS_STOPPED for pid in pids))
        tree.resume()
        assert _wait_for(lambda: all(_state(pid) != psutil.STATUS_STOPPED for pid in pids))
    finally:
        for proc in reversed(ProcessTree(parent.pid).processes()):
            proc.kill()
        parent.wait()


def test_a_tree_whose_root_is_gone_is_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tree = ProcessTree(proc.pid)
    assert tree.processes() == []
    tree.stop()  # nothing to stop, and no error
    tree.resume()
