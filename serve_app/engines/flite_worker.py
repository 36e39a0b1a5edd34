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
pickled object (a request `(call, text, voice, speed)`, or `("cancel", call)`; replies
`("marks", [WordMark])`, `("audio", rate, pcm)`, then `("done",)` or `("error", message)`).

A caller that leaves mid-request (a barge-in) does not cost the helper. The parent writes
`("cancel", call)`; the helper looks for it at each of flite's audio callbacks (one `select` on its
stdin), stops there as the in-process library does, and answers "done"; the parent reads what is
left in the background and puts the helper back. Killing it instead would cost a new helper's
start, about 200 ms of CPU, on every barge-in, right when the next answer needs the cores. The call
number makes a cancel that arrives after its request ended harmless. A helper that does not answer
within `DRAIN_TIMEOUT_S` is killed. One that dies before its first reply is replaced and the
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
import select
import struct
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, BinaryIO

from serve_app.core.cpu_priority import JobPriority
from serve_app.core.errors import EngineUnavailable
from serve_app.core.timing import WordMark

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# A cancelled request stops at flite's next audio callback (at most ~1 s of audio, a few ms of CPU),
# or after the front end of its sentence: far below this unless the machine is stalled.
DRAIN_TIMEOUT_S = 5.0


class _Helper:
    """One helper process: requests written to its stdin, replies read from its stdout on the loop."""

    def __init__(
        self, proc: subprocess.Popen[bytes], replies: asyncio.StreamReader, transport: asyncio.BaseTransport
    ) -> None:
        self.proc = proc
        self._replies = replies
        self._transport = transport
        self._half_read: int | None = None  # the size of a reply whose payload a cancel left unread

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

    def send(self, message: tuple[Any, ...]) -> None:
        """One message to the helper. A request is a sentence (at most a few KB) and a cancel a few
        bytes, far below a pipe's buffer, and the helper reads both: the write never waits."""
        assert self.proc.stdin is not None
        payload = pickle.dumps(message)
        self.proc.stdin.write(_LENGTH.pack(len(payload)) + payload)
        self.proc.stdin.flush()

    async def _reply(self) -> tuple[Any, ...]:
        """The next reply; a cancel between its size and its payload leaves the size for `drain`."""
        if self._half_read is None:
            self._half_read = _LENGTH.unpack(await self._replies.readexactly(_LENGTH.size))[0]
        reply: tuple[Any, ...] = pickle.loads(await self._replies.readexactly(self._half_read))
        self._half_read = None
        return reply

    async def drain(self) -> None:
        """Read and drop replies up to the end of the request in flight (its "done" or "error")."""
        while (await self._reply())[0] not in ("done", "error"):
            pass

    async def stream(
        self, call: int, text: str, voice: str, speed: float
    ) -> AsyncGenerator[tuple[int, bytes] | WordMark, None]:
        """The helper's replies to one request, as pieces, until it says it is done."""
        self.send((call, text, voice, speed))
        while True:
            reply = await self._reply()
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
        self.busy = 0  # calls in progress (with a helper or waiting for one)
        self._live = 0  # helpers started and not ended: idle, speaking, or finishing a cancelled call
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
        self._draining: set[asyncio.Task[None]] = set()  # helpers finishing a cancelled request

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
            while self._live < self.size:
                self._keep(await self._start())
        except Exception as exc:  # started again on demand, where a failure reaches the request
            logger.warning("flite helpers not started ahead of need: %s", type(exc).__name__)

    def _keep(self, helper: _Helper) -> None:
        """To the idle helpers, unless there are more than `size` (a request that found none idle
        while the others were starting started its own)."""
        if self._live > self.size:
            self._end(helper)
        else:
            self._idle.append(helper)

    def _end(self, helper: _Helper) -> None:
        helper.kill()
        self._live -= 1

    def longest_call(self) -> float:
        """Seconds the longest-running call has run (0 when none runs): a helper that never
        answers is a hung synthesis."""
        return time.monotonic() - min(self._calls.values()) if self._calls else 0.0

    @property
    def free(self) -> bool:
        """A request would find a helper without starting one: an idle one, or one finishing a
        cancelled request (milliseconds) that it waits for."""
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
                helper = await self._next_helper()
                if announce and attempt == 1:
                    yield b""
                replied = False
                if job is not None:
                    job.attach(helper.proc.pid)  # a helper is single-threaded: its pid is its thread
                try:
                    async with contextlib.aclosing(helper.stream(call, text, voice, speed)) as pieces:
                        async for piece in pieces:
                            replied = True
                            yield piece
                except _DIED as exc:
                    self._end(helper)
                    if replied or attempt == 2:
                        raise EngineUnavailable(f"flite helper died: {type(exc).__name__}") from None
                    logger.warning("flite helper died (%s); the sentence goes to a new one", type(exc).__name__)
                    continue
                except (GeneratorExit, asyncio.CancelledError):
                    # A barge-in: the helper stops and is kept; it runs at the lowest priority until
                    # it has (the drain puts it back to normal).
                    self._stop_in_place(helper, call, job)
                    job = None
                    raise
                except BaseException:
                    self._end(helper)  # failed: replaced
                    raise
                self._keep(helper)
                return
        finally:
            if job is not None:
                job.detach()
            self.busy -= 1
            del self._calls[call]

    async def _next_helper(self) -> _Helper:
        """An idle helper; else one that is finishing a cancelled request; else a new one."""
        while not self._idle and self._draining:
            await asyncio.wait(set(self._draining), return_when=asyncio.FIRST_COMPLETED)
        return self._idle.pop() if self._idle else await self._start()

    def _stop_in_place(self, helper: _Helper, call: int, job: JobPriority | None) -> None:
        """Tell `helper` to stop `call` and take it back once it has: see the module docstring."""
        if job is not None:
            job.abandon()
        try:
            helper.send(("cancel", call))
            loop = asyncio.get_running_loop()
        except (OSError, RuntimeError):  # the helper is gone, or no loop to drain it on
            if job is not None:
                job.detach()
            self._end(helper)
            return
        task = loop.create_task(self._drain(helper, job))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, helper: _Helper, job: JobPriority | None) -> None:
        """In the background; nobody awaits it, so a failure is logged here and the helper ended."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await helper.drain()
        except asyncio.CancelledError:  # the engine is closing
            self._end(helper)
            raise
        except Exception as exc:  # stalled or dead: a new helper replaces it when one is needed
            logger.info("flite helper did not finish a cancelled request (%s); ended", type(exc).__name__)
            self._end(helper)
            return
        finally:
            if job is not None:
                job.detach()  # back to the normal priority for its next request
        self._keep(helper)

    async def _start(self) -> _Helper:
        """A new helper. A caller cancelled while it starts leaves it to the pool, not orphaned:
        its start (Python and libflite, ~200 ms of CPU) is not wasted, nor left running unowned."""
        spawn = asyncio.ensure_future(self._spawn())
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            spawn.add_done_callback(self._keep_started)
            raise

    def _keep_started(self, spawn: asyncio.Future[_Helper]) -> None:
        if not spawn.cancelled() and spawn.exception() is None:
            self._keep(spawn.result())

    async def _spawn(self) -> _Helper:
        async with self._spawning:
            helper = await _Helper.start(self.library)
        self._started += 1
        self._live += 1
        logger.debug("flite helper %d started (pid %s)", self._started, helper.proc.pid)
        return helper

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
        for task in list(self._draining):
            task.cancel()  # its helper is killed
        for helper in self._idle:
            self._end(helper)
        self._idle.clear()


def _read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from `fd` (unbuffered: a cancel must be visible to `select` on the same fd)."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _read(fd: int) -> Any:
    """The next message from the parent, or None once it has closed the pipe."""
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    payload = _read_exactly(fd, _LENGTH.unpack(header)[0])
    return None if payload is None else pickle.loads(payload)


class _CancelCheck:
    """The helper's stop flag for its request in flight: is the parent's cancel for it waiting?

    Asked from flite's audio callbacks. While a request runs, the parent sends nothing but its
    cancel, so anything readable is one (or the pipe closing, which stops the request too).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._call: int | None = None
        self._stopped = False

    def start(self, call: int) -> None:
        self._call, self._stopped = call, False

    def is_set(self) -> bool:
        while not self._stopped and select.select([self._fd], [], [], 0)[0]:
            message = _read(self._fd)
            self._stopped = message is None or message == ("cancel", self._call)
        return self._stopped


