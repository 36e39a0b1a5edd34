"""Serve deployments that host one engine each (CPU engines; Zonos adds batching in its module).

One generic class serves every engine: `serve_config.yaml` names them `FliteEngine`, `EdgeEngine`
and `ZonosEngine` and sets their resources, replicas and autoscaling there, not in code.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from config.logging import configure_from_settings
from config.settings import get_settings
from serve_app.engines.base import Engine, EngineUnavailable
from serve_app.engines.registry import build_engine

logger = logging.getLogger(__name__)


class EngineHost:
    """Hosts one `Engine` in a replica: streaming synthesis, info, dependency check, health."""

    def __init__(self, engine_name: str) -> None:
        configure_from_settings()
        self.engine: Engine = build_engine(engine_name, get_settings())
        logger.info("engine replica started: %s", engine_name)

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
        """Serve's health probe: only faults that a restart can fix fail it (see engine.health())."""
        health = getattr(self.engine, "health", None)
        if health is not None:
            problem = await health()
            if problem:
                raise EngineUnavailable(problem)


EngineDeployment = serve.deployment(EngineHost, name="EngineHost")
