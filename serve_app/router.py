"""FallbackRouter: one request in, one ordered stream of PCM out, across a chain of engines.

A plain object composed around `EngineClient`s (deployment handles in the cluster), living in each
ingress replica and each agent actor: no extra Serve hop per chunk. Many requests share one router
on one event loop; all shared state is touched only from that loop, without awaits in between.

What it does, and why:
- Text is split into sentences; up to `lookahead` following sentences are synthesized while the
  current one streams, so long inputs start as fast as short ones and play without gaps.
- Each sentence walks the chain. Engines whose breaker is open are skipped at no cost. A strike is
  an engine error, no first byte within `ttfb_timeout_s`, a stall between chunks longer than
  `stall_timeout_s`, or a stream with no audio at all. `max_strikes` consecutive strikes open the
  breaker (`serve_app.breaker`).
- Recovery never waits for user traffic: a background task owned by the router (started lazily on
  the running loop, stopped by `aclose()`) wakes when a cooldown ends and sends one short fixed
  phrase to the engine. Success closes the breaker; failure reopens it with a doubled cooldown.
- Failover happens at sentence boundaries and mid-sentence: if an engine fails after sending part
  of a sentence, the next engine speaks that sentence again from its start (audio of the failed
  attempt that the caller has not read yet is discarded). No sentence is ever dropped: it is
  spoken in full by some engine or the request ends with `AllEnginesFailed` (the ingress answers
  503 before the first byte, and aborts the chunked response after it).
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
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.logging import truncate
from config.settings import Settings
from serve_app.audio import StreamResampler
from serve_app.breaker import BreakerConfig, BreakerState, CircuitBreaker
from serve_app.engine_client import EngineClient
from serve_app.engines.base import EngineCheck, EngineTimeout, EngineUnavailable, InvalidInput, TTSError
from serve_app.metrics import RouterMetrics
from serve_app.text import normalize, split_sentences

logger = logging.getLogger(__name__)


class AllEnginesFailed(TTSError):
    """No engine in the chain could speak a sentence; `retry_after_s` hints when one may be back."""

    code = "all_engines_failed"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EnginesBusy(AllEnginesFailed):
    """Every candidate engine stayed at its concurrency limit for the whole queueing budget."""

    code = "engines_busy"


class UnknownEngine(InvalidInput):
    """A request pinned an engine that is not in the chain."""


class FirstByteTimeout(EngineTimeout):
    """No audio within the time-to-first-byte budget (a strike)."""


class StallTimeout(EngineTimeout):
    """Audio started, then stopped for longer than the stall budget (a strike)."""


class EmptyAudio(EngineUnavailable):
    """The engine ended its stream without any audio (a strike)."""


@dataclass(frozen=True)
class EngineLimits:
    """Per-engine budgets; a GPU model and a local binary rarely deserve the same timeouts."""

    ttfb_timeout_s: float
    stall_timeout_s: float
    concurrency: int


@dataclass(frozen=True)
class RouterConfig:
    chain: tuple[str, ...] = ("zonos", "edge", "flite")
    max_strikes: int = 3
    cooldown_s: float = 5.0
    max_cooldown_s: float = 120.0
    ttfb_timeout_s: float = 8.0
    stall_timeout_s: float = 8.0
    engine_concurrency: int = 64
    sentence_max_chars: int = 250
    lookahead: int = 2
    max_input_chars: int = 4096
    probe_text: str = "Probe."
    status_timeout_s: float = 2.0
    # Overrides per engine name; engines not listed use the three values above.
    engine_limits: dict[str, EngineLimits] = field(default_factory=dict)

    def limits_for(self, engine: str) -> EngineLimits:
        return self.engine_limits.get(
            engine, EngineLimits(self.ttfb_timeout_s, self.stall_timeout_s, self.engine_concurrency)
        )

    @classmethod
    def from_settings(cls, s: Settings) -> RouterConfig:
        return cls(
            chain=tuple(s.tts_engine_chain),
            max_strikes=s.tts_max_strikes,
            cooldown_s=s.tts_breaker_cooldown_s,
            max_cooldown_s=s.tts_breaker_max_cooldown_s,
            ttfb_timeout_s=s.tts_ttfb_timeout_s,
            stall_timeout_s=s.tts_stall_timeout_s,
            engine_concurrency=s.tts_engine_concurrency,
            sentence_max_chars=s.tts_sentence_max_chars,
            lookahead=s.tts_lookahead_sentences,
            max_input_chars=s.max_input_chars,
            probe_text=s.tts_probe_text,
            engine_limits={
                name: EngineLimits(
                    ttfb_timeout_s=getattr(s, f"{name}_ttfb_timeout_s") or s.tts_ttfb_timeout_s,
                    stall_timeout_s=getattr(s, f"{name}_stall_timeout_s") or s.tts_stall_timeout_s,
                    concurrency=getattr(s, f"{name}_concurrency") or s.tts_engine_concurrency,
                )
                for name in ("zonos", "edge", "flite")
            },
        )


@dataclass
class SpeechRequest:
    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0
    sample_rate: int = 24000  # 0: the engine's own rate (probes)
    engine: str | None = None


@dataclass
class AudioChunk:
    """PCM at the requested rate, tagged with the engine that made it and its sentence index."""

    pcm: bytes
    engine: str
    sentence: int


class _Limiter:
    """Concurrency slots of one engine. Never blocks: a full engine is skipped, not waited on."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