def _write(stream: BinaryIO, *replies: Any) -> None:
    """The replies in one write, so the parent reads them together."""
    frames: list[bytes] = []
    for reply in replies:
        payload = pickle.dumps(reply)
        frames += (_LENGTH.pack(len(payload)), payload)
    stream.write(b"".join(frames))
    stream.flush()


def serve_forever(requests: int, replies: BinaryIO, library_path: str | None = None) -> None:
    """The helper's loop: one request at a time (from the file descriptor `requests`) until its
    parent closes the pipe."""
    from serve_app.engines.flite import FliteLibrary

    library = FliteLibrary(library_path)
    cancel = _CancelCheck(requests)
    while (message := _read(requests)) is not None:
        if message[0] == "cancel":
            continue  # its request had ended before the cancel came: nothing to stop
        call, text, voice, speed = message
        cancel.start(call)
        try:
            last = _speak(library, text, voice, speed, lambda reply: _write(replies, reply), cancel)
            # The last piece and the end in one write: the parent reads both at once and ends the
            # sentence without waiting for another read.
            _write(replies, *(() if last is None or cancel.is_set() else (last,)), ("done",))
        except Exception as exc:  # the parent turns it into an engine error
            _write(replies, ("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


def _speak(
    library: Any,
    text: str,
    voice: str,
    speed: float,
    send: Callable[[tuple[Any, ...]], None],
    cancel: _CancelCheck,
) -> tuple[Any, ...] | None:
    """The same synthesis as in-process, sent as it comes, in the same pieces; the last piece is
    returned as its reply, for the caller to send with its end."""

    def reply(item: Any) -> tuple[Any, ...]:
        return ("marks", item) if isinstance(item, list) else ("audio", *item)

    last = library.speak(text, voice, speed, lambda item: send(reply(item)), cancel)
    return None if last is None else reply(last)


def main() -> None:
    # Replies get their own copy of stdout; fd 1 then points at stderr, so nothing the library
    # prints can corrupt the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        serve_forever(sys.stdin.fileno(), replies, sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":
    main()
