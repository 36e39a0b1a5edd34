"""libflite in helper processes: a replica speaks several texts at once without a process per request.

libflite is serialised within a process (its global state is guarded by a lock), so one replica
would use one core. `FliteWorkers` keeps up to `size` long-lived helper processes, each running
libflite (`python -m serve_app.engines.flite_worker`), started on first use and reused: no process
start and no voice load per request, and word timings are kept. A request goes to an idle helper;
the engine only sends one when its own library is busy (see `serve_app.engines.flite`).

A helper streams as libflite does in-process: the word timings, then the first piece of audio as
soon as flite's callback has it (time to first byte under load is that of the library, not of the
whole sentence), then the rest gathered into pieces of about two seconds, then "done".

The protocol is ours alone, over the helper's stdin/stdout: a 4-byte big-endian length, then a
pickled object (a request `(text, voice, speed)`; replies `("marks", [WordMark])`,
`("audio", rate, pcm)`, then `("done",)` or `("error", message)`). A helper whose caller left
mid-request is killed rather than drained. One that dies before its first reply is replaced and the
request is sent once more to a new one (the caller has had nothing of the sentence yet); a second
death in a row, or a death after audio went out, is an engine error (the router resumes the
sentence on another engine at the first unheard word).

Helpers are started with `subprocess.Popen`, not the event loop's subprocess support: in a Serve
replica the loop is uvloop, whose spawn forks the whole multi-threaded process and runs gRPC's fork
handlers in the child, which was seen to crash the child (SIGSEGV) before it could exec. CPython's
`Popen` uses vfork, which runs no fork handlers; only the helper's stdout is read on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, BinaryIO

from serve_app.core.cpu_priority import JobPriority
from serve_app.core.errors import EngineUnavailable
from serve_app.core.timing import WordMark

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")


class _Helper:
    """One helper process: requests written to its stdin, replies read from its stdout on the loop."""

    def __init__(
        self, proc: subprocess.Popen[bytes], replies: asyncio.StreamReader, transport: asyncio.BaseTransport
    ) -> None:
        self.proc = proc
        self._replies = replies
        self._transport = transport

    @classmethod
    async def start(cls, library: str | None) -> _Helper:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "serve_app.engines.flite_worker", *([library] if library else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        replies = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(replies), proc.stdout)
        return cls(proc, replies, transport)

    async def stream(self, request: tuple[str, str, float]) -> AsyncIterator[tuple[int, bytes] | WordMark]:
        """The helper's replies to one request, as pieces, until it says it is done."""
        assert self.proc.stdin is not None
        payload = pickle.dumps(request)
        # A request is a sentence (at most a few KB), far below a pipe's buffer: the write never waits.
        self.proc.stdin.write(_LENGTH.pack(len(payload)) + payload)
        self.proc.stdin.flush()
        while True:
            size = _LENGTH.unpack(await self._replies.readexactly(_LENGTH.size))[0]
            reply = pickle.loads(await self._replies.readexactly(size))
            kind = reply[0]
            if kind == "done":
                return
            if kind == "marks":
                for mark in reply[1]:
                    yield mark
            elif kind == "audio":
                yield reply[1], reply[2]
            else:
                raise EngineUnavailable(f"flite helper: {reply[1]}")

    def kill(self) -> None:
        """End the process and close its pipes (it is reaped by the next `Popen` or at exit)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._transport.close()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


_DIED = (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError)


class FliteWorkers:
    """Up to `size` helper processes running libflite, handed out one request at a time."""

    def __init__(self, size: int, library: str | None = None) -> None:
        self.size = size
        self.library = library  # the libflite the helpers load (None: the system's)
        self.busy = 0
        self._idle: list[_Helper] = []
        self._started = 0
        self._calls: dict[int, float] = {}  # running calls: when each began
        self._call_ids = itertools.count()
        self._filling: asyncio.Future[None] | None = None
        # One process start at a time: the background fill and a request may both start a helper.
        # A test run crashed once (a segfault) while two starts overlapped in worker threads; the
        # cause is not known, and serialising the `Popen` calls costs nothing measurable (the
        # child's own start, the slow part, is not held).
        self._spawning = asyncio.Lock()

    def prestart(self) -> None:
        """Start every helper now, in the background (the engine calls this at its first request).
        A burst that follows then finds them loaded, instead of waiting a second or more for each
        helper's Python and libflite while the in-process library serves alone and the queue's wait
        runs past the router's admission budget (seen: 503s for a burst of 20 requests right after
        start on a slow 2-core machine)."""
        if self._filling is None:
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        try:
            while len(self._idle) + self.busy < self.size:
                self._keep(await self._start(), counted=False)
        except Exception as exc:  # started again on demand, where a failure reaches the request
            logger.warning("flite helpers not started ahead of need: %s", type(exc).__name__)

    def _keep(self, helper: _Helper, *, counted: bool) -> None:
        """To the idle helpers, unless that makes more than `size` (a request that found none idle
        while the others were starting started its own). `counted`: the helper served a call that
        `busy` still counts."""
        if len(self._idle) + self.busy + (0 if counted else 1) > self.size:
            helper.kill()
        else:
            self._idle.append(helper)

    def longest_call(self) -> float:
        """Seconds the longest-running call has run (0 when none runs): a helper that never
        answers is a hung synthesis."""
        return time.monotonic() - min(self._calls.values()) if self._calls else 0.0

    @property
    def free(self) -> bool:
        return self.busy < self.size

    async def stream(
        self, text: str, voice: str, speed: float, *, announce: bool = False, job: JobPriority | None = None
    ) -> AsyncGenerator[tuple[int, bytes] | WordMark | bytes, None]:
        """Word marks and (rate, pcm) pieces of `text` from an idle helper (one is started if none is).

        `announce`: first `b""` once a helper has the request. Starting a helper takes a second or
        more on a loaded machine; that is waiting, not the engine's first-byte time (a start that
        counted as such failed a sentence with FirstByteTimeout while three clusters started).
        `job`: the CPU priority the helper runs the request at (`serve_app.core.cpu_priority`)."""
        self.busy += 1
        call = next(self._call_ids)
        self._calls[call] = time.monotonic()
        try:
            for attempt in (1, 2):
                helper = self._idle.pop() if self._idle else await self._start()
                if announce and attempt == 1:
                    yield b""
                replied = False
                if job is not None:
                    job.attach(helper.proc.pid)  # a helper is single-threaded: its pid is its thread
                try:
                    async for piece in helper.stream((text, voice, speed)):
                        replied = True
                        yield piece
                except _DIED as exc:
                    helper.kill()
                    if replied or attempt == 2:
                        raise EngineUnavailable(f"flite helper died: {type(exc).__name__}") from None
                    logger.warning("flite helper died (%s); the sentence goes to a new one", type(exc).__name__)
                    continue
                except BaseException:
                    # Cancelled or abandoned mid-request (its late replies would confuse the next
                    # caller), or failed: replaced.
                    helper.kill()
                    raise
                self._keep(helper, counted=True)
                return
        finally:
            if job is not None:
                job.detach()
            self.busy -= 1
            del self._calls[call]

    async def _start(self) -> _Helper:
        async with self._spawning:
            helper = await _Helper.start(self.library)
        self._started += 1
        logger.debug("flite helper %d started (pid %s)", self._started, helper.proc.pid)
        return helper

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
        for helper in self._idle:
            helper.kill()
        self._idle.clear()


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    return pickle.loads(stream.read(_LENGTH.unpack(header)[0]))


def _write(stream: BinaryIO, *replies: Any) -> None:
    """The replies in one write, so the parent reads them together."""
    frames: list[bytes] = []
    for reply in replies:
        payload = pickle.dumps(reply)
        frames += (_LENGTH.pack(len(payload)), payload)
    stream.write(b"".join(frames))
    stream.flush()


def serve_forever(requests: BinaryIO, replies: BinaryIO, library_path: str | None = None) -> None:
    """The helper's loop: one request at a time until its parent closes stdin."""
    from serve_app.engines.flite import FliteLibrary

    library = FliteLibrary(library_path)
    while (request := _read(requests)) is not None:
        text, voice, speed = request
        try:
            last = _speak(library, text, voice, speed, lambda reply: _write(replies, reply))
            # The last piece and the end in one write: the parent reads both at once and ends the
            # sentence without waiting for another read.
            _write(replies, *(() if last is None else (last,)), ("done",))
        except Exception as exc:  # the parent turns it into an engine error
            _write(replies, ("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


def _speak(
    library: Any, text: str, voice: str, speed: float, send: Callable[[tuple[Any, ...]], None]
) -> tuple[Any, ...] | None:
    """The same synthesis as in-process, sent as it comes, in the same pieces; the last piece is
    returned as its reply, for the caller to send with its end."""

    def reply(item: Any) -> tuple[Any, ...]:
        return ("marks", item) if isinstance(item, list) else ("audio", *item)

    last = library.speak(text, voice, speed, lambda item: send(reply(item)), threading.Event())
    return None if last is None else reply(last)


def main() -> None:
    # Replies get their own copy of stdout; fd 1 then points at stderr, so nothing the library
    # prints can corrupt the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        serve_forever(sys.stdin.buffer, replies, sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":
    main()
