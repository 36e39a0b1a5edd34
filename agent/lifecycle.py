"""Session lifecycle: usage accounting, the cleanup callback, and signal-driven draining.

The seed asks for a cleanup callback on disconnect that finalizes the session, clears the
latency monitor and logs one usage summary, best effort; and for SIGINT/SIGTERM to shut down
gracefully on the first signal and forcibly on the second. Here:

- `UsageTracker` listens to the `metrics_collected` events of the session's LLM, TTS and STT
  and keeps totals (tokens, characters, audio seconds) and latencies (into `LatencyMonitor`).
- `SessionRegistry` holds the sessions this process serves; `ActiveSession.cleanup()` runs the
  cleanup exactly once, whoever calls it first (the job's shutdown callback or a drain).
- `make_shutdown_callback()` is what the worker passes to `ctx.add_shutdown_callback`.
- `ShutdownCoordinator` installs SIGINT/SIGTERM handlers: the first signal runs `drain`
  (finalize every active session, close clients) and the process exits 0; a second signal while
  draining exits at once with `128 + signal number` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.latency import LatencyMonitor

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_OK = 0


def forced_exit_code(signum: int) -> int:
    """The shell convention for death by signal: 128 + signal number."""
    return 128 + int(signum)


class Finalizer(Protocol):
    """What the cleanup needs from the API client (`AgentApiClient` satisfies it)."""

    async def finalize_session(self, session_id: str, usage: dict[str, Any] | None = None) -> str: ...


class _Emitter(Protocol):
    def on(self, event: str, callback: Callable[..., Any]) -> Any: ...

    def off(self, event: str, callback: Callable[..., Any]) -> Any: ...


class UsageTracker:
    """Totals and latencies of one session, fed by livekit `metrics_collected` events."""

    def __init__(self, session_id: str, monitor: LatencyMonitor | None = None) -> None:
        self.session_id = session_id
        self.monitor = monitor
        self.llm_requests = 0
        self.llm_prompt_tokens = 0
        self.llm_completion_tokens = 0
        self.tts_requests = 0
        self.tts_characters = 0
        self.tts_audio_s = 0.0
        self.stt_audio_s = 0.0
        self._attached: list[_Emitter] = []

    def attach(self, *components: Any) -> None:
        """Listen to each component that emits `metrics_collected` (LLM, TTS, STT); None is skipped."""
        for component in components:
            if component is not None and hasattr(component, "on"):
                component.on("metrics_collected", self.on_metrics)
                self._attached.append(component)

    def detach(self) -> None:
        for component in self._attached:
            with contextlib.suppress(Exception):
                component.off("metrics_collected", self.on_metrics)
        self._attached.clear()

    def on_metrics(self, metrics: Any) -> None:
        """Dispatch on the metrics' `type` field (livekit.agents.metrics models)."""
        kind = getattr(metrics, "type", "")
        if kind == "llm_metrics":
            self.llm_requests += 1
            self.llm_prompt_tokens += int(metrics.prompt_tokens)
            self.llm_completion_tokens += int(metrics.completion_tokens)
            self._latency("llm_ttft", metrics.ttft)
        elif kind == "tts_metrics":
            self.tts_requests += 1
            self.tts_characters += int(metrics.characters_count)
            self.tts_audio_s += float(metrics.audio_duration)
            self._latency("tts_ttfb", metrics.ttfb)
        elif kind == "stt_metrics":
            self.stt_audio_s += float(metrics.audio_duration)
            self._latency("stt_duration", metrics.duration)
        elif kind == "eou_metrics":
            self._latency("end_of_utterance", metrics.end_of_utterance_delay)
            self._latency("transcription_delay", metrics.transcription_delay)

    def _latency(self, name: str, seconds: float) -> None:
        if self.monitor is not None and seconds is not None and seconds >= 0:
            self.monitor.record(self.session_id, name, float(seconds))

    def usage(self) -> dict[str, Any]:
        # `characters`, `audio_seconds`, `requests` are the sessions API's own usage fields
        # (serve_app/api/sessions.py UsageSummary); the rest travel as extra fields.
        return {
            "characters": self.tts_characters,
            "audio_seconds": round(self.tts_audio_s, 3),
            "requests": self.tts_requests,
            "llm_requests": self.llm_requests,
            "llm_prompt_tokens": self.llm_prompt_tokens,
            "llm_completion_tokens": self.llm_completion_tokens,
            "tts_requests": self.tts_requests,
            "tts_characters": self.tts_characters,
            "tts_audio_seconds": round(self.tts_audio_s, 3),
            "stt_audio_seconds": round(self.stt_audio_s, 3),
        }


