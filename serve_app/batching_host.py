"""A Serve deployment for engines that batch: loads the model before traffic, streams every row.

`BatchingEngineHost` answers like every engine deployment (`synthesize` streaming, `info`,
`check`, `check_health`), so the router reaches it the same way, and adds what a batching
engine needs from its replica:

- The engine is built in the replica from what the deployment is bound with: a zero-argument
  callable (picklable: Serve ships it to the replica; tests and benchmarks pass one that builds a
  small model) or a registered engine name (built by `serve_app.engines.registry.build_engine`
  from the settings, as `EngineHost` does). Then `load()` and `warmup()` run in the constructor,
  before Serve routes any request here, so no caller waits for the model or for kernels to compile.
- `synthesize` streams the engine's own stream unchanged, including the empty chunk `b""` the
  engine yields when the request joins a batch (the router starts its first-byte timer there)
  and `EngineBusy` when the engine's queue is full (never a strike).
- The engine forms batches itself (`serve_app.batching.Batcher`): Serve's `@serve.batch` cannot
  tell the batch that one caller left, and Serve keeps one batch running at a time, while the
  engine drops a cancelled row at its next step. Serve's `max_ongoing_requests` must therefore
  be at least the engine's batch size plus its queue for batches to fill.
- `check_health` asks the engine's `health()`: a fault a restart can fix (a CUDA error) fails
  it and Serve replaces the replica; a missing package or GPU does not (a restart cannot fix
  those), the replica stays up and `check()` says why.

What the engine provides (`BatchingEngine`): `name`, `sample_rate`, `load()`, `warmup()`,
`synthesize(text, voice, language=, speed=)`, `voices()`, `check()` and optionally `health()`.
Resources, replicas and autoscaling come from serve_config.yaml, not from here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, runtime_checkable

from ray import serve

from serve_app.engines.base import EngineCheck, EngineUnavailable, Voice

logger = logging.getLogger(__name__)


@runtime_checkable
class BatchingEngine(Protocol):
    """The engine side of the host's contract (see the module docstring)."""

    name: str
    sample_rate: int

    def load(self) -> None: ...

    def warmup(self) -> None: ...

    def synthesize(
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0
    ) -> AsyncIterator[bytes]: ...

    def voices(self) -> list[Voice]: ...

    async def check(self) -> EngineCheck: ...


class BatchingEngineHost:
    """Hosts one batching engine in a replica (see the module docstring)."""

    def __init__(self, engine_factory: Callable[[], Any] | str) -> None:
        try:
            from config.logging import configure_from_settings

            configure_from_settings()
        except Exception as exc:  # logging setup must never keep a replica from starting
            logger.warning("logging not configured from settings: %s", exc)
        if isinstance(engine_factory, str):
            from config.settings import get_settings
            from serve_app.engines.registry import build_engine

            engine = build_engine(engine_factory, get_settings())
        else:
            engine = engine_factory()
        if not isinstance(engine, BatchingEngine):
            raise TypeError(f"{type(engine).__name__} does not implement the batching engine contract")
        self.engine: BatchingEngine = engine
        self.engine.load()
        self.engine.warmup()
        logger.info("batching engine replica started: %s", self.engine.name)

    async def synthesize(
        self, text: str, voice: str | None, language: str | None, speed: float
    ) -> AsyncIterator[bytes]:
        async for chunk in self.engine.synthesize(text, voice, language=language, speed=speed):
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
        """Serve's health probe: only faults that a restart can fix fail it (see the engine's `health()`)."""
        health = getattr(self.engine, "health", None)
        if health is not None:
            problem = await health()
            if problem:
                raise EngineUnavailable(problem)


BatchingDeployment = BatchingEngineDeployment = serve.deployment(
    BatchingEngineHost,
    name="BatchingEngineHost",
    max_ongoing_requests=48,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
