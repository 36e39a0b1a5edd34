"""The fallback router: one request in, one ordered stream of audio out, across a chain of engines.

A plain object living in each ingress replica and each agent actor (no extra Serve hop per
chunk). `core` streams and fails over, `admission` keeps per-engine concurrency, `recovery` probes
open engines, `status` reports them, `clients` reaches engines (in-process or by handle),
`shared` and `board_actor` share breakers across the cluster, and `compose` builds one from settings.
"""

from serve_app.router.compose import compose_router, compose_router_from_handles, router_config
from serve_app.router.core import FallbackRouter
from serve_app.router.types import AudioChunk, EngineLimits, RouterConfig, Sentence, SpeechRequest

__all__ = [
    "AudioChunk",
    "EngineLimits",
    "FallbackRouter",
    "RouterConfig",
    "Sentence",
    "SpeechRequest",
    "compose_router",
    "compose_router_from_handles",
    "router_config",
]
