"""Flite: the offline, CPU-only last resort of the fallback chain.

Two backends with the same output:
- `library` calls libflite in-process through ctypes: no process start and no voice load per
  request (the voice is registered once per replica). libflite keeps global state, so calls are
  serialised by a lock and run in a worker thread to keep the event loop free; scale with replicas.
- `binary` runs the `flite` executable with an argument list (never a shell). The text is passed
  as the value of `-t`, so a text starting with `-` is spoken, never parsed as an option.
`auto` (the default) prefers the library and falls back to the binary.

A replica uses every core: while libflite speaks one text, up to `FLITE_OVERFLOW_PROCESSES`
further requests are spoken at once by long-lived helper processes running libflite
(`serve_app.engines.flite_worker`: no process start per request, word timings kept), so
synthesis is not limited to one core by the library's lock. A helper answers with the whole
sentence, so the first byte of such a request waits for its sentence (they only run when
another request holds the library, i.e. under load).

Word timing: the library backend reads each word's start and end from the utterance flite builds
(its Segment relation carries end times, set by the duration model before any audio is made), at
the first audio callback, and yields them as `WordMark`s ahead of the audio; they are exact for
the audio that follows. The binary backend has no such access; the router then estimates timings
from the audio (serve_app.core.timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import io
import logging
import os
import shutil
import threading
import time
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol, TypeAlias

from pydantic import Field

from config.settings import settings_config
from serve_app.core.audio import StreamResampler
from serve_app.core.cpu_priority import CpuPriority, JobPriority
from serve_app.core.errors import EngineUnavailable
from serve_app.core.gate import PRIORITY_NEW, PriorityGate
from serve_app.core.timing import WordMark
from serve_app.core.voices import Catalogue, Voice, VoiceTable
from serve_app.engines.base import Engine, EngineCheck
from serve_app.engines.flite_lib import Choice, choose
from serve_app.engines.flite_worker import FliteWorkers
from serve_app.engines.spec import DeploymentDefaults, EngineContext, EngineSettings, EngineSpec

logger = logging.getLogger(__name__)

# Voices compiled into Debian's flite, and the shared library that registers each.
FLITE_VOICE_LIBRARIES: dict[str, str] = {
    "slt": "cmu_us_slt",
    "rms": "cmu_us_rms",
    "awb": "cmu_us_awb",
    "kal": "cmu_us_kal",
    "kal16": "cmu_us_kal16",
}
SPEED_RANGE = (0.25, 4.0)

VOICES = VoiceTable(
    voices=(
        Voice("slt", "flite", "SLT (US English, female)", "en-US", "female"),
        Voice("rms", "flite", "RMS (US English, male)", "en-US", "male"),
        Voice("awb", "flite", "AWB (Scottish English, male)", "en-GB", "male"),
        Voice("kal", "flite", "Kal (US English, male, 8 kHz)", "en-US", "male"),
        Voice("kal16", "flite", "Kal16 (US English, male)", "en-US", "male"),
    ),
    openai={
        "alloy": "slt", "ash": "rms", "ballad": "awb", "cedar": "rms", "coral": "slt", "echo": "rms",
        "fable": "awb", "marin": "slt", "nova": "slt", "onyx": "rms", "sage": "slt", "shimmer": "slt",
        "verse": "awb",
    },
    by_gender={"female": "slt", "male": "rms"},
)


class FliteSettings(EngineSettings):
    """`FLITE_*`: which backend, binary and default voice."""

    model_config = settings_config(env_prefix="FLITE_")

    binary: str = "flite"
    default_voice: str = "slt"
    backend: str = Field("auto", pattern="^(auto|library|binary)$")
    # Which libflite the library backend loads: `auto` (the build for this CPU in data/flite when
    # there and runnable, else the system's), `system`, or a path (serve_app.engines.flite_lib).
    library: str = "auto"
    # libflite speaks one text at a time per process; while it is busy, up to this many more
    # requests are spoken at once by long-lived helper processes, so a replica uses every core.
    # Empty: one per CPU core of the machine; 0: requests wait for libflite instead.
    overflow_processes: int | None = Field(None, ge=0)
    # Synthesis slots kept for sentences that are due (new answers' first sentences, and sentences
    # their listeners are about to need): look-ahead work with slack leaves them free, so a new
    # answer starts at once instead of waiting for a whole sentence. Used only with helpers.
    reserved_slots: int = Field(1, ge=0)
    # How much lower (a nice value) a look-ahead synthesis with slack runs than one whose listener
    # is waiting (`serve_app.core.cpu_priority`); 0 runs all alike. Needs CAP_SYS_NICE or
    # RLIMIT_NICE to move back; without, all run alike and the engine's health says why.
    lookahead_nice: int = Field(10, ge=0, le=19)
    # A sentence takes libflite well under a second; one running this long is hung, and the
    # replica's health check fails so that Serve replaces it.
    hang_timeout_s: float = Field(30.0, gt=0)


class _CstWave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _CstVoice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("features", ctypes.c_void_p)]


class _StreamingInfo(ctypes.Structure):
    _fields_ = [
        ("min_buffsize", ctypes.c_int),
        ("asc", ctypes.c_void_p),
        ("utt", ctypes.c_void_p),
        ("item", ctypes.c_void_p),
        ("userdata", ctypes.c_void_p),
    ]


# int asc(const cst_wave *w, int start, int size, int last, cst_audio_streaming_info *asi)
_STREAM_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(_CstWave), ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p
)
_STREAM_CONTINUE, _STREAM_STOP = 0, -1
_STREAM_MIN_SAMPLES = 2048  # ~128 ms at 16 kHz: the first chunk leaves long before the sentence ends
# After the first chunk, flite calls back once per this much audio: each call takes the GIL (in the
# ingress, from an event loop serving every other request) and costs Python work, so ~6x fewer
# calls than at the first chunk's size. A cancel is still seen within a second of audio, which
# flite vocodes in a few milliseconds.
_STREAM_LATER_SECONDS = 1.0
# Later chunks: big, as each is a message through every layer (a helper's pipe, the ASGI middlewares,
# a socket write, HAProxy, the client's parser). 4.5 s holds the rest of most agent sentences in one
# piece; flite makes it in tens of milliseconds, far ahead of playback, so nothing waits for it.
LATER_PIECE_SECONDS = 4.5
_DONE = object()
# Paths from a Word item to the segments around it (flite's feature-path language, as in `flite -ps`).
_WORD_START = b"R:SylStructure.daughter1.daughter1.R:Segment.p.end"
_WORD_END = b"R:SylStructure.daughtern.daughtern.R:Segment.end"

# What a backend streams: `STARTED` when this text's synthesis begins (requests queue behind
# libflite's lock), then (sample rate, PCM) pieces, and word marks where it knows them.
STARTED = b""
FlitePiece: TypeAlias = tuple[int, bytes] | WordMark | bytes


class PieceGatherer:
    """The audio of one synthesis as it should travel: the first piece at once (time to first byte),
    later ones gathered into pieces of about `LATER_PIECE_SECONDS`, because flite runs ~100x faster
    than real time and every piece costs a message (through a helper's pipe, and through Serve)."""

    def __init__(self) -> None:
        self.rate = 0  # one synthesis has one rate
        self._pending = bytearray()
        self._first = True

    def add(self, rate: int, pcm: bytes) -> tuple[int, bytes] | None:
        """A piece to send now, or None while gathering."""
        self.rate = rate
        self._pending += pcm
        if self._first or len(self._pending) >= LATER_PIECE_SECONDS * rate * 2:
            self._first = False
            return self._take()
        return None

    def rest(self) -> tuple[int, bytes] | None:
        """What is still gathered when the synthesis ends (None if nothing)."""
        return self._take() if self._pending else None

    def _take(self) -> tuple[int, bytes]:
        piece = (self.rate, bytes(self._pending))
        self._pending.clear()
        return piece


# libflite's state is the process's, not an object's: every `FliteLibrary` in a process (an engine,
# a closed engine whose cancelled synthesis is still winding down, a bench's own) takes this one lock.
_LIBFLITE_LOCK = threading.Lock()


class StopFlag(Protocol):
    """Asked at every flite audio callback (and before a queued synthesis starts): stop now?
    A `threading.Event` in-process; in a helper, a check for its parent's cancel message."""

    def is_set(self) -> bool: ...


class FliteBackend(Protocol):
    """Synthesizes one text to `STARTED`, then (sample_rate, pcm bytes) pieces and word marks."""

    kind: str

    def stream(
        self, text: str, voice: str, speed: float, job: JobPriority | None = None
    ) -> AsyncGenerator[FlitePiece, None]: ...


class FliteLibrary:
    """libflite through ctypes; raises OSError at construction when the library is missing.

    Audio streams out of the synthesis loop through flite's audio-streaming callback, so the first
    chunk of a sentence is ready after roughly a third of the time the whole sentence takes.
    """

    kind = "library"

    def __init__(self, path: str | None = None) -> None:
        # `path` (a build of libflite for this CPU, `serve_app.engines.flite_lib`) is loaded first and
        # globally, so the voices' own libraries bind to it by its soname instead of the system's.
        self.path = path
        name = path or ctypes.util.find_library("flite") or "libflite.so.1"
        # Two views of one library. The synthesis releases the GIL while it runs (CDLL); every other
        # call is microseconds of work and keeps the GIL (PyDLL): a release makes the thread queue
        # for the GIL again, behind the event loop, for up to the interpreter's switch interval
        # (5 ms). In the ingress, where the loop serves every other request, the utterance walk for
        # word timings (dozens of calls, before the first audio) lost ~250 ms that way on a busy loop.
        self._lib = ctypes.PyDLL(name, mode=ctypes.RTLD_GLOBAL)
        self._lib.flite_init()
        self._text_to_wave = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL).flite_text_to_wave
        self._text_to_wave.restype = ctypes.POINTER(_CstWave)
        self._text_to_wave.argtypes = [ctypes.c_char_p, ctypes.POINTER(_CstVoice)]
        self._lib.delete_wave.argtypes = [ctypes.POINTER(_CstWave)]
        self._lib.feat_set_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]
        self._lib.feat_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        self._lib.feat_remove.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib.new_audio_streaming_info.restype = ctypes.POINTER(_StreamingInfo)
        self._lib.audio_streaming_info_val.restype = ctypes.c_void_p
        self._lib.audio_streaming_info_val.argtypes = [ctypes.POINTER(_StreamingInfo)]
        # The utterance walk for word timings (read-only, inside the synthesis thread).
        self._lib.utt_relation.restype = ctypes.c_void_p
        self._lib.utt_relation.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib.relation_head.restype = ctypes.c_void_p
        self._lib.relation_head.argtypes = [ctypes.c_void_p]
        self._lib.item_next.restype = ctypes.c_void_p
        self._lib.item_next.argtypes = [ctypes.c_void_p]
        self._lib.item_feat_string.restype = ctypes.c_char_p
        self._lib.item_feat_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib.ffeature_float.restype = ctypes.c_float
        self._lib.ffeature_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._voices: dict[str, Any] = {}
        self._lock = _LIBFLITE_LOCK
        self._busy_since: float | None = None

    @property
    def busy(self) -> bool:
        """A synthesis holds libflite now: a new one would wait for it."""
        return self._lock.locked()

    def busy_for(self) -> float:
        """Seconds the synthesis holding libflite has run (0 when none does)."""
        since = self._busy_since
        return time.monotonic() - since if since is not None else 0.0

    def _voice(self, voice: str) -> Any:
        if voice not in self._voices:
            stem = FLITE_VOICE_LIBRARIES[voice]
            lib = ctypes.CDLL(ctypes.util.find_library(f"flite_{stem}") or f"libflite_{stem}.so.1")
            register = getattr(lib, f"register_{stem}")
            register.restype = ctypes.POINTER(_CstVoice)
            register.argtypes = [ctypes.c_char_p]
            handle = register(None)
            if not handle:
                raise EngineUnavailable(f"flite voice {voice} failed to register")
            self._voices[voice] = handle
        return self._voices[voice]

    def words(self, utterance: int | None) -> list[WordMark]:
        """Every word of an utterance with its start and end (seconds), from its segment times."""
        marks: list[WordMark] = []
        relation = self._lib.utt_relation(utterance, b"Word") if utterance else None
        item = self._lib.relation_head(relation) if relation else None
        while item:
            name = self._lib.item_feat_string(item, b"name") or b""
            start = float(self._lib.ffeature_float(item, _WORD_START))
            end = float(self._lib.ffeature_float(item, _WORD_END))
            marks.append(WordMark(name.decode("utf-8", "replace"), round(start, 4), round(max(start, end), 4)))
            item = self._lib.item_next(item)
        return marks

    def _synthesize_blocking(
        self,
        text: str,
        voice: str,
        speed: float,
        emit: Callable[[int, bytes], None],
        cancelled: StopFlag,
        emit_words: Callable[[list[WordMark]], None] | None = None,
        emit_started: Callable[[], None] | None = None,
    ) -> None:
        """Runs in a worker thread; `emit_started` is called once the lock is ours (queueing is
        over), `emit` from flite's callback for every piece, and `emit_words` once, before the
        first piece, with the utterance's word timings."""
        words_sent = emit_words is None

        def on_audio(wave_ptr: Any, start: int, size: int, _last: int, asi: Any) -> int:
            nonlocal words_sent
            if cancelled.is_set():
                return _STREAM_STOP
            info = ctypes.cast(asi, ctypes.POINTER(_StreamingInfo)).contents
            if not words_sent and emit_words is not None:
                words_sent = True
                try:
                    emit_words(self.words(info.utt))
                except Exception as exc:  # timings are a bonus: the audio must go on (the router estimates)
                    logger.debug("flite word timings unavailable: %s", type(exc).__name__)
            if size > 0:
                w = wave_ptr.contents
                address = ctypes.addressof(w.samples.contents) + start * 2
                emit(int(w.sample_rate), ctypes.string_at(address, size * 2))
                # flite reads the size before every frame: from now on, fewer and larger calls.
                info.min_buffsize = max(_STREAM_MIN_SAMPLES, int(w.sample_rate * _STREAM_LATER_SECONDS))
            return _STREAM_CONTINUE

        callback = _STREAM_CALLBACK(on_audio)
        with self._lock:
            if cancelled.is_set():
                return  # cancelled while queued behind another synthesis: do not start
            self._busy_since = time.monotonic()
            try:
                self._run_locked(text, voice, speed, callback, cancelled, emit_started)
            finally:
                self._busy_since = None

    def _run_locked(
        self,
        text: str,
        voice: str,
        speed: float,
        callback: Any,
        cancelled: StopFlag,
        emit_started: Callable[[], None] | None,
    ) -> None:
        """One synthesis, with libflite's lock held."""
        if emit_started is not None:
            emit_started()
        handle = self._voice(voice)
        features = handle.contents.features
        self._lib.feat_set_float(features, b"duration_stretch", 1.0 / speed)
        info = self._lib.new_audio_streaming_info()
        info.contents.min_buffsize = _STREAM_MIN_SAMPLES
        info.contents.asc = ctypes.cast(callback, ctypes.c_void_p)
        self._lib.feat_set(features, b"streaming_info", self._lib.audio_streaming_info_val(info))
        try:
            wav = self._text_to_wave(text.encode("utf-8", "replace"), handle)
        finally:
            # Frees the streaming info; the voice must not keep a pointer to our callback.
            self._lib.feat_remove(features, b"streaming_info")
        if wav:
            self._lib.delete_wave(wav)
        elif not cancelled.is_set():
            raise EngineUnavailable("flite returned no wave")

    def speak(
        self,
        text: str,
        voice: str,
        speed: float,
        send: Callable[[FlitePiece | list[WordMark]], None],
        cancelled: StopFlag,
        started: bool = False,
    ) -> tuple[int, bytes] | None:
        """One synthesis as it travels, blocking (a worker thread, or a helper's loop): `STARTED`
        when the lock is ours (if `started`), the word marks as a list, then the audio in the
        pieces `PieceGatherer` makes. Gathering here, before anything crosses to the event loop or
        a pipe, keeps that to a few messages a sentence instead of one per flite callback.

        The last piece is returned, not sent: the caller sends it in one message with its end of
        synthesis, so the receiver sees the end together with the audio (the resampler's tail then
        joins the last chunk instead of costing a chunk of its own)."""
        gathered = PieceGatherer()

        def emit(rate: int, pcm: bytes) -> None:
            if (piece := gathered.add(rate, pcm)) is not None:
                send(piece)

        self._synthesize_blocking(
            text, voice, speed, emit, cancelled, send, (lambda: send(STARTED)) if started else None
        )
        return gathered.rest()

    async def stream(
        self, text: str, voice: str, speed: float, job: JobPriority | None = None
    ) -> AsyncGenerator[FlitePiece, None]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        mailbox = _Mailbox(asyncio.get_running_loop(), queue)
        cancelled = threading.Event()

        def work() -> None:
            """The synthesis thread: its last piece and its end (with its error, if any) go as one."""
            if job is not None:
                job.attach(threading.get_native_id())
            try:
                last = self.speak(text, voice, speed, mailbox.send, cancelled, True)
            except BaseException as exc:  # delivered to the generator, which re-raises it
                mailbox.send((_DONE, exc))
                return
            finally:
                if job is not None:
                    job.detach()
            mailbox.send(*(() if last is None else (last,)), (_DONE, None))

        worker = asyncio.ensure_future(asyncio.to_thread(work))
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, tuple) and item[0] is _DONE:
                    finished = True
                    if item[1] is not None:
                        raise item[1]
                    break
                if isinstance(item, list):  # the word timings, ahead of the audio they describe
                    for mark in item:
                        yield mark
                    continue
                yield item  # `STARTED`, or a (rate, pcm) piece
        finally:
            cancelled.set()
            # Not waited for. After its end the thread has nothing left to do. Left early (a
            # barge-in), it stops at flite's next audio callback, which can be the rest of a long
            # sentence's front end (tens of milliseconds): the caller need not wait for that to say
            # "cancelled". Until the thread lets go of libflite, `busy` stays true, so new requests
            # go to a helper meanwhile (or wait for libflite's lock, and say so with `STARTED`).
            if not finished:
                worker.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A synthesis thread nobody waits for: its outcome was delivered through the mailbox already."""
    if not future.cancelled():
        future.exception()


class _Mailbox:
    """Items from a synthesis thread to a queue on the event loop, several per wake-up: a thread
    that sends while the loop has not yet taken its earlier items adds to them instead of waking
    the loop again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._queue = queue
        self._items: list[Any] = []
        self._lock = threading.Lock()

    def send(self, *items: Any) -> None:
        with self._lock:
            wake = not self._items
            self._items.extend(items)
        if wake:
            self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for item in items:
            self._queue.put_nowait(item)


