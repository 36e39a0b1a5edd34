"""libflite in helper processes: a replica speaks several texts at once without a process per request.

libflite is serialised within a process (its global state is guarded by a lock), so one replica
would use one core. `FliteWorkers` keeps up to `size` long-lived helper processes, each running
libflite (`python -m serve_app.engines.flite_worker`), started on first use and reused: no process
start and no voice load per request, and word timings are kept. A request goes to an idle helper;
the engine only sends one when its own library is busy (see `serve_app.engines.flite`).

The protocol is ours alone, over the helper's stdin/stdout: a 4-byte big-endian length, then a
pickled object (a request `(text, voice, speed)`; a reply `("ok", rate, pcm, marks)` or
`("error", message)`). A helper whose caller left mid-request is killed rather than drained, and
one that dies is replaced on the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

from serve_app.core.errors import EngineUnavailable
from serve_app.core.timing import WordMark

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")


class _Helper:
    """One helper process and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def call(self, request: tuple[str, str, float]) -> tuple[int, bytes, list[WordMark]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        payload = pickle.dumps(request)
        self.proc.stdin.write(_LENGTH.pack(len(payload)) + payload)
        await self.proc.stdin.drain()
        size = _LENGTH.unpack(await self.proc.stdout.readexactly(_LENGTH.size))[0]
        reply = pickle.loads(await self.proc.stdout.readexactly(size))
        if reply[0] != "ok":
            raise EngineUnavailable(f"flite helper: {reply[1]}")
        return reply[1], reply[2], reply[3]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class FliteWorkers:
    """Up to `size` helper processes running libflite, handed out one request at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._idle: list[_Helper] = []
        self._started = 0
        self._calls: dict[int, float] = {}  # running calls: when each began
        self._call_ids = itertools.count()

    def longest_call(self) -> float:
        """Seconds the longest-running call has run (0 when none runs): a helper that never
        answers is a hung synthesis."""
        return time.monotonic() - min(self._calls.values()) if self._calls else 0.0

    @property
    def free(self) -> bool:
        return self.busy < self.size

    async def speak(self, text: str, voice: str, speed: float) -> tuple[int, bytes, list[WordMark]]:
        """(rate, pcm, word marks) of the whole text, from an idle helper (one is started if none is)."""
        self.busy += 1
        call = next(self._call_ids)
        self._calls[call] = time.monotonic()
        helper: _Helper | None = None
        try:
            helper = self._idle.pop() if self._idle else await self._start()
            result = await helper.call((text, voice, speed))
        except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError) as exc:
            if helper is not None:
                helper.kill()
                helper = None
            raise EngineUnavailable(f"flite helper died: {type(exc).__name__}") from None
        except BaseException:
            if helper is not None:  # cancelled mid-request: its reply would confuse the next caller
                helper.kill()
                helper = None
            raise
        finally:
            self.busy -= 1
            del self._calls[call]
            if helper is not None:
                self._idle.append(helper)
        return result

    async def _start(self) -> _Helper:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serve_app.engines.flite_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
        )
        self._started += 1
        logger.debug("flite helper %d started (pid %s)", self._started, proc.pid)
        return _Helper(proc)

    def close(self) -> None:
        for helper in self._idle:
            helper.kill()
        self._idle.clear()


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    return pickle.loads(stream.read(_LENGTH.unpack(header)[0]))


def _write(stream: BinaryIO, reply: Any) -> None:
    payload = pickle.dumps(reply)
    stream.write(_LENGTH.pack(len(payload)) + payload)
    stream.flush()


def serve_forever(requests: BinaryIO, replies: BinaryIO) -> None:
    """The helper's loop: one request at a time until its parent closes stdin."""
    from serve_app.engines.flite import FliteLibrary

    library = FliteLibrary()
    while (request := _read(requests)) is not None:
        try:
            _write(replies, ("ok", *_speak(library, *request)))
        except Exception as exc:  # the parent turns it into an engine error
            _write(replies, ("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


def _speak(library: Any, text: str, voice: str, speed: float) -> tuple[int, bytes, list[WordMark]]:
    """The same synthesis as in-process, gathered: (rate, pcm, word marks)."""
    pieces: list[tuple[int, bytes]] = []
    marks: list[WordMark] = []
    library._synthesize_blocking(
        text, voice, speed, lambda rate, pcm: pieces.append((rate, pcm)), threading.Event(), marks.extend
    )
    rate = pieces[0][0] if pieces else 16000
    return rate, b"".join(pcm for _, pcm in pieces), marks


def main() -> None:
    # Replies get their own copy of stdout; fd 1 then points at stderr, so nothing the library
    # prints can corrupt the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        serve_forever(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
