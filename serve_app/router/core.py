"""FallbackRouter: one request in, one ordered stream of PCM out, across a chain of engines.

A plain object composed around `EngineClient`s (deployment handles in the cluster), living in each
ingress replica and each agent actor: no extra Serve hop per chunk. Many requests share one router
on one event loop; all shared state is touched only from that loop, without awaits in between.

What it does, and why:
- Text is split into sentences; up to `lookahead` following sentences are synthesized while the
  current one streams, so long inputs start as fast as short ones and play without gaps. Look-ahead
  begins once the answer's first audio is out: until then only its first sentence takes engine
  capacity, so a burst of new answers all get their first sentences started.
- Admission (overload never cuts a stream): a new answer's first sentence waits at most
  `admission_wait_s` for an engine to start it, then the request is refused before its first byte
  (503 + Retry-After); the later sentences of an answer already playing wait as long as they must,
  ahead of new answers (in the router's own queue, and in engines that queue work, through
  `priority`: `serve_app.core.gate`).
- Each sentence walks the chain. Engines whose breaker is open are skipped at no cost. A strike is
  an engine error, no first byte within `ttfb_timeout_s`, a stall between chunks longer than
  `stall_timeout_s`, or a stream with no audio at all. `max_strikes` consecutive strikes open the
  breaker (`serve_app.core.breaker`).
- Recovery never waits for user traffic (`recovery.py`): a background task probes an open engine
  with a fixed phrase when its cooldown ends.
- A busy engine is not a broken one: an `EngineBusy` answer (the engine's queue is full) moves the
  sentence on without a strike, and an engine that signals it has started the work (an empty first
  chunk) gets its first-byte budget from that moment, so time spent queued is never a timeout.
- Failover happens at sentence boundaries and mid-sentence: if an engine fails after sending part
  of a sentence, the next engine goes on from the first word the caller has not heard in full when
  the failed engine said when its words were spoken (word marks), and otherwise speaks that
  sentence again from its start (audio of the failed attempt that the caller has not read yet is
  discarded either way). No sentence is ever dropped: it is spoken in full by some engine or the
  request ends with `AllEnginesFailed` (the ingress answers 503 before the first byte, and aborts
  the chunked response after it). A sentence of an answer already playing that every engine failed
  goes round the engines whose breakers are still closed once more before that (`_OWED_ATTEMPTS`):
  one timeout of the only engine on a starved machine must not cut an answer being heard.
- Text can arrive while audio leaves (`stream`: the realtime WebSocket): sentences join the
  request as they are completed and get the same look-ahead; closing the stream (a barge-in)
  cancels every sentence in flight, which cancels the engines' work through their handles.
- Word timings (`SpeechRequest.timestamps`): engines with alignment yield `WordMark`s, which are
  mapped onto the sentence's words (`serve_app.core.timing.WordAligner`); for the others, timings
  are estimated from the audio of the sentence once it is complete. A word is handed out with the
  chunk that completes it, in seconds from the start of the stream's audio: the audio of earlier
  sentences, and of a failed attempt's heard part, comes first, so times only grow.
- Spoken form (`SpeechRequest.normalize`): each sentence is turned into its spoken form
  (`serve_app.core.spoken.to_spoken`) by its own producer task, so only the first sentence's
  normalisation adds to the time to first byte; `stream` callers may hand over sentences already
  normalised (`Sentence`: the realtime socket does it while the text arrives).
- `instructions`: speed cues scale `speed` for every engine (within its range); engines that
  accept instructions also get the text (e.g. pitch and volume).
- Within one request, an engine that failed a sentence is tried last for the following sentences
  (no strike, no cost), so the voice does not flip back and forth mid-answer.
- Caller errors (`InvalidInput`: bad voice, empty text) are re-raised and never strikes; neither is
  a request cancelled by its caller.
- Per-engine concurrency limit: a full engine is busy, not broken. The sentence skips to the next
  engine in the chain without a strike (latency matters more than voice for realtime agents).
  Only when every candidate is full does it queue, for at most `ttfb_timeout_s`, for the first
  slot to free up, then fails with `EnginesBusy` (503).
- When every breaker is open the open engines are still tried, in chain order, as a last resort:
  a request that might succeed is better than a certain 503. The same holds after all closed
  engines failed a sentence. An `engine` pinned by the request is used alone, breaker or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from config.logging import truncate
from serve_app.core.audio import StreamResampler, pcm_duration
from serve_app.core.breaker import BreakerConfig, BreakerState, CircuitBreaker
from serve_app.core.errors import (
    AllEnginesFailed,
    EmptyAudio,
    EngineBusy,
    EnginesBusy,
    FirstByteTimeout,
    InvalidInput,
    ServiceError,
    StallTimeout,
    UnknownEngine,
    reason_of,
)
from serve_app.core.gate import PRIORITY_NEW, PRIORITY_PLAYING
from serve_app.core.replica import ReplicaTag
from serve_app.core.spoken import to_spoken, unchanged_spoken
from serve_app.core.style import parse_instructions
from serve_app.core.text import normalize, split_sentences
from serve_app.core.timing import TimedWord, WordAligner, WordMark, estimate_words, resume_offset
from serve_app.engines.base import EngineCheck
from serve_app.metrics import RouterMetrics
from serve_app.router.admission import CapacitySignal, Limiter
from serve_app.router.clients import EngineClient
from serve_app.router.recovery import Recovery
from serve_app.router.shared import BreakerSharing, LocalOnly
from serve_app.router.status import EngineSlot, engine_status
from serve_app.router.types import AudioChunk, RouterConfig, Sentence, SpeechRequest

logger = logging.getLogger(__name__)

# A word counts as heard when the audio read reaches its end, give or take this much.
_HEARD_SLACK_S = 0.005
# A later sentence is due this long before its listener runs out of audio: time for its own
# synthesis under load. And no engine speaks faster than this, so a sentence's length in characters
# gives a floor on how long it plays before its audio is known (people speak ~15 a second).
_PLAYBACK_MARGIN_S = 1.0
_FASTEST_CHARS_PER_S = 25.0
# How often a sentence waiting for capacity looks again: after a busy answer from an engine's (or
# Serve's) queue, which frees no slot of ours to wake it; and at most, in case a wake-up is missed.
_BUSY_POLL_S = 0.1
_OWED_POLL_S = 1.0
# An owed sentence (its answer is playing) that every engine has failed gives each engine whose
# breaker is still closed another try, up to this many attempts in all: a one-off failure (a
# timeout on a starved machine, a crashed worker process) of the only engine left must not cut an
# answer the listener is already hearing. The breaker still opens after `max_strikes` in a row.
_OWED_ATTEMPTS = 2


@dataclass
class _SentenceJob:
    """Audio (and word timings) of one sentence as it is produced; `cursor` is how far the consumer has read.

    Times here are seconds from the start of the sentence's audio. Each attempt (one engine) speaks
    `spoken[attempt_start:]` and its audio begins after everything already in `chunks`.
    """

    index: int
    text: str  # as written
    sample_rate: int  # of the chunks (the request's)
    spoken: str = ""  # what the engines are asked to say
    chunks: list[AudioChunk] = field(default_factory=list)
    cursor: int = 0
    done: bool = False
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    heard_s: float = 0.0  # audio the consumer has read
    words: list[TimedWord] = field(default_factory=list)
    released: int = 0  # words the consumer has heard in full
    attempt_start: int = 0  # where the current attempt's text starts in `spoken`
    attempt_base_s: float = 0.0  # where its audio starts
    attempt_first_chunk: int = 0
    attempt_first_word: int = 0
    attempt_marked: bool = False  # the engine sent word marks
    aligner: WordAligner | None = None

    def push(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)
        self.changed.set()

    @property
    def audio_s(self) -> float:
        """Seconds of audio in `chunks`."""
        return sum(pcm_duration(len(c.pcm), self.sample_rate) for c in self.chunks)

    def plays_at_least_s(self, speed: float) -> float:
        """How long this sentence plays, at least: its audio when done, else the longer of its
        audio so far and its length spoken faster than any engine speaks."""
        if self.done:
            return self.audio_s
        return max(self.audio_s, len(self.text) / (_FASTEST_CHARS_PER_S * max(speed, 0.25)))

    @property
    def attempt_text(self) -> str:
        return self.spoken[self.attempt_start :]

    def begin_attempt(self) -> None:
        """A new engine starts where the audio so far ends (all of it heard: see `restart`)."""
        self.attempt_base_s = self.audio_s
        self.attempt_first_chunk = len(self.chunks)
        self.attempt_first_word = len(self.words)
        self.attempt_marked = False
        self.aligner = WordAligner(self.attempt_text)

    def mark(self, mark: WordMark) -> None:
        """An engine's word mark: aligned to the attempt's text, placed in the sentence's time."""
        self.attempt_marked = True
        if self.aligner is not None:
            for word in self.aligner.feed(mark):
                self.words.append(word.shifted(self.attempt_base_s, self.attempt_start))

    def end_attempt(self, estimate: bool) -> None:
        """The attempt spoke its text: its last word, or (no marks) estimated timings when asked."""
        if self.attempt_marked and self.aligner is not None:
            self.words.extend(w.shifted(self.attempt_base_s, self.attempt_start) for w in self.aligner.finish())
        elif estimate:
            pcm = b"".join(c.pcm for c in self.chunks[self.attempt_first_chunk :])
            for word in estimate_words(self.attempt_text, pcm, self.sample_rate):
                self.words.append(word.shifted(self.attempt_base_s, self.attempt_start))
        self.changed.set()

    def restart(self) -> tuple[int, bool]:
        """After a failed attempt: drop what the consumer has not read, and choose where to go on.

        Returns (chunks already heard, whether the whole text was heard). When the failed engine
        marked its words and some were heard in full, the next attempt starts at the next word;
        otherwise it says the failed attempt's text again.
        """
        del self.chunks[self.cursor :]
        heard_here = self.words[self.attempt_first_word : self.released] if self.attempt_marked else []
        del self.words[self.released :]
        self.aligner = None
        offset = resume_offset(self.spoken, heard_here)
        if offset is not None:
            rest = self.spoken[offset:]
            if not any(ch.isalnum() for ch in rest):
                return self.cursor, True
            self.attempt_start = offset
        return self.cursor, False

    def read(self, chunk: AudioChunk) -> list[TimedWord]:
        """The consumer read `chunk`: the words it completes."""
        self.heard_s += pcm_duration(len(chunk.pcm), self.sample_rate)
        first = self.released
        while self.released < len(self.words) and self.words[self.released].end_s <= self.heard_s + _HEARD_SLACK_S:
            self.released += 1
        return self.words[first : self.released]

    def rest(self) -> list[TimedWord]:
        """At the end of the sentence: every word not handed out yet, kept within its audio."""
        rest = self.words[self.released :]
        self.released = len(self.words)
        end = self.heard_s
        return [TimedWord(w.word, min(w.start_s, end), min(w.end_s, end), w.offset) for w in rest]

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self.changed.set()