class FliteBinary:
    """The `flite` executable, started per request with an argument list."""

    kind = "binary"

    def __init__(self, binary: str = "flite") -> None:
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(f"flite binary '{binary}' not found on PATH (apt-get install flite)")
        self.path = path

    def argv(self, text: str, voice: str, speed: float) -> list[str]:
        """The exact argument vector; `-t` consumes the next element, so `-x` texts stay text."""
        return [
            self.path, "-voice", voice, "--setf", f"duration_stretch={1.0 / speed:.4f}",
            "-o", "/dev/stdout", "-t", text,
        ]

    async def stream(
        self, text: str, voice: str, speed: float, job: JobPriority | None = None
    ) -> AsyncGenerator[FlitePiece, None]:
        """`job` is not applied: this backend runs without synthesis slots, so nothing is look-ahead
        waiting beside due work in this replica's queue."""
        yield STARTED  # one process per request: nothing to queue behind
        out, err, code = await self._run(self.argv(text, voice, speed))
        if code != 0 or len(out) < 44:
            raise EngineUnavailable(f"flite exited {code}: {err.decode(errors='replace')[:200]}")
        with wave.open(io.BytesIO(out)) as wav:
            yield wav.getframerate(), wav.readframes(wav.getnframes())

    @staticmethod
    async def _run(argv: list[str]) -> tuple[bytes, bytes, int | None]:
        """Run flite with a real pipe as its stdout: flite opens `/dev/stdout` by name, which
        fails on the socket pairs some event loops (uvloop, in Serve replicas) give children."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=write_fd, stderr=asyncio.subprocess.PIPE
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        try:
            out, (_, err) = await asyncio.gather(reader.read(), proc.communicate())
            return out, err or b"", proc.returncode
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        finally:
            transport.close()


class FliteHelpers:
    """libflite in helper processes (`serve_app.engines.flite_worker`) as a backend: streamed as
    in-process, word marks first."""

    kind = "helpers"

    def __init__(self, workers: FliteWorkers) -> None:
        self.workers = workers

    def stream(
        self, text: str, voice: str, speed: float, job: JobPriority | None = None
    ) -> AsyncGenerator[FlitePiece, None]:
        # The workers' own generator, not one wrapped around it, so that closing it frees the
        # helper at once. `STARTED` (b"") once a helper has the request: a helper still starting
        # is queueing.
        return self.workers.stream(text, voice, speed, announce=True, job=job)


class FliteEngine(Engine):
    """Flite as an `Engine`: one sentence in, its PCM out."""

    name = "flite"
    sample_rate = 16000
    queues_work = True  # libflite is serialised per process: requests wait for its lock
    accepts_priority = True  # with helpers, waiting requests take synthesis slots by priority

    def __init__(
        self,
        *,
        binary: str = "flite",
        default_voice: str = "slt",
        backend: str = "auto",
        library: str = "auto",
        catalogue: Catalogue | None = None,
        overflow_processes: int = 0,
        reserved_slots: int = 1,
        hang_timeout_s: float = 30.0,
        cpu_priority: CpuPriority | None = None,
    ) -> None:
        self.catalogue = catalogue or Catalogue({self.name: VOICES})
        self.default_voice = default_voice
        self._problem: str | None = None
        self._backend: FliteBackend | None = None
        self._helpers: FliteHelpers | None = None
        self.hang_timeout_s = hang_timeout_s
        errors: list[str] = []
        self.library: Choice | None = None
        if backend in ("auto", "library"):
            try:
                self.library = choose(library)
                self._backend = FliteLibrary(self.library.path)
            except OSError as exc:
                errors.append(f"libflite: {exc}")
        if self._backend is None and backend in ("auto", "binary"):
            try:
                self._backend = FliteBinary(binary)
            except FileNotFoundError as exc:
                errors.append(str(exc))
        if self._backend is None:
            self._problem = "; ".join(errors) or "no flite backend"
            logger.warning("flite unavailable: %s", self._problem)
        elif errors:
            logger.warning("flite: %s; speaking with the %s backend", "; ".join(errors), self._backend.kind)
        else:
            logger.debug("flite backend: %s", self._backend.kind)
        if isinstance(self._backend, FliteLibrary) and overflow_processes > 0:
            self._helpers = FliteHelpers(FliteWorkers(overflow_processes, self._backend.path))
        # The in-process library and each helper: one synthesis slot each; the reserve (at most all
        # but one slot) is for work that is due (`serve_app.core.gate`).
        self._slots = (
            PriorityGate(1 + overflow_processes, reserve=min(reserved_slots, overflow_processes))
            if self._helpers is not None
            else None
        )
        # Look-ahead syntheses yield the cores to due ones (`serve_app.core.cpu_priority`); only
        # where several run at once, i.e. with helpers.
        self._cpu = cpu_priority if self._helpers is not None else None

    @property
    def backend(self) -> str | None:
        return self._backend.kind if self._backend else None

    def voices(self) -> list[Voice]:
        ids = [self.default_voice] + [v for v in FLITE_VOICE_LIBRARIES if v != self.default_voice]
        catalogued = {v.id: v for v in self.catalogue.voices_for(self.name)}
        return [catalogued.get(v, Voice(v, self.name, v)) for v in ids]

    async def check(self) -> EngineCheck:
        if self._backend is None:
            return EngineCheck(self.name, False, self._problem)
        details: dict[str, Any] = {"backend": self._backend.kind}
        if self.library is not None and isinstance(self._backend, FliteLibrary):
            details["library"] = self.library.reason
        if self._helpers is not None:
            workers = self._helpers.workers
            details["overflow_processes"] = {"limit": workers.size, "busy": workers.busy}
        if self._cpu is not None:
            cpu = self._cpu
            details["lookahead_priority"] = f"nice +{cpu.lookahead_nice}" if cpu.enabled else cpu.problem
        return EngineCheck(self.name, True, None, details)

    async def health(self) -> str | None:
        """Serve's health probe: a synthesis (in-process or in a helper) running past the hang
        timeout means a stuck libflite, which only a new replica cures. Requests queued behind it
        never start, so the router only sees them as busy: this is what gets the replica replaced."""
        held = self._backend.busy_for() if isinstance(self._backend, FliteLibrary) else 0.0
        helper = self._helpers.workers.longest_call() if self._helpers is not None else 0.0
        longest = max(held, helper)
        if longest > self.hang_timeout_s:
            return f"a flite synthesis has run for {longest:.0f}s (hung)"
        return None

    def _pick(self) -> FliteBackend:
        """libflite, unless it is busy and a helper process is free."""
        assert self._backend is not None
        library = self._backend
        helpers = self._helpers
        if helpers is not None and isinstance(library, FliteLibrary) and library.busy and helpers.workers.free:
            return helpers
        return library

    async def synthesize(
        self,
        text: str,
        voice: str | None = None,
        *,
        language: str | None = None,
        speed: float = 1.0,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark]:
        if self._backend is None:
            raise EngineUnavailable(self._problem or "flite unavailable")
        self.check_speed(speed, SPEED_RANGE)
        chosen = self.resolve_voice(voice)
        # Lengths only: per-sentence excerpts would add up to the whole user text in a DEBUG log.
        logger.debug("flite synthesize voice=%s chars=%d", chosen, len(text))
        if self._helpers is not None:
            self._helpers.workers.prestart()  # once: the helpers are loaded before a burst needs them
        job = self._cpu.job(priority) if self._cpu is not None else None
        async with (
            self._slot(priority),
            contextlib.aclosing(self._speak(self._pick(), text, chosen, speed, job)) as pieces,
        ):
            with job.timed() if job is not None else contextlib.nullcontext():
                async for piece in pieces:
                    yield piece

    def close(self) -> None:
        """End the idle helper processes now (a helper also ends by itself when this process does)."""
        if self._helpers is not None:
            self._helpers.workers.close()

    @contextlib.asynccontextmanager
    async def _slot(self, priority: int) -> AsyncIterator[None]:
        """With helpers, requests take a synthesis slot (libflite or a helper) by priority, then
        arrival (`serve_app.core.gate`), so none waits on libflite's lock while a helper is idle and
        answers already playing go before new ones; without, libflite's lock is the queue."""
        if self._slots is None:
            yield
            return
        async with self._slots.hold(priority):
            yield

    async def _speak(
        self, backend: FliteBackend, text: str, chosen: str, speed: float, job: JobPriority | None
    ) -> AsyncGenerator[bytes | WordMark, None]:
        resampler: StreamResampler | None = None
        # Closed here, not left to the garbage collector: a caller that leaves (a barge-in) stops
        # the synthesis and frees its slot before this returns.
        async with contextlib.aclosing(backend.stream(text, chosen, speed, job)) as pieces:
            async for piece in pieces:
                if isinstance(piece, WordMark | bytes):
                    yield piece  # word marks are seconds, the same at any rate; `STARTED` is the start
                    continue
                rate, pcm = piece
                if rate != self.sample_rate:
                    # kal is an 8 kHz voice: resample here so the engine keeps one advertised rate.
                    resampler = resampler or StreamResampler(rate, self.sample_rate)
                    pcm = resampler.feed(pcm)
                if pcm:
                    yield pcm
        if resampler is not None:
            tail = resampler.flush()
            if tail:
                yield tail


