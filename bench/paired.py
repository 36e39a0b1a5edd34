"""First byte of a system against the floor, measured in alternating slices, each alone on the machine.

Why: a shared VM's speed drifts in spells of seconds to minutes (the same server's median first
byte moved between 18 and 29 ms within ten minutes here, and so did the floor's). `bench.ttfb`
measures each system minutes after the floor, so its first-byte ratio also measures which spell
each landed in. Here both run at once but never together: while one answers a slice of sequential
requests, every process of the other is stopped (SIGSTOP), so it takes no CPU and wakes nothing,
and the two alternate every few seconds, so a slow spell hits both alike. The ratio is the pooled
median of the system's first bytes over the floor's.

A stopped Ray cluster misses its own timers for a few seconds (health checks allow far longer);
after it is resumed it gets `settle_s` to catch up before its slice, billed to nobody, and each
slice starts with warm-up requests that are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import psutil

from bench.common import timed_post

WARM_UP = 3  # requests at the start of each slice, not counted: a resumed process's first answer
PAUSE_S = 0.01  # between sequential requests, as a client between two sentences


class ProcessTree:
    """A process and all its descendants, stopped or resumed together.

    The tree is read again at every call, so processes started since (Ray's workers, a replica's
    helpers, HAProxy's reloads) are included.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _signal(self, signum: signal.Signals) -> None:
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signum)

    def stop(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)


def tree_cpu(pid: int) -> Callable[[], float]:
    """CPU seconds so far of `pid` and all its descendants, including their waited-for children
    (flite processes a server ran and reaped). Processes that ended unwaited are not seen."""
    seen: dict[int, float] = {}

    tree = ProcessTree(pid)

    def read() -> float:
        for proc in tree.processes():
            try:
                t = proc.cpu_times()
                seen[proc.pid] = t.user + t.system + t.children_user + t.children_system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return sum(seen.values())

    return read


class Side:
    """One of the two servers: where it answers, and how to stop and resume all of it."""

    def __init__(self, url: str, stop: Callable[[], None], resume: Callable[[], None]) -> None:
        self.url = url
        self.stop = stop
        self.resume = resume


@dataclass
class Paired:
    """Median first bytes (ms) of each side over all its counted requests, and the ratio per slice."""

    system_ms: float
    floor_ms: float
    slice_ratios: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return round(self.system_ms / self.floor_ms, 3)


FirstByte = Callable[[str], Awaitable[float]]


def http_first_byte(client: httpx.AsyncClient, request: dict[str, object]) -> FirstByte:
    """Seconds to the first body byte of one streamed POST of `request` to a URL."""

    async def first_byte(url: str) -> float:
        return (await timed_post(client, url, request)).ttfb_s

    return first_byte


async def _slice(first_byte: FirstByte, url: str, requests: int) -> list[float]:
    found = []
    for number in range(WARM_UP + requests):
        seconds = await first_byte(url)
        if number >= WARM_UP:
            found.append(seconds)
        await asyncio.sleep(PAUSE_S)
    return found


async def alternate(
    system: Side,
    floor: Side,
    first_byte: FirstByte,
    *,
    slices: int,
    requests: int,
    settle_s: float = 0.5,
    on_slice: Callable[[int, float], None] | None = None,
) -> Paired:
    """`slices` pairs of slices: the floor alone, then the system alone, `requests` each.

    Expects both sides running; leaves both running.
    """
    floor_all: list[float] = []
    system_all: list[float] = []
    ratios: list[float] = []
    try:
        for number in range(slices):
            system.stop()
            await asyncio.sleep(settle_s)
            floor_times = await _slice(first_byte, floor.url, requests)
            floor.stop()
            system.resume()
            await asyncio.sleep(settle_s)
            system_times = await _slice(first_byte, system.url, requests)
            floor.resume()
            floor_all += floor_times
            system_all += system_times
            ratios.append(round(statistics.median(system_times) / statistics.median(floor_times), 3))
            if on_slice is not None:
                on_slice(number, ratios[-1])
    finally:
        floor.resume()
        system.resume()
    return Paired(
        system_ms=round(statistics.median(system_all) * 1000, 2),
        floor_ms=round(statistics.median(floor_all) * 1000, 2),
        slice_ratios=ratios,
    )


def measure_paired(
    system: Side, floor: Side, request: dict[str, object], *, slices: int, requests: int, settle_s: float = 0.5
) -> Paired:
    """`alternate` over HTTP with `request`, printing each slice's ratio as it goes."""

    def progress(number: int, ratio: float) -> None:
        print(f"    paired slice {number + 1}/{slices}: {ratio:.2f}x the floor", flush=True)

    async def run() -> Paired:
        async with httpx.AsyncClient(timeout=60) as client:
            return await alternate(
                system, floor, http_first_byte(client, request),
                slices=slices, requests=requests, settle_s=settle_s, on_slice=progress,
            )

    started = time.monotonic()
    found = asyncio.run(run())
    print(f"    paired: {found.system_ms} ms against the floor's {found.floor_ms} ms ({found.ratio}x) "
          f"in {time.monotonic() - started:.0f}s", flush=True)
    return found