@dataclass
class ActiveSession:
    """One conversation this process serves. `session_id` is None when the API was unreachable."""

    session_id: str | None
    room: str
    api: Finalizer | None
    monitor: LatencyMonitor
    tracker: UsageTracker
    started: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _done: asyncio.Future[str] | None = None

    @property
    def key(self) -> str:
        return self.session_id or f"local:{self.room}:{id(self)}"

    async def cleanup(self, reason: str = "disconnected") -> str:
        """Finalize, clear the monitor, log the usage line: once, best effort, never raising.

        Returns the finalize outcome (delivered, queued, rejected, skipped). A second caller
        waits for the first one's result instead of finalizing twice.
        """
        if self._done is not None:
            return await asyncio.shield(self._done)
        self._done = asyncio.get_running_loop().create_future()
        outcome = "skipped"
        try:
            for task in self.tasks:
                task.cancel()
            self.tracker.detach()
            usage = self.tracker.usage()
            usage["duration_seconds"] = round(time.monotonic() - self.started, 3)
            latency = self.monitor.summary(self.key)
            if latency:
                usage["latency_ms"] = latency
            if self.session_id is not None and self.api is not None:
                try:
                    outcome = await self.api.finalize_session(self.session_id, usage)
                except Exception as exc:  # the client promises not to raise; belt and braces
                    logger.error("finalize of %s raised %s", self.session_id[:64], type(exc).__name__)
                    outcome = "error"
            self.monitor.clear(self.key)
            logger.info(
                "session %s ended (%s): duration=%.1fs llm_requests=%d tokens=%d/%d tts_chars=%d "
                "tts_audio=%.1fs stt_audio=%.1fs tts_ttfb_p50_ms=%s finalize=%s",
                self.key[:64], reason[:64], usage["duration_seconds"], usage["llm_requests"],
                usage["llm_prompt_tokens"], usage["llm_completion_tokens"], usage["tts_characters"],
                usage["tts_audio_seconds"], usage["stt_audio_seconds"],
                (latency.get("tts_ttfb") or {}).get("p50_ms"), outcome,
            )
        except Exception as exc:
            logger.error("cleanup of %s failed: %s", self.key[:64], type(exc).__name__)
            outcome = "error"
        finally:
            self._done.set_result(outcome)
        return outcome


class SessionRegistry:
    """The sessions of this process, so a drain can finalize every one of them."""

    def __init__(self) -> None:
        self._sessions: dict[str, ActiveSession] = {}

    def add(self, session: ActiveSession) -> None:
        self._sessions[session.key] = session

    def remove(self, session: ActiveSession) -> None:
        self._sessions.pop(session.key, None)

    def active(self) -> list[ActiveSession]:
        return list(self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    async def end(self, session: ActiveSession, reason: str) -> str:
        try:
            return await session.cleanup(reason)
        finally:
            self.remove(session)

    async def drain(self, reason: str = "shutdown") -> dict[str, str]:
        """Clean up every active session concurrently; session key -> finalize outcome."""
        sessions = self.active()
        if not sessions:
            return {}
        logger.info("draining %d active session(s)", len(sessions))
        outcomes = await asyncio.gather(*(self.end(s, reason) for s in sessions), return_exceptions=True)
        pairs = zip(sessions, outcomes, strict=True)
        return {s.key: (o if isinstance(o, str) else "error") for s, o in pairs}


def make_shutdown_callback(
    session: ActiveSession, registry: SessionRegistry | None = None
) -> Callable[[str], Awaitable[None]]:
    """The callback for `JobContext.add_shutdown_callback` (it receives the shutdown reason)."""

    async def on_shutdown(reason: str = "") -> None:
        if registry is not None:
            await registry.end(session, reason or "disconnected")
        else:
            await session.cleanup(reason or "disconnected")

    return on_shutdown


async def heartbeat_loop(beat: Callable[[], Awaitable[bool]], interval_s: float) -> None:
    """Keep the server's session alive (it expires idle sessions); failures are only logged."""
    while True:
        await asyncio.sleep(interval_s)
        with contextlib.suppress(Exception):
            await beat()


class ShutdownCoordinator:
    """First SIGINT/SIGTERM: drain, then `done`. Second: exit now with 128 + signal number."""

    def __init__(
        self,
        drain: Callable[[], Awaitable[Any]],
        *,
        timeout_s: float = 600.0,
        force_exit: Callable[[int], Any] = os._exit,
    ) -> None:
        self._drain = drain
        self._timeout_s = timeout_s
        self._force_exit = force_exit
        self._signal: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self._signal is not None

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self.handle_signal, sig)

    def handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._signal is None:
            self._signal = signum
            logger.info("%s received: draining (send it again to force exit)", name)
            self._task = asyncio.get_running_loop().create_task(self._run_drain())
            return
        code = forced_exit_code(signum)
        logger.warning("second signal %s: forcing exit with code %d", name, code)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        self._force_exit(code)

    async def _run_drain(self) -> None:
        try:
            await asyncio.wait_for(self._drain(), self._timeout_s)
            logger.info("drain complete")
        except TimeoutError:
            logger.error("drain did not finish within %.0fs", self._timeout_s)
        except Exception as exc:
            logger.error("drain failed: %s", type(exc).__name__)
        finally:
            self.done.set()

    async def wait(self) -> None:
        await self.done.wait()


def open_session(
    *,
    session_id: str | None,
    room: str,
    api: Any,
    monitor: LatencyMonitor,
    registry: SessionRegistry | None = None,
    heartbeat_interval_s: float | None = None,
) -> ActiveSession:
    """Start tracking one conversation: usage tracker, heartbeat task, registry entry.

    `api` is an `AgentApiClient` (finalize and heartbeat); the heartbeat runs only when the
    session exists on the server and an interval is given.
    """
    tracker = UsageTracker(session_id or f"local:{room}", monitor)
    session = ActiveSession(session_id=session_id, room=room, api=api, monitor=monitor, tracker=tracker)
    tracker.session_id = session.key
    if session_id is not None and heartbeat_interval_s:
        sid = session_id
        beat = heartbeat_loop(lambda: api.heartbeat(sid), heartbeat_interval_s)
        session.tasks.append(asyncio.get_running_loop().create_task(beat))
    if registry is not None:
        registry.add(session)
    return session
