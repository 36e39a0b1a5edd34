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
  breaker (`serve_app.core.breaker`).
- Recovery never waits for user traffic (`recovery.py`): a background task probes an open engine
  with a fixed phrase when its cooldown ends.
- A busy engine is not a broken one: an `EngineBusy` answer (the engine's queue is full) moves the
  sentence on without a strike, and an engine that signals it has started the work (an empty first
  chunk) gets its first-byte budget from that moment, so time spent queued is never a timeout.
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
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from config.logging import truncate
from serve_app.core.audio import StreamResampler
from serve_app.core.breaker import BreakerConfig, BreakerState, CircuitBreaker
from serve_app.core.errors import (
    AllEnginesFailed,
    EmptyAudio,
    EngineBusy,
    EnginesBusy,
    FirstByteTimeout,
    InvalidInput,
    StallTimeout,
    UnknownEngine,
    reason_of,
)
from serve_app.core.text import normalize, split_sentences
from serve_app.engines.base import EngineCheck
from serve_app.metrics import RouterMetrics
from serve_app.router.admission import CapacitySignal, Limiter
from serve_app.router.clients import EngineClient
from serve_app.router.recovery import Recovery
from serve_app.router.status import EngineSlot, engine_status
from serve_app.router.types import AudioChunk, RouterConfig, SpeechRequest

logger = logging.getLogger(__name__)


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
        self._recovery = Recovery(self._slots, self._probe_attempt)
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
        low, high = self._speed_range(request.engine)
        if not low <= request.speed <= high:
            raise InvalidInput(f"speed must be between {low:g} and {high:g}", param="speed")
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
        return [engine_status(slot, check) for slot, check in zip(slots, checks, strict=True)]

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
        self._recovery.start()

    async def aclose(self) -> None:
        """Stop the probe loop and any probe in flight."""
        await self._recovery.aclose()

    def _speed_range(self, engine: str | None) -> tuple[float, float]:
        """The speeds every engine the request may reach accepts (so a fallback never refuses it)."""
        names = [engine] if engine else list(self.chain)
        ranges = [self.config.speed_ranges.get(n, (0.25, 4.0)) for n in names]
        return max(r[0] for r in ranges), min(r[1] for r in ranges)

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
        busy_answers: list[str] = []
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
                    await self._capacity.wait(remaining)
                    continue
                if previous is not None:
                    self.metrics.fallback(previous[0], name, previous[1])
                try:
                    sink = _sentence_sink(job, name)
                    await self._attempt(name, job.text, request, sink)
                except (InvalidInput, asyncio.CancelledError):
                    raise
                except EngineBusy:
                    # Full, not broken: the next engine takes the sentence, and no strike is counted.
                    job.restart()
                    busy_answers.append(name)
                    continue
                except Exception as exc:
                    heard = job.restart()
                    errors.append(f"{name}: {reason_of(exc)}")
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
            if busy_answers and not errors:
                names = ", ".join(busy_answers)
                message = f"every engine is busy (sentence {job.index + 1} of {total}: {names})"
                job.finish(EnginesBusy(message, retry_after_s=1.0))
                return
            detail = "; ".join(errors + [f"{n}: busy" for n in busy_answers]) or "no engine available"
            logger.warning("no engine could speak sentence %d/%d: %s", job.index + 1, total, detail[:500])
            message = f"no engine could speak sentence {job.index + 1} of {total}: {detail}"
            job.finish(AllEnginesFailed(message, retry_after_s=self._retry_after()))
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

    def _release(self, slot: EngineSlot) -> None:
        slot.limiter.release()
        self._capacity.notify()

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
        started = False  # the engine said it began this request (left its queue)
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
                    if produced == 0 and not started:
                        # Queued time is not the engine's latency: the first-byte budget starts now.
                        started = True
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
            self.metrics.outcome(name, "busy")
            raise
        except Exception as exc:
            if probe:
                self.metrics.outcome(name, "probe_failed")
                raise
            slot.failures += 1
            self.metrics.outcome(name, _outcome(exc))
            opened = breaker.record_strike(reason_of(exc), started_at)
            logger.warning(
                "engine %s strike %d/%d: %s", name, breaker.strikes, breaker.config.max_strikes, reason_of(exc)
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