@dataclass
class _EngineSlot:
    name: str
    client: EngineClient
    breaker: CircuitBreaker
    limiter: _Limiter
    limits: EngineLimits
    requests: int = 0
    failures: int = 0
    busy_skips: int = 0
    ttfbs: deque[float] = field(default_factory=lambda: deque(maxlen=512))


@dataclass
class _SentenceJob:
    """Audio of one sentence as it is produced; `cursor` is how far the consumer has read."""

    index: int
    text: str
    chunks: list[AudioChunk] = field(default_factory=list)
    cursor: int = 0
    done: bool = False
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def push(self, chunk: AudioChunk) -> None:
        self.chunks.append(chunk)
        self.changed.set()

    def restart(self) -> int:
        """Drop audio of a failed attempt that the consumer has not read; returns chunks already heard."""
        del self.chunks[self.cursor :]
        return self.cursor

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self.changed.set()


@dataclass
class _RequestState:
    """Per-request memory: engines that failed a sentence of this request are tried last."""

    avoid: set[str] = field(default_factory=set)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _reason(exc: BaseException) -> str:
    """Short `Type: message` of an engine error; Ray's wrapper (`RayTaskError.cause`) is unwrapped."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _sentence_sink(job: _SentenceJob, engine: str) -> Callable[[bytes], None]:
    """Where one attempt's PCM goes: the sentence's buffer, tagged with the engine."""

    def push(pcm: bytes) -> None:
        job.push(AudioChunk(pcm, engine, job.index))

    return push


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, FirstByteTimeout):
        return "timeout"
    if isinstance(exc, StallTimeout):
        return "stall"
    if isinstance(exc, EmptyAudio):
        return "empty"
    return "error"


class FallbackRouter:
    """Speaks text through the first healthy engine of the chain, sentence by sentence."""

    def __init__(
        self,
        clients: dict[str, EngineClient],
        config: RouterConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or RouterConfig()
        chain = [name for name in self.config.chain if name in clients]
        if not chain:
            raise ValueError("the router needs at least one engine from the chain")
        breaker_config = BreakerConfig(self.config.max_strikes, self.config.cooldown_s, self.config.max_cooldown_s)
        self.chain = tuple(chain)
        self.metrics = RouterMetrics()
        self._slots: dict[str, _EngineSlot] = {}
        for name in chain:
            breaker = CircuitBreaker(breaker_config, clock=clock, on_change=self._listener(name))
            limits = self.config.limits_for(name)
            self._slots[name] = _EngineSlot(name, clients[name], breaker, _Limiter(limits.concurrency), limits)
        self._wake = asyncio.Event()
        self._capacity_waiters: list[asyncio.Future[None]] = []
        self._probe_loop_task: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        for name in chain:
            client = clients[name]
            if not client.deployed:
                self._slots[name].breaker.force_open(getattr(client, "reason", None) or "not deployed")

    # ------------------------------------------------------------------ public API
    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """Stream the whole text as PCM chunks at `request.sample_rate`, in order.

        Raises `InvalidInput` for the caller's mistakes and `AllEnginesFailed` when a sentence
        cannot be spoken by any engine (possibly after earlier sentences were yielded).
        """
        text = normalize(request.text, max_chars=self.config.max_input_chars)
        if request.engine is not None and request.engine not in self._slots:
            raise UnknownEngine(f"unknown engine '{request.engine[:40]}'; available: {', '.join(self.chain)}")
        if not 0.25 <= request.speed <= 4.0:
            raise InvalidInput("speed must be between 0.25 and 4.0")
        if request.engine is not None and not self._slots[request.engine].client.deployed:
            reason = self._slots[request.engine].breaker.last_error
            raise AllEnginesFailed(f"engine {request.engine} is not deployed: {reason}")
        self.start()
        sentences = split_sentences(text, max_chars=self.config.sentence_max_chars)
        logger.debug("speech request: %d sentences, text=%s", len(sentences), truncate(text))
        state = _RequestState()
        jobs = [_SentenceJob(i, s) for i, s in enumerate(sentences)]
        try:
            for index, job in enumerate(jobs):
                for ahead in jobs[index : index + 1 + self.config.lookahead]:
                    if ahead.task is None:
                        ahead.task = asyncio.create_task(self._produce(ahead, len(jobs), request, state))
                async for chunk in self._consume(job):
                    yield chunk
        finally:
            # The caller left, failed or finished: stop look-ahead work (cancelled attempts are no
            # strikes). asyncio.wait never raises the tasks' CancelledError as our own.
            tasks = [job.task for job in jobs if job.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)

    async def speak(self, request: SpeechRequest) -> tuple[bytes, list[str]]:
        """Whole-buffer convenience: all PCM and the engines used, in order."""
        pcm = bytearray()
        engines: list[str] = []
        async for chunk in self.synthesize(request):
            pcm.extend(chunk.pcm)
            if not engines or engines[-1] != chunk.engine:
                engines.append(chunk.engine)
        return bytes(pcm), engines

    async def engines_status(self) -> list[dict[str, Any]]:
        """Per engine: availability, breaker, counters and time-to-first-byte percentiles."""
        self.start()
        slots = [self._slots[name] for name in self.chain]
        checks = await asyncio.gather(*(self._check(slot) for slot in slots))
        out = []
        for slot, check in zip(slots, checks, strict=True):
            breaker = slot.breaker
            out.append(
                {
                    "name": slot.name,
                    "available": slot.client.deployed and check.available and breaker.allows_traffic(),
                    "deployed": slot.client.deployed,
                    "state": breaker.state.value,
                    "strikes": breaker.strikes,
                    "last_error": breaker.last_error,
                    "cooldown_left_s": round(breaker.cooldown_left, 3),
                    "reason": check.reason,
                    "check": check.to_dict(),
                    "breaker": breaker.snapshot(),
                    "requests": slot.requests,
                    "failures": slot.failures,
                    "busy_skips": slot.busy_skips,
                    "in_flight": slot.limiter.in_use,
                    "concurrency_limit": slot.limiter.limit,
                    "ttfb_p50_ms": _ms(_percentile(slot.ttfbs, 0.5)),
                    "ttfb_p95_ms": _ms(_percentile(slot.ttfbs, 0.95)),
                }
            )
        return out

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
        """Start the background probe loop on the running loop (idempotent; no-op without a loop)."""
        if self._closed:
            return
        task = self._probe_loop_task
        if task is not None and not task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe_loop_task = loop.create_task(self._probe_loop(), name="tts-router-probes")

    async def aclose(self) -> None:
        """Stop the probe loop and any probe in flight."""
        self._closed = True
        tasks = [t for t in (self._probe_loop_task, *self._probes.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._probe_loop_task = None

    # ------------------------------------------------------------------ streaming
    async def _consume(self, job: _SentenceJob) -> AsyncIterator[AudioChunk]:
        while True:
            while job.cursor < len(job.chunks):
                chunk = job.chunks[job.cursor]
                job.cursor += 1
                yield chunk
            if job.done:
                if job.error is not None:
                    raise job.error
                return
            job.changed.clear()
            await job.changed.wait()

    async def _produce(self, job: _SentenceJob, total: int, request: SpeechRequest, state: _RequestState) -> None:
        """Speak one sentence with the first engine that can; the result lands in `job`."""
        errors: list[str] = []
        tried: set[str] = set()
        busy_noted: set[str] = set()
        previous: tuple[str, str] | None = None
        queue_deadline: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                name, busy = self._acquire_next(request, state, tried, busy_noted)
                if name is None:
                    if not busy:
                        break
                    queue_deadline = queue_deadline or loop.time() + self.config.ttfb_timeout_s
                    remaining = queue_deadline - loop.time()
                    if remaining <= 0:
                        raise EnginesBusy(
                            f"every engine is at its concurrency limit (sentence {job.index + 1} of {total})",
                            retry_after_s=1.0,
                        )
                    await self._wait_capacity(remaining)
                    continue
                if previous is not None:
                    self.metrics.fallback(previous[0], name, previous[1])
                try:
                    sink = _sentence_sink(job, name)
                    await self._attempt(name, job.text, request, sink)
                except (InvalidInput, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    heard = job.restart()
                    errors.append(f"{name}: {_reason(exc)}")
                    state.avoid.add(name)
                    previous = (name, _outcome(exc))
                    logger.info(
                        "engine %s failed sentence %d/%d (%s)%s; trying next engine",
                        name, job.index + 1, total, type(exc).__name__,
                        f" after {heard} chunks were sent; restarting the sentence" if heard else "",
                    )
                    continue
                if previous is not None:
                    logger.info("sentence %d/%d spoken by %s after fallback", job.index + 1, total, name)
                job.finish()
                return
            detail = "; ".join(errors) or "no engine available"
            logger.warning("no engine could speak sentence %d/%d: %s", job.index + 1, total, detail[:500])
            message = f"no engine could speak sentence {job.index + 1} of {total}: {detail}"
            job.finish(AllEnginesFailed(message, self._retry_after()))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which raises it in order
            job.finish(exc)

    def _order(self, request: SpeechRequest, state: _RequestState) -> list[str]:
        """Engines for the next attempt, best first (see the module docstring for the rules)."""
        if request.engine is not None:
            return [request.engine]
        deployed = [name for name in self.chain if self._slots[name].client.deployed]
        closed = [name for name in deployed if self._slots[name].breaker.allows_traffic()]
        fresh = [name for name in closed if name not in state.avoid]
        failed_here = [name for name in closed if name in state.avoid]
        last_resort = [name for name in deployed if name not in closed]
        return fresh + failed_here + last_resort

    def _acquire_next(
        self, request: SpeechRequest, state: _RequestState, tried: set[str], busy_noted: set[str]
    ) -> tuple[str | None, bool]:
        """First untried engine with a free slot (slot taken); else (None, whether one was only busy)."""
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

    async def _wait_capacity(self, timeout: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._capacity_waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._capacity_waiters.remove(future)

    def _release(self, slot: _EngineSlot) -> None:
        slot.limiter.release()
        waiters, self._capacity_waiters = self._capacity_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _attempt(
        self, name: str, text: str, request: SpeechRequest, sink: Callable[[bytes], None], *, probe: bool = False
    ) -> None:
        """One engine speaks `text` into `sink`; records strikes and outcomes. Releases the slot taken."""
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
        iterator: AsyncIterator[bytes] | None = None
        try:
            try:
                rate = await asyncio.wait_for(slot.client.sample_rate(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise FirstByteTimeout(f"engine info not within {limits.ttfb_timeout_s:.1f}s") from None
            resampler = StreamResampler(rate, request.sample_rate or rate)
            iterator = slot.client.stream(text, request.voice, language=request.language, speed=request.speed)
            while True:
                budget = max(0.0, deadline - loop.time()) if produced == 0 else limits.stall_timeout_s
                try:
                    pcm = await asyncio.wait_for(anext(iterator), budget)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if produced == 0:
                        raise FirstByteTimeout(f"no audio within {limits.ttfb_timeout_s:.1f}s") from None
                    raise StallTimeout(f"audio stalled for {limits.stall_timeout_s:.1f}s") from None
                if not pcm:
                    continue
                if produced == 0:
                    ttfb = time.perf_counter() - began
                    slot.ttfbs.append(ttfb)
                    self.metrics.ttfb(name, ttfb)
                produced += len(pcm)
                out = resampler.feed(pcm)
                if out:
                    sink(out)
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
        except Exception as exc:
            if probe:
                self.metrics.outcome(name, "probe_failed")
                raise
            slot.failures += 1
            self.metrics.outcome(name, _outcome(exc))
            opened = breaker.record_strike(_reason(exc), started_at)
            logger.warning(
                "engine %s strike %d/%d: %s", name, breaker.strikes, breaker.config.max_strikes, _reason(exc)
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
            self._wake.set()

        return changed

    async def _probe_loop(self) -> None:
        """Owned by the router: probes every open engine when its cooldown ends, traffic or not."""
        while not self._closed:
            delays: list[float] = []
            for name in self.chain:
                slot = self._slots[name]
                if not slot.client.deployed or name in self._probes:
                    continue
                if slot.breaker.begin_probe():
                    task = asyncio.create_task(self._probe(name), name=f"tts-probe-{name}")
                    self._probes[name] = task
                    task.add_done_callback(functools.partial(self._probe_done, name))
                elif slot.breaker.state is BreakerState.OPEN:
                    delays.append(slot.breaker.cooldown_left)
            self._wake.clear()
            timeout = max(0.01, min(delays)) if delays else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _probe_done(self, name: str, _task: asyncio.Task[None] | None = None) -> None:
        self._probes.pop(name, None)
        self._wake.set()

    async def _probe(self, name: str) -> None:
        """One short fixed phrase (never a user's text); its verdict closes or reopens the breaker."""
        breaker = self._slots[name].breaker
        ok = False
        reason: str | None = None
        heard = 0

        def count(pcm: bytes) -> None:
            nonlocal heard
            heard += len(pcm)

        try:
            phrase = self.config.probe_text
            await self._attempt(name, phrase, SpeechRequest(phrase, sample_rate=0), count, probe=True)
            ok = True
        except asyncio.CancelledError:
            reason = "probe cancelled"
            raise
        except Exception as exc:  # the verdict, not a crash: any failure keeps the engine out
            reason = _reason(exc)
        finally:
            breaker.end_probe(ok, reason)
            if ok:
                logger.info("engine %s recovered: probe spoke %d bytes; breaker closed", name, heard)
            else:
                logger.warning(
                    "engine %s probe failed (%s); breaker open for %.1fs", name, reason, breaker.current_cooldown
                )

    def _retry_after(self) -> float | None:
        lefts = [
            s.breaker.cooldown_left
            for s in self._slots.values()
            if s.client.deployed and not s.breaker.allows_traffic()
        ]
        return round(min(lefts), 3) if lefts else None

    async def _check(self, slot: _EngineSlot) -> EngineCheck:
        if not slot.client.deployed:
            return await slot.client.check()
        try:
            return await asyncio.wait_for(slot.client.check(), self.config.status_timeout_s)
        except TimeoutError:
            limit = self.config.status_timeout_s
            return EngineCheck(slot.name, False, f"dependency check did not answer within {limit:.1f}s")
        except Exception as exc:  # a broken check is a report, not an error of the status page
            return EngineCheck(slot.name, False, _reason(exc))