@dataclass
class _RequestState:
    """Per-request memory: engines that failed a sentence of this request are tried last; when
    its first audio went out, and its sentences (for when each later one is needed)."""

    avoid: set[str] = field(default_factory=set)
    first_audio_at: float | None = None  # time.monotonic()
    jobs: list[_SentenceJob] = field(default_factory=list)


@dataclass
class _Clock:
    """Where the next sentence starts in the stream's audio, and the last word start handed out."""

    offset_s: float = 0.0
    last_start_s: float = 0.0

    def marks(self, words: list[TimedWord]) -> tuple[WordMark, ...]:
        """Sentence times to stream times, never going back (the contract is monotonic)."""
        out: list[WordMark] = []
        for word in words:
            mark = word.mark(self.offset_s)
            start = max(mark.start_s, self.last_start_s)
            self.last_start_s = start
            out.append(WordMark(mark.word, start, max(start, mark.end_s)))
        return tuple(out)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, FirstByteTimeout):
        return "timeout"
    if isinstance(exc, StallTimeout):
        return "stall"
    if isinstance(exc, EmptyAudio):
        return "empty"
    return "error"


def _of(total: int | None) -> str:
    return f" of {total}" if total is not None else ""


async def _iterate(items: list[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


class FallbackRouter:
    """Speaks text through the first healthy engine of the chain, sentence by sentence."""

    def __init__(
        self,
        clients: dict[str, EngineClient],
        config: RouterConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: BreakerSharing | None = None,
    ) -> None:
        """`shared`: links the breakers to the cluster's (`serve_app.router.shared`); None: own only."""
        self.config = config or RouterConfig()
        chain = [name for name in self.config.chain if name in clients] if self.config.chain else list(clients)
        if not chain:
            raise ValueError("the router needs at least one engine from the chain")
        breaker_config = BreakerConfig(self.config.max_strikes, self.config.cooldown_s, self.config.max_cooldown_s)
        self.chain = tuple(chain)
        self.metrics = RouterMetrics()
        self._slots: dict[str, EngineSlot] = {}
        for name in chain:
            breaker = CircuitBreaker(breaker_config, clock=clock, on_change=self._listener(name))
            limits = self.config.limits_for(name)
            self._slots[name] = EngineSlot(name, clients[name], breaker, Limiter(limits.concurrency), limits)
        self._capacity = CapacitySignal()
        self._owed = 0  # sentences of admitted requests waiting for capacity (see `_acquire_next`)
        self._warming: asyncio.Task[None] | None = None
        self._shared: BreakerSharing = shared or LocalOnly()
        self._shared.attach({n: s.breaker for n, s in self._slots.items() if s.client.deployed})
        self._recovery = Recovery(self._slots, self._probe_attempt, self._shared)
        for name in chain:
            client = clients[name]
            if not client.deployed:
                self._slots[name].breaker.force_open(getattr(client, "reason", None) or "not deployed")

    # ------------------------------------------------------------------ public API
    def validate(self, request: SpeechRequest) -> None:
        """Raise for what is wrong with the request besides its text: engine, speed, availability."""
        if request.engine is not None and request.engine not in self._slots:
            raise UnknownEngine(f"unknown engine '{request.engine[:40]}'; available: {', '.join(self.chain)}")
        low, high = self._speed_range(request.engine)
        if not low <= request.speed <= high:
            raise InvalidInput(f"speed must be between {low:g} and {high:g}", param="speed")
        if request.engine is not None and not self._slots[request.engine].client.deployed:
            reason = self._slots[request.engine].breaker.last_error
            raise AllEnginesFailed(f"engine {request.engine} is not deployed: {reason}")

    async def synthesize(self, request: SpeechRequest) -> AsyncGenerator[AudioChunk, None]:
        """Stream the whole text as PCM chunks at `request.sample_rate`, in order.

        Raises `InvalidInput` for the caller's mistakes and `AllEnginesFailed` when a sentence
        cannot be spoken by any engine (possibly after earlier sentences were yielded).
        """
        text = normalize(request.text, max_chars=self.config.max_input_chars)
        self.validate(request)
        sentences = split_sentences(text, max_chars=self.config.sentence_max_chars)
        logger.debug("speech request: %d sentences, text=%s", len(sentences), truncate(text))
        async for chunk in self._run(request, _iterate(sentences), len(sentences)):
            yield chunk

    async def stream(
        self, request: SpeechRequest, sentences: AsyncIterator[str | Sentence]
    ) -> AsyncGenerator[AudioChunk, None]:
        """Like `synthesize`, for sentences that arrive while audio is produced (the realtime socket).

        Each sentence must be speakable text (normalised and split by the caller: see
        `serve_app.core.text.SentenceBuffer`); a `Sentence` also carries its spoken form, which is
        then spoken as it is. The stream ends when `sentences` ends and its audio is out; closing it
        early cancels every sentence in flight.
        """
        self.validate(request)
        async for chunk in self._run(request, sentences, None):
            yield chunk

    async def speak(self, request: SpeechRequest) -> tuple[bytes, list[str]]:
        """Whole-buffer convenience: all PCM and the engines used, in order."""
        pcm = bytearray()
        engines: list[str] = []
        async for chunk in self.synthesize(request):
            pcm.extend(chunk.pcm)
            if chunk.pcm and (not engines or engines[-1] != chunk.engine):
                engines.append(chunk.engine)
        return bytes(pcm), engines

    async def engines_status(self) -> list[dict[str, Any]]:
        """Per engine: availability, breaker, counters and time-to-first-byte percentiles."""
        self.start()
        slots = [self._slots[name] for name in self.chain]
        checks = await asyncio.gather(*(self._check(slot) for slot in slots))
        return [
            engine_status(slot, check, self._shared.shared, self._shared.view(slot.name))
            for slot, check in zip(slots, checks, strict=True)
        ]

    async def voices(self) -> list[dict[str, Any]]:
        """Voices of every deployed engine; an engine that does not answer in time is left out."""

        async def one(client: EngineClient) -> list[dict[str, Any]]:
            if not client.deployed:
                return []
            try:
                voices = await asyncio.wait_for(client.voices(), self.config.status_timeout_s)
            except Exception as exc:  # a sick engine must not break the voice list
                logger.debug("voices of %s unavailable: %s", client.name, type(exc).__name__)
                return []
            return [v.to_dict() for v in voices]

        lists = await asyncio.gather(*(one(self._slots[name].client) for name in self.chain))
        return [voice for voices in lists for voice in voices]

    def breaker(self, name: str) -> CircuitBreaker:
        return self._slots[name].breaker

    def start(self) -> None:
        """Start the background probe loop on the running loop (idempotent; no-op without a loop),
        and warm every engine's client once (its info, and through it Serve's handle), so the first
        user request does not pay for a cold handle."""
        self._recovery.start()
        self._shared.start()
        if self._warming is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the first request starts it
                self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        async def one(slot: EngineSlot) -> None:
            with contextlib.suppress(Exception):  # a missing engine is the probes' and checks' business
                await asyncio.wait_for(slot.client.sample_rate(), slot.limits.ttfb_timeout_s)

        await asyncio.gather(*(one(s) for s in self._slots.values() if s.client.deployed))

    async def aclose(self) -> None:
        """Stop the probe loop and any probe in flight."""
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.wait({self._warming})
        await self._recovery.aclose()
        await self._shared.aclose()

    def _speed_range(self, engine: str | None) -> tuple[float, float]:
        """The speeds every engine the request may reach accepts (so a fallback never refuses it)."""
        names = [engine] if engine else list(self.chain)
        ranges = [self.config.speed_ranges.get(n, (0.25, 4.0)) for n in names]
        return max(r[0] for r in ranges), min(r[1] for r in ranges)

    def _speed_for(self, name: str, request: SpeechRequest) -> float:
        """The request's speed with the instructions' speed cue, kept within the engine's range."""
        factor = parse_instructions(request.instructions).speed
        if factor == 1.0:
            return request.speed
        low, high = self.config.speed_ranges.get(name, (0.25, 4.0))
        return min(max(request.speed * factor, low), high)

    # ------------------------------------------------------------------ streaming
    async def _run(
        self, request: SpeechRequest, sentences: AsyncIterator[str | Sentence], total: int | None
    ) -> AsyncIterator[AudioChunk]:
        """Sentences in, chunks out in order; up to `lookahead` sentences ahead are synthesized."""
        self.start()
        await self._shared.ready()  # a new router starts from the cluster's breakers (first request only)
        state = _RequestState()
        jobs = state.jobs
        arrived = asyncio.Event()
        reading = 0  # the sentence the consumer is on; the feeder starts work up to lookahead past it
        admitted = False  # the first audio is out: from now on this answer's sentences are owed

        def launch(upto: int) -> None:
            # Before the first audio only the first sentence runs: look-ahead of an answer nobody
            # hears yet must not take engine capacity from other answers' first sentences.
            for job in jobs[reading : (upto if admitted else 0) + 1]:
                if job.task is None:
                    job.task = asyncio.create_task(self._produce(job, total, request, state))

        async def feed() -> None:
            async for item in sentences:
                if isinstance(item, Sentence):
                    jobs.append(_SentenceJob(len(jobs), item.text, request.sample_rate, spoken=item.spoken))
                else:
                    jobs.append(_SentenceJob(len(jobs), item, request.sample_rate))
                launch(reading + self.config.lookahead)
                arrived.set()

        feeder = asyncio.create_task(feed())
        clock = _Clock()
        try:
            while True:
                while reading >= len(jobs):
                    if feeder.done():
                        feeder.result()  # the source's own error, if it failed
                        return
                    arrived.clear()
                    waiter = asyncio.ensure_future(arrived.wait())
                    try:
                        await asyncio.wait({waiter, feeder}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                launch(reading + self.config.lookahead)
                job = jobs[reading]
                async for chunk in self._consume(job, request.timestamps, clock):
                    if not admitted and chunk.pcm:
                        admitted = True
                        state.first_audio_at = time.monotonic()
                        launch(reading + self.config.lookahead)
                    yield chunk
                admitted = True  # a first sentence that ended without audio (resumed, or words only)
                if state.first_audio_at is None:
                    state.first_audio_at = time.monotonic()
                clock.offset_s += job.heard_s
                reading += 1
        finally:
            # The caller left, failed, finished or cancelled: stop the feeder and look-ahead work
            # (cancelled attempts are no strikes). asyncio.wait never raises the tasks'
            # CancelledError as our own.
            tasks = [feeder, *(job.task for job in jobs if job.task is not None)]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    async def _consume(self, job: _SentenceJob, timestamps: bool, clock: _Clock) -> AsyncIterator[AudioChunk]:
        while True:
            while job.cursor < len(job.chunks):
                # Pieces of one engine that queued up while the caller was sending go out as one: fewer
                # sends and reads under load, and none waits for a later piece.
                first = job.cursor
                engine = job.chunks[first].engine
                heard: list[TimedWord] = []
                while job.cursor < len(job.chunks) and job.chunks[job.cursor].engine == engine:
                    heard += job.read(job.chunks[job.cursor])
                    job.cursor += 1
                pcm = b"".join(c.pcm for c in job.chunks[first : job.cursor])  # one piece: itself, no copy
                yield AudioChunk(pcm, engine, job.index, clock.marks(heard) if timestamps else ())
            if job.done:
                if job.error is not None:
                    if isinstance(job.error, ServiceError):
                        job.error.sentence = job.index
                    raise job.error
                rest = job.rest()
                if timestamps and rest and job.chunks:
                    yield AudioChunk(b"", job.chunks[-1].engine, job.index, clock.marks(rest))
                return
            job.changed.clear()
            await job.changed.wait()

    async def _spoken(self, job: _SentenceJob, request: SpeechRequest) -> str:
        """The sentence as the engines should say it (part 4: spoken-form normalisation): as the caller
        gave it (a `Sentence`), else normalised here when the request asks for it."""
        spoken = job.spoken
        if not spoken and request.normalize:
            try:
                if unchanged_spoken(job.text, request.language):
                    spoken = job.text  # nothing to rewrite: no thread hop (a sentence's first byte waits on it)
                else:
                    spoken = await asyncio.to_thread(to_spoken, job.text, request.language)
            except Exception as exc:  # normalisation improves speech; it must never lose it
                logger.debug("spoken form failed (%s); sentence %d as written", type(exc).__name__, job.index + 1)
        return spoken if any(ch.isalnum() for ch in spoken) else job.text

    async def _produce(
        self, job: _SentenceJob, total: int | None, request: SpeechRequest, state: _RequestState
    ) -> None:
        """Speak one sentence with the first engine that can; the result lands in `job`."""
        errors: list[str] = []
        busy_again: set[str] = set()  # engines that answered busy: tried again once capacity may be back
        tried: set[str] = set()
        busy_noted: set[str] = set()
        failures: dict[str, int] = {}  # attempts of this sentence each engine has failed
        previous: tuple[str, str] | None = None
        owed = job.index > 0  # the request is admitted: its later sentences wait, never fail, when busy
        loop = asyncio.get_running_loop()
        try:
            job.spoken = await self._spoken(job, request)
            # A new request: an engine must start its first sentence this soon, or 503.
            queue_deadline = None if owed else loop.time() + self.config.admission_wait_s
            while True:
                if not owed and job.chunks:
                    # Audio of this sentence went out before its engine failed: the answer is
                    # playing, so the rest of the sentence is owed (waits, never refused as busy).
                    owed, queue_deadline = True, None
                name, full = self._acquire_next(request, state, tried, busy_noted, defer=not owed and self._owed > 0)
                if name is None:
                    if not (full or busy_again):
                        again = self._worth_another_try(request, failures) if owed else set()
                        if not again:
                            break  # every engine failed this sentence (or none is deployed)
                        logger.info(
                            "sentence %d%s is owed and every engine failed it; trying %s again",
                            job.index + 1, _of(total), ", ".join(sorted(again)),
                        )
                        tried -= again
                        continue
                    remaining: float | None = None
                    if queue_deadline is not None:
                        remaining = queue_deadline - loop.time()
                        if remaining <= 0:
                            raise EnginesBusy(
                                f"every engine is at capacity (sentence {job.index + 1}{_of(total)})",
                                retry_after_s=1.0,
                            )
                    await self._wait_for_capacity(remaining, owed=owed, poll=bool(busy_again))
                    tried -= busy_again
                    busy_again.clear()
                    continue
                if previous is not None:
                    self.metrics.fallback(previous[0], name, previous[1])
                job.begin_attempt()
                try:

                    def sink(pcm: bytes, engine: str = name) -> None:
                        job.push(AudioChunk(pcm, engine, job.index))

                    # A new answer gives one engine at most half its admission wait to start, so a
                    # queued engine (or one with no replica yet) leaves time for the next; an engine
                    # with no next one (pinned, or the only one deployed) gets all of it.
                    start_by = queue_deadline
                    if queue_deadline is not None and len(self._order(request, state)) > 1:
                        start_by = min(queue_deadline, loop.time() + self.config.admission_wait_s / 2)
                    await self._attempt(
                        name, job.attempt_text, request, sink, on_mark=job.mark, start_by=start_by,
                        priority=self._queue_priority(job, request, state) if owed else PRIORITY_NEW,
                    )
                except (InvalidInput, asyncio.CancelledError):
                    raise
                except EngineBusy:
                    # Full, not broken: the next engine takes the sentence, and no strike is counted;
                    # this one is tried again when every engine was busy.
                    job.restart()
                    busy_again.add(name)
                    continue
                except Exception as exc:
                    heard, complete = job.restart()
                    failures[name] = failures.get(name, 0) + 1
                    errors.append(f"{name}: {reason_of(exc)}")
                    state.avoid.add(name)
                    previous = (name, _outcome(exc))
                    if complete:
                        logger.info(
                            "engine %s failed sentence %d%s (%s) after its last word was heard; sentence done",
                            name, job.index + 1, _of(total), type(exc).__name__,
                        )
                        job.finish()
                        return
                    resumed = job.attempt_start > 0
                    logger.info(
                        "engine %s failed sentence %d%s (%s)%s; trying next engine",
                        name, job.index + 1, _of(total), type(exc).__name__,
                        (f" after {heard} chunks were sent; resuming at the first unheard word" if resumed
                         else f" after {heard} chunks were sent; restarting the sentence" if heard else ""),
                    )
                    continue
                job.end_attempt(estimate=request.timestamps)
                if previous is not None:
                    logger.info("sentence %d%s spoken by %s after fallback", job.index + 1, _of(total), name)
                job.finish()
                return
            detail = "; ".join(errors) or "no engine available"
            logger.warning("no engine could speak sentence %d%s: %s", job.index + 1, _of(total), detail[:500])
            message = f"no engine could speak sentence {job.index + 1}{_of(total)}: {detail}"
            job.finish(AllEnginesFailed(message, retry_after_s=self._retry_after()))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which raises it in order
            job.finish(exc)

    def _worth_another_try(self, request: SpeechRequest, failures: dict[str, int]) -> set[str]:
        """Engines that failed an owed sentence fewer than `_OWED_ATTEMPTS` times and may still
        take traffic (breaker closed, or pinned by the request)."""
        return {
            name for name, count in failures.items()
            if count < _OWED_ATTEMPTS
            and (name == request.engine or self._slots[name].breaker.allows_traffic())
        }

    def _order(self, request: SpeechRequest, state: _RequestState) -> list[str]:
        """Engines for the next attempt, best first (see the module docstring for the rules)."""
        if request.engine is not None:
            return [request.engine]
        deployed = [name for name in self.chain if self._slots[name].client.deployed]
        closed = [name for name in deployed if self._slots[name].breaker.allows_traffic()]
        now = asyncio.get_running_loop().time()
        busy = {name for name in closed if self._slots[name].busy_until > now}
        fresh = [name for name in closed if name not in state.avoid and name not in busy]
        failed_here = [name for name in closed if name in state.avoid and name not in busy]
        backing_off = [name for name in closed if name in busy]
        last_resort = [name for name in deployed if name not in closed]
        return fresh + failed_here + backing_off + last_resort

    @staticmethod
    def _queue_priority(job: _SentenceJob, request: SpeechRequest, state: _RequestState) -> int:
        """Where a later sentence waits in a queueing engine (`serve_app.core.gate`): due when its
        listener will have heard every sentence before it, less `_PLAYBACK_MARGIN_S` for its own
        synthesis. Until then, new answers' first sentences go ahead of it, so look-ahead work of
        answers already playing does not delay other answers' first audio."""
        if state.first_audio_at is None:
            return PRIORITY_PLAYING
        before = sum(other.plays_at_least_s(request.speed) for other in state.jobs[: job.index])
        slack = state.first_audio_at + before - time.monotonic() - _PLAYBACK_MARGIN_S
        return PRIORITY_PLAYING if slack <= 0 else int(slack * 1000)

    def _acquire_next(
        self, request: SpeechRequest, state: _RequestState, tried: set[str], busy_noted: set[str], *, defer: bool
    ) -> tuple[str | None, bool]:
        """First untried engine with a free slot (slot taken); else (None, whether one was only full).

        `defer`: a new request's first sentence while sentences of admitted requests wait: those go
        first (they are owed to listeners already hearing their answer), so it is full everywhere.
        """
        if defer:
            return None, True
        busy = False
        for name in self._order(request, state):
            if name in tried:
                continue
            slot = self._slots[name]
            if slot.limiter.try_acquire():
                tried.add(name)
                return name, False
            busy = True
            if name not in busy_noted:
                busy_noted.add(name)
                slot.busy_skips += 1
                self.metrics.outcome(name, "busy")
                logger.debug("engine %s at its concurrency limit (%d); skipped", name, slot.limiter.limit)
        return None, busy

    def _release(self, slot: EngineSlot) -> None:
        slot.limiter.release()
        self._capacity.notify()

    async def _wait_for_capacity(self, timeout: float | None, *, owed: bool, poll: bool) -> None:
        """Wait for a released slot, at most `timeout` (None: the request has no deadline here).

        `poll`: an engine answered busy from its own or Serve's queue, which releases no slot of
        ours, so look again soon. `owed` sentences are counted while they wait (see `defer`).
        """
        wait = _OWED_POLL_S if timeout is None else timeout
        if poll:
            wait = min(wait, _BUSY_POLL_S)
        self._owed += owed
        try:
            await self._capacity.wait(wait)
        finally:
            self._owed -= owed

    async def _attempt(
        self,
        name: str,
        text: str,
        request: SpeechRequest,
        sink: Callable[[bytes], None],
        *,
        probe: bool = False,
        on_mark: Callable[[WordMark], None] | None = None,
        start_by: float | None = None,
        priority: int = PRIORITY_NEW,
    ) -> None:
        """One engine speaks `text` into `sink` (word marks to `on_mark`); records strikes and
        outcomes. Releases the slot taken. `start_by` (loop time): a new request's admission
        deadline; not started by then is busy, never a strike."""
        slot = self._slots[name]
        breaker = slot.breaker
        started_at = breaker.now()
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        limits = slot.limits
        deadline = loop.time() + limits.ttfb_timeout_s
        if not probe:
            slot.requests += 1
        produced = 0
        started = False  # the engine said it began this request (left its queue)
        replica: str | None = None  # which replica serves it, when the host says (`ReplicaTag`)
        iterator: AsyncIterator[bytes | WordMark | ReplicaTag] | None = None
        try:
            # Only an engine that says when it starts can be told apart from a hung one before then, so
            # only such an engine is held to `start_by` (and waiting for it is busy, never a strike).
            start_limit = min(deadline, start_by) if start_by is not None and slot.client.reports_start else deadline
            try:
                # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` swallows a cancel that
                # arrives once its inner call is done (here almost at once, in-process), and the
                # sentence went on to be spoken whole after a barge-in had cancelled it.
                async with asyncio.timeout(max(0.0, start_limit - loop.time())):
                    # Two loop turns, as `wait_for` took: sentences launched together interleave as before.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    rate = await slot.client.sample_rate()
            except TimeoutError:
                if slot.client.reports_start:  # a deployment that takes no request yet (no replica)
                    raise EngineBusy("engine info not in time (no replica ready)") from None
                raise FirstByteTimeout(f"engine info not within {limits.ttfb_timeout_s:.1f}s") from None
            resampler = StreamResampler(rate, request.sample_rate or rate)
            iterator = slot.client.stream(
                text, request.voice, language=request.language, speed=self._speed_for(name, request),
                instructions=request.instructions, priority=priority,
            )
            # One timer for the whole stream, moved before each item (a `wait_for` per item would
            # start a task for every word mark and piece); it is stopped while an item is handled.
            timer = asyncio.timeout(None)
            waiting = False
            try:
                async with timer:
                    while True:
                        waiting = produced == 0 and not started and slot.client.reports_start
                        until = start_limit if waiting else deadline
                        timer.reschedule(until if produced == 0 else loop.time() + limits.stall_timeout_s)
                        try:
                            item = await anext(iterator)
                        except StopAsyncIteration:
                            break
                        timer.reschedule(None)
                        if isinstance(item, ReplicaTag):
                            replica = item.replica
                            continue
                        if isinstance(item, WordMark):
                            if on_mark is not None:
                                on_mark(item)
                            continue
                        pcm = item
                        if not pcm:
                            if produced == 0 and not started:
                                # Queued time is not the engine's latency: the first-byte budget starts now.
                                started = True
                                slot.started()
                                deadline = loop.time() + limits.ttfb_timeout_s
                                began = time.perf_counter()
                            continue
                        if produced == 0:
                            ttfb = time.perf_counter() - began
                            slot.ttfbs.append(ttfb)
                            self.metrics.ttfb(name, ttfb)
                        produced += len(pcm)
                        out = resampler.feed(pcm)
                        if out:
                            sink(out)
            except TimeoutError:
                if not timer.expired():
                    raise  # the engine's own, not our budget
                if waiting:  # still in a queue (Serve's or the engine's): busy, never a strike
                    raise EngineBusy("not started in time (queued)") from None
                if produced == 0:
                    raise FirstByteTimeout(f"no audio within {limits.ttfb_timeout_s:.1f}s") from None
                raise StallTimeout(f"audio stalled for {limits.stall_timeout_s:.1f}s") from None
            if produced == 0:
                raise EmptyAudio("engine returned no audio")
            tail = resampler.flush()
            if tail:
                sink(tail)
        except asyncio.CancelledError:
            self.metrics.outcome(name, "cancelled")
            raise
        except InvalidInput:
            self.metrics.outcome(name, "invalid_input")
            raise
        except EngineBusy:
            slot.busy_skips += 1
            slot.busy_answer(loop.time())
            self.metrics.outcome(name, "busy")
            raise
        except Exception as exc:
            if probe:
                self.metrics.outcome(name, "probe_failed")
                raise
            slot.failures += 1
            self.metrics.outcome(name, _outcome(exc))
            opened = breaker.record_strike(reason_of(exc), started_at)
            self._shared.strike(name, reason_of(exc), started_at, replica)
            logger.warning(
                "engine %s strike %d/%d%s: %s", name, breaker.strikes, breaker.config.max_strikes,
                f" (replica {replica})" if replica else "", reason_of(exc),
            )
            if opened:
                logger.warning("engine %s breaker open for %.1fs", name, breaker.current_cooldown)
            raise
        else:
            if probe:
                self.metrics.outcome(name, "probe_ok")
            else:
                self.metrics.outcome(name, "ok")
                breaker.record_success(started_at)
                self._shared.success(name, started_at)
        finally:
            if not probe:
                self._release(slot)
            if iterator is not None:
                with contextlib.suppress(BaseException):
                    await iterator.aclose()  # type: ignore[attr-defined]

    def publish_gauges(self) -> None:
        """Re-set the breaker-state gauges; Ray drops a gauge that is not set for a while."""
        for name, slot in self._slots.items():
            self.metrics.breaker_state(name, slot.breaker.state)

    # ------------------------------------------------------------------ recovery
    def _listener(self, name: str) -> Callable[[BreakerState, BreakerState], None]:
        def changed(previous: BreakerState, state: BreakerState) -> None:
            self.metrics.breaker_state(name, state)
            if state is BreakerState.CLOSED:
                logger.info("engine %s breaker closed (was %s)", name, previous.value)
            elif state is BreakerState.OPEN:
                self.start()
            self._recovery.wake()

        return changed

    async def _probe_attempt(self, name: str) -> int:
        """The recovery probe: the fixed phrase at the engine's own rate; returns the bytes heard."""
        heard = 0

        def count(pcm: bytes) -> None:
            nonlocal heard
            heard += len(pcm)

        phrase = self.config.probe_text
        await self._attempt(name, phrase, SpeechRequest(phrase, sample_rate=0), count, probe=True)
        return heard

    def _retry_after(self) -> float | None:
        lefts = [
            s.breaker.cooldown_left
            for s in self._slots.values()
            if s.client.deployed and not s.breaker.allows_traffic()
        ]
        return round(min(lefts), 3) if lefts else None

    async def _check(self, slot: EngineSlot) -> EngineCheck:
        if not slot.client.deployed:
            return await slot.client.check()
        try:
            return await asyncio.wait_for(slot.client.check(), self.config.status_timeout_s)
        except TimeoutError:
            limit = self.config.status_timeout_s
            return EngineCheck(slot.name, False, f"dependency check did not answer within {limit:.1f}s")
        except Exception as exc:  # a broken check is a report, not an error of the status page
            return EngineCheck(slot.name, False, reason_of(exc))
