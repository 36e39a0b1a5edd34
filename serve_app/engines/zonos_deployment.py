"""The Zonos Serve deployment ("ZonosEngine"): `EngineHost` plus batching, warm-up and CUDA health.

- Same methods as every engine deployment (`synthesize` streaming, `info`, `check`,
  `check_health`), inherited from `EngineHost`, so the router reaches it like any other engine.
- `@serve.batch` collects concurrent requests of this replica (up to ZONOS_MAX_BATCH_SIZE, waiting
  at most ZONOS_BATCH_WAIT_TIMEOUT_S for the batch to fill) and speaks them with one `generate`
  call: the GPU runs one forward pass per step for the whole batch instead of one per request.
- The model loads and a warm-up sentence is spoken in the constructor, before Serve routes any
  request here, so no user waits for loading or kernel compilation.
- `check_health` (inherited) asks `ZonosEngine.health()`: a CUDA error fails it, and Serve
  replaces the replica. A missing package or GPU does not: a restart cannot fix those, so the
  replica stays up and `check()` (and `/v1/engines`) reports the reason.

Resources, replicas and autoscaling are set in deploy/serve_config.gpu.yaml, not here; the values
below are defaults for code that binds the deployment directly (tests, `serve run` without YAML).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from config.settings import get_settings
from serve_app.deployments import EngineHost
from serve_app.engines.zonos import BatchResult, ZonosEngine, ZonosRequest


class ZonosHost(EngineHost):
    """Hosts `ZonosEngine` with Serve's request batching."""

    engine: ZonosEngine

    def __init__(self) -> None:
        super().__init__("zonos")
        settings = get_settings()
        # The decorator's numbers are placeholders: the settings decide, per replica.
        batcher: Any = self.render_batch  # the wrapper @serve.batch returns carries these setters
        batcher.set_max_batch_size(settings.zonos_max_batch_size)
        batcher.set_batch_wait_timeout_s(settings.zonos_batch_wait_timeout_s)
        self.engine.use_renderer(self.render_batch)
        self.engine.load()
        if settings.zonos_warmup:
            self.engine.warmup()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def render_batch(self, requests: list[ZonosRequest]) -> list[BatchResult]:
        """Called once per batch with every queued request; each caller gets its own PCM or error."""
        return await self.engine.render_batch(requests)


ZonosDeployment = serve.deployment(
    ZonosHost,
    name="ZonosEngine",
    max_ongoing_requests=16,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
