"""CPU priority for synthesis by when its audio is needed: look-ahead yields the cores to first audio.

The queue (`serve_app.core.gate`) decides who takes a synthesis slot; once several syntheses run,
the operating system shares the cores among them equally. Under load that makes a new answer's
first sentence, whose listener is waiting in silence, share a core with look-ahead sentences of
answers already playing, whose listeners hold seconds of audio. So a synthesis with slack runs at
a lower priority (a higher nice value) until it is due, and then at the normal one again: it
still gets whatever CPU the due work leaves, and it cannot starve past its due time.

Linux keeps a nice value per thread, so the in-process synthesis thread and each helper process
are set on their own, and nothing else in the replica (its event loop) changes. Lowering a nice
value again needs `CAP_SYS_NICE` or an `RLIMIT_NICE` allowance (`ulimit -e`); where neither is
granted, every synthesis runs at the normal priority, as without this module, and the engine says
why in its health details.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

from serve_app.core.gate import due_at


def _probe(base: int, step: int) -> str | None:
    """Why per-thread priorities cannot be moved both ways here (None: they can). Tried on a
    thread of its own, so the caller's priority is never touched."""
    if not sys.platform.startswith("linux"):
        return "per-thread priorities need Linux"
    problem: list[str] = []

    def attempt() -> None:
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(base + step, 19))
            os.setpriority(os.PRIO_PROCESS, tid, base)
        except OSError as exc:
            problem.append(
                f"cannot restore a lowered priority ({type(exc).__name__}): grant CAP_SYS_NICE or raise RLIMIT_NICE"
            )

    thread = threading.Thread(target=attempt, name="cpu-priority-probe")
    thread.start()
    thread.join()
    return problem[0] if problem else None


LOWEST_NICE = 19


class CpuPriority:
    """The nice values a replica's syntheses run at: the replica's own while due, `lookahead_nice`
    above it while they have slack. `lookahead_nice=0` turns it off."""

    def __init__(self, lookahead_nice: int) -> None:
        self.base = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0
        self.lookahead_nice = lookahead_nice
        self.problem = "off (lookahead_nice is 0)" if lookahead_nice <= 0 else _probe(self.base, lookahead_nice)

    @property
    def enabled(self) -> bool:
        return self.problem is None

    def job(self, priority: int) -> JobPriority | None:
        """What one synthesis queued at `priority` (`serve_app.core.gate`) runs at: lowered while it
        has slack (due work never is), and at the lowest priority once abandoned; None when this is
        off."""
        if not self.enabled:
            return None
        return JobPriority(self, due_at(priority) if priority > 0 else -1.0)

    def set(self, thread_id: int, nice: int) -> None:
        """`thread_id` (a thread's native id, or a single-threaded process's pid) to `nice`; a
        thread that has ended is no error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, thread_id, min(nice, 19))


class JobPriority:
    """One synthesis: lowered on the thread that runs it while it has slack, normal from its due
    time (a timer on the event loop) and after it ends. Abandoned (a barge-in closed its stream,
    and it stops at its next check), it runs at the lowest priority until it ends: work nobody
    will hear yields the cores to the replica's event loop and to due work.

    `attach` and `detach` may be called from the synthesis thread itself, the due-time timer runs on
    the loop: a lock keeps a late `attach` from lowering a synthesis that has already fallen due."""

    def __init__(self, cpu: CpuPriority, due: float) -> None:
        self._cpu = cpu
        self._due = due  # time.monotonic()
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._abandoned = False

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Around the synthesis, on the event loop: at its due time it runs at the normal priority,
        however long it has been running. Left early (a barge-in closed the stream, or it failed)
        it is abandoned: nobody waits for it to reach its next stop check, so it yields the cores."""
        timer = asyncio.get_running_loop().call_later(max(0.0, self._due - time.monotonic()), self.fall_due)
        try:
            yield
        except BaseException:  # left early: closed (a barge-in), cancelled or failed
            self.abandon()
            raise
        finally:
            timer.cancel()

    def attach(self, thread_id: int) -> None:
        """The synthesis runs on `thread_id` from now: lowered unless already due."""
        with self._lock:
            self._thread = thread_id
            if self._abandoned:
                self._cpu.set(thread_id, LOWEST_NICE)
            elif time.monotonic() < self._due:
                self._cpu.set(thread_id, self._cpu.base + self._cpu.lookahead_nice)

    def fall_due(self) -> None:
        with self._lock:
            self._due = -1.0
            if self._thread is not None and not self._abandoned:
                self._cpu.set(self._thread, self._cpu.base)

    def abandon(self) -> None:
        """Nobody waits for this synthesis any more: the lowest priority until `detach`."""
        with self._lock:
            self._abandoned = True
            if self._thread is not None:
                self._cpu.set(self._thread, LOWEST_NICE)

    def detach(self) -> None:
        """The synthesis has ended: its thread (or helper) back at the normal priority for its next one."""
        with self._lock:
            if self._thread is not None:
                self._cpu.set(self._thread, self._cpu.base)
                self._thread = None
