"""The Serve deployment that hosts one engine (resources and replicas live in serve_config.yaml).

One class serves every engine; `build_app` names it after the engine (`<Name>Engine`).

- The engine is built in the replica from its registered name (or, for tests and benchmarks, a
  zero-argument picklable factory). An engine with a model to load (`load()`, `warmup()`) gets both
  in the constructor, before Serve routes any request here, so no caller waits for weights or for
  kernels to compile.
- `synthesize` streams the engine's own stream unchanged, including the empty chunk `b""` that
  says the request's work has begun: an engine that queues work itself (`Engine.queues_work`: a
  batch, a lock) yields it when the request leaves that queue; for the others the host yields it
  first, when the replica has the request. The router starts its first-byte timer there, so time
  spent in Serve's queue or the engine's is busy, never a strike. `EngineBusy` (the engine's
  queue is full) is never a strike either. Such engines form
  their batches themselves (`serve_app.batching`): Serve's `@serve.batch` cannot tell a batch that
  one caller left, and the engine drops a cancelled row at its next step.
- `check_health` asks the engine's `health()` when it has one: a fault a restart can fix (a CUDA
  error) fails it and Serve replaces the replica; a missing package or GPU does not (a restart
  cannot fix those), the replica stays up and `check()` says why. It also fails after
  `TTS_REPLICA_MAX_FAILURES` consecutive engine errors of this replica (`core.replica.FailureStreak`):
  the router's strikes are per engine, so a bad replica among healthy ones is only found here.
- `tag_replica`: the stream starts with a `ReplicaTag` (this replica's id), so the router can say
  which replica a strike belongs to; Serve's handles do not tell the caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from config.logging import configure_from_settings
from config.settings import get_settings
from serve_app.core.errors import EngineBusy, EngineUnavailable, InvalidInput, reason_of
from serve_app.core.gate import PRIORITY_NEW
from serve_app.core.replica import FailureStreak, ReplicaTag
from serve_app.core.timing import WordMark
from serve_app.core.wire import pack
from serve_app.engines.base import Engine
from serve_app.engines.registry import build_engine, prepare

logger = logging.getLogger(__name__)


class EngineHost:
    """Hosts one `Engine` in a replica: streaming synthesis, info, dependency check, health."""

    def __init__(self, engine: str | Callable[[], Engine]) -> None:
        configure_from_settings()
        settings = get_settings()
        self.engine: Engine = build_engine(engine, settings) if isinstance(engine, str) else engine()
        self.failures = FailureStreak(settings.router.replica_max_failures)
        self.replica = _replica_id()
        if not isinstance(self.engine, Engine):
            raise TypeError(f"{type(self.engine).__name__} is not an Engine")
        prepare(self.engine)
        logger.info("engine replica started: %s", self.engine.name)

    async def synthesize(
        self,
        text: str,
        voice: str | None,
        language: str | None,
        speed: float,
        instructions: str | None = None,
        tag_replica: bool = False,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark | ReplicaTag]:
        """The engine's stream: PCM chunks and, from engines with alignment, `WordMark`s (pickled),
        grouped into fewer messages by `serve_app.core.wire.pack` (the caller unpacks). `priority`
        reaches engines that queue work (`serve_app.core.gate`)."""
        stream = self._stream(text, voice, language, speed, instructions, tag_replica, priority)
        try:
            async for message in pack(stream):
                yield message
        except (InvalidInput, EngineBusy):
            raise  # the caller's mistake, a full queue: nothing wrong with this replica
        except Exception as exc:  # cancellation (BaseException) is the caller's choice and not counted
            self.failures.failed(reason_of(exc))
            raise
        self.failures.succeeded()

    async def _stream(
        self,
        text: str,
        voice: str | None,
        language: str | None,
        speed: float,
        instructions: str | None,
        tag_replica: bool,
        priority: int,
    ) -> AsyncIterator[bytes | WordMark | ReplicaTag]:
        if tag_replica and self.replica is not None:
            yield ReplicaTag(self.replica)
        stream = self.engine.open_stream(
            text, voice, language=language, speed=speed, instructions=instructions, priority=priority
        )
        if not self.engine.queues_work:
            yield b""  # the work begins now: this replica has the request
        async for chunk in stream:
            yield chunk

    def info(self) -> dict[str, Any]:
        return {
            "name": self.engine.name,
            "sample_rate": self.engine.sample_rate,
            "voices": [v.to_dict() for v in self.engine.voices()],
        }

    async def check(self) -> dict[str, Any]:
        return (await self.engine.check()).to_dict()

    async def check_health(self) -> None:
        """Serve's health probe: only faults that a restart can fix fail it (see engine.health())."""
        streak = self.failures.problem()
        if streak:
            raise EngineUnavailable(f"replica {self.replica}: {streak}")
        health = getattr(self.engine, "health", None)
        if health is not None:
            problem = await health()
            if problem:
                raise EngineUnavailable(problem)


def _replica_id() -> str | None:
    """This Serve replica's id (None outside a replica: tests and benchmarks build hosts directly)."""
    try:
        return str(serve.get_replica_context().replica_tag)
    except Exception:  # not running inside a Serve replica
        return None


EngineDeployment = serve.deployment(
    EngineHost,
    name="EngineHost",
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
