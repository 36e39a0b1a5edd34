"""FallbackRouter: one request in, one ordered stream of PCM out, across a chain of engines.

A plain object composed around `EngineClient`s (deployment handles in the cluster), living in each
ingress replica and each agent actor: no extra Serve hop per chunk.

- Text is split into sentences; up to `lookahead` following sentences are synthesized while the
  current one streams, so long inputs start as fast as short ones and play without gaps.
- Each sentence walks the chain: engines whose breaker is open are skipped at no cost. A strike is
  an engine error, a time-to-first-byte timeout, a stall between chunks, or empty audio.
- If an engine fails mid-sentence, the next engine speaks that sentence again from its start; no
  sentence is ever dropped. When every engine fails, `AllEnginesFailed` is raised: before the first
  byte the ingress turns it into HTTP 503; after it, the stream ends with a logged error.
- Invalid input (bad voice, bad speed) is the caller's fault: re-raised, never a strike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.logging import truncate
from config.settings import Settings
from serve_app.audio import StreamResampler, rms_level
from serve_app.breaker import BreakerConfig, BreakerState, CircuitBreaker
from serve_app.engine_client import EngineClient
from serve_app.engines.base import EngineTimeout, EngineUnavailable, InvalidInput, TTSError
from serve_app.metrics import RouterMetrics
from serve_app.text import normalize, split_sentences

logger = logging.getLogger(__name__)


class AllEnginesFailed(TTSError):  # noqa: N818 - reads better at the call site
    """No engine in the chain could speak a sentence."""

    code = "all_engines_failed"


class UnknownEngine(InvalidInput):
    """A request pinned an engine that is not in the chain."""


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
        )


@dataclass
class SpeechRequest:
    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0
    sample_rate: int = 24000
    engine: str | None = None


@dataclass
class AudioChunk:
    """PCM at the requested rate, tagged with the engine that made it and its sentence index."""

    pcm: bytes
    engine: str
    sentence: int


@dataclass
class _EngineSlot:
    client: EngineClient
    breaker: CircuitBreaker
    semaphore: asyncio.Semaphore
    requests: int = 0
    failures: int = 0
    ttfbs: list[float] = field(default_factory=list)
    probe_task: asyncio.Task[None] | None = None

    def record_ttfb(self, seconds: float) -> None:
        self.ttfbs.append(seconds)
        if len(self.ttfbs) > 512:
            del self.ttfbs[:256]


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

    def restart(self) -> None:
        """Drop audio of a failed attempt that the consumer has not read yet."""
        del self.chunks[self.cursor :]

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.error = error
        self.changed.set()


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class FallbackRouter:
    """Speaks text through the first healthy engine of the chain, sentence by sentence."""

    def __init__(self, clients: dict[str, EngineClient], config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        chain = [name for name in self.config.chain if name in clients]
        if not chain:
            raise ValueError("the router needs at least one engine from the chain")
        breaker_config = BreakerConfig(self.config.max_strikes, self.config.cooldown_s, self.config.max_cooldown_s)
        self._slots: dict[str, _EngineSlot] = {
            name: _EngineSlot(clients[name], CircuitBreaker(breaker_config), asyncio.Semaphore(self.config.engine_concurrency))
            for name in chain
        }
        self.chain = tuple(chain)
        self.metrics = RouterMetrics()
        for name in self.chain:
            if not clients[name].deployed:
                self._slots[name].breaker.force_open(getattr(clients[name], "reason", "not deployed"))

    # ------------------------------------------------------------------ public API
    async def synthesize(self, request: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """Stream the whole text as PCM chunks at `request.sample_rate`, in order."""
        text = normalize(request.text, max_chars=self.config.max_input_chars)
        if request.engine is not None and request.engine not in self._slots:
            raise UnknownEngine(f"unknown engine '{request.engine[:40]}'; available: {', '.join(self.chain)}")
        if not 0.25 <= request.speed <= 4.0:
            raise InvalidInput("speed must be between 0.25 and 4.0")
        sentences = split_sentences(text, max_chars=self.config.sentence_max_chars)
        logger.debug("speech request: %d sentences, text=%s", len(sentences), truncate(text))
        jobs = [_SentenceJob(i, s) for i, s in enumerate(sentences)]
        try:
            for index, job in enumerate(jobs):
                for ahead in jobs[index : index + 1 + self.config.lookahead]:
                    if ahead.task is None:
                        ahead.task = asyncio.create_task(self._produce(ahead, request))
                async for chunk in self._consume(job):
                    yield chunk
        finally:
            for job in jobs:
                if job.task is not None and not job.task.done():
                    job.task.cancel()
            for job in jobs:
                if job.task is not None:
                    with contextlib.suppress(BaseException):
                        await job.task

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
        out = []
        for name in self.chain:
            slot = self._slots[name]
            check = await slot.client.check()
            out.append(
                {
                    "name": name,
                    "available": check.available and slot.breaker.state is not BreakerState.OPEN,
                    "deployed": slot.client.deployed,
                    "reason": check.reason,
                    "check": check.to_dict(),
                    "breaker": slot.breaker.snapshot(),
                    "requests": slot.requests,
                    "failures": slot.failures,
                    "ttfb_p50_ms": _ms(_percentile(slot.ttfbs, 0.5)),
                    "ttfb_p95_ms": _ms(_percentile(slot.ttfbs, 0.95)),
                }
            )
        return out

    async def voices(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in self.chain:
            client = self._slots[name].client
            if client.deployed:
                with contextlib.suppress(Exception):
                    out.extend(v.to_dict() for v in await client.voices())
        return out

    def breaker(self, name: str) -> CircuitBreaker:
        return self._slots[name].breaker

    async def aclose(self) -> None:
        for slot in self._slots.values():
            if slot.probe_task is not None:
                slot.probe_task.cancel()

    # ------------------------------------------------------------------ internals
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
            if job.cursor >= len(job.chunks) and not job.done:
                await job.changed.wait()

    def _candidates(self, request: SpeechRequest) -> list[str]:
        if request.engine is not None:
            return [request.engine]
        for name in self.chain:
            self._maybe_probe(name, request)
        return [name for name in self.chain if self._slots[name].breaker.allows_traffic()]

    async def _produce(self, job: _SentenceJob, request: SpeechRequest) -> None:
        errors: list[str] = []
        previous: str | None = None
        try:
            for name in self._candidates(request):
                if previous is not None:
                    self.metrics.fallback(previous, name)
                    logger.info("fallback %s -> %s for sentence %d", previous, name, job.index)
                try:
                    await self._attempt(name, job, request)
                    return job.finish()
                except InvalidInput:
                    raise
                except Exception as exc:  # any engine failure is a strike, typed or not
                    reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                    errors.append(f"{name}: {reason}")
                    job.restart()
                    previous = name
                    if request.engine is not None:
                        break
            detail = "; ".join(errors) or "no engine available (all breakers open)"
            job.finish(AllEnginesFailed(f"no engine could speak sentence {job.index + 1}: {detail}"))
        except BaseException as exc:
            job.finish(exc)
            if not isinstance(exc, InvalidInput | Exception):
                raise

    async def _attempt(self, name: str, job: _SentenceJob, request: SpeechRequest) -> None:
        slot = self._slots[name]
        slot.requests += 1
        started = time.perf_counter()
        produced = 0
        loud = 0.0
        try:
            async with slot.semaphore:
                resampler = StreamResampler(await slot.client.sample_rate(), request.sample_rate)
                stream = slot.client.stream(job.text, request.voice, language=request.language, speed=request.speed)
                iterator = stream.__aiter__()
                timeout = self.config.ttfb_timeout_s
                try:
                    while True:
                        try:
                            pcm = await asyncio.wait_for(iterator.__anext__(), timeout)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            kind = "first byte" if produced == 0 else "next chunk"
                            raise EngineTimeout(f"no {kind} within {timeout:.1f}s") from None
                        if not pcm:
                            continue
                        if produced == 0:
                            ttfb = time.perf_counter() - started
                            slot.record_ttfb(ttfb)
                            self.metrics.ttfb(name, ttfb)
                        produced += len(pcm)
                        loud = max(loud, rms_level(pcm[:4096]))
                        out = resampler.feed(pcm)
                        if out:
                            job.push(AudioChunk(out, name, job.index))
                        timeout = self.config.stall_timeout_s
                    tail = resampler.flush()
                    if tail:
                        job.push(AudioChunk(tail, name, job.index))
                finally:
                    with contextlib.suppress(Exception):
                        await iterator.aclose()  # type: ignore[attr-defined]
            if produced == 0:
                raise EngineUnavailable("engine returned no audio")
        except InvalidInput:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            slot.failures += 1
            opened = slot.breaker.record_strike(f"{type(exc).__name__}: {str(exc)[:200]}")
            self.metrics.outcome(name, "failure")
            logger.warning("engine %s strike %d: %s", name, slot.breaker.strikes, type(exc).__name__)
            if opened:
                logger.warning("engine %s breaker open for %.1fs", name, slot.breaker.current_cooldown)
            self.metrics.breaker_state(name, slot.breaker.state)
            raise
        slot.breaker.record_success()
        self.metrics.outcome(name, "success")
        self.metrics.breaker_state(name, slot.breaker.state)

    def _maybe_probe(self, name: str, request: SpeechRequest) -> None:
        """After the cooldown, test an open engine in the background with a short fixed phrase."""
        slot = self._slots[name]
        if not slot.client.deployed or not slot.breaker.probe_due():
            return
        slot.probe_task = asyncio.create_task(self._probe(name))

    async def _probe(self, name: str) -> None:
        slot = self._slots[name]
        job = _SentenceJob(-1, self.config.probe_text)
        try:
            await self._attempt(name, job, SpeechRequest(self.config.probe_text, sample_rate=16000))
            logger.info("engine %s recovered; breaker closed", name)
        except Exception:
            logger.info("engine %s probe failed; breaker open for %.1fs", name, slot.breaker.current_cooldown)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)