def _build(settings: FliteSettings, context: EngineContext) -> FliteEngine:
    overflow = settings.overflow_processes
    return FliteEngine(
        binary=settings.binary,
        default_voice=settings.default_voice,
        backend=settings.backend,
        library=settings.library,
        catalogue=context.catalogue,
        overflow_processes=(os.cpu_count() or 1) if overflow is None else overflow,
        reserved_slots=settings.reserved_slots,
        hang_timeout_s=settings.hang_timeout_s,
        cpu_priority=CpuPriority(settings.lookahead_nice),
    )


ENGINE = EngineSpec(
    name="flite",
    title="CMU Flite: offline, CPU-only, robotic but always there (the last resort)",
    model_id="flite",
    settings=FliteSettings,
    build=_build,
    voices=VOICES,
    speed_range=SPEED_RANGE,
    word_timing="exact",  # from the utterance (library backend); the binary backend is estimated
    # Its synthesis (~55 ms of CPU a sentence) costs about what a hop through Serve does, so its
    # callers host it (libflite plus helper processes in each ingress replica); FLITE_IN_PROCESS=false
    # gives it a deployment with these defaults.
    in_process=True,
    deployment=DeploymentDefaults(num_cpus=0.2, max_ongoing_requests=32),
    honours={
        "speed": "duration stretch",
        "instructions": "speed cues only (e.g. 'slowly', 'quickly'), applied by the router",
    },
)
