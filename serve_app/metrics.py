"""Router metrics on Ray's Prometheus endpoint (`ray.serve.metrics`), no-ops outside a Ray worker.

Names are prefixed `tts_` and exported by Ray as `ray_tts_*`; `deploy/grafana/` charts them.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_TTFB_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0]
_BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class _Noop:
    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...


def _make(kind: str, name: str, description: str, tag_keys: tuple[str, ...], **extra: Any) -> Any:
    try:
        import ray

        if not ray.is_initialized():
            return _Noop()
        from ray.serve import metrics

        factory = getattr(metrics, kind)
        return factory(name, description=description, tag_keys=tag_keys, **extra)
    except Exception as exc:  # metrics must never break synthesis
        logger.debug("metrics disabled for %s: %s", name, exc)
        return _Noop()


class RouterMetrics:
    """Requests and outcomes per engine, fallbacks, time to first byte, breaker state."""

    def __init__(self) -> None:
        self._requests = _make("Counter", "tts_engine_requests", "Sentences attempted per engine and outcome", ("engine", "outcome"))
        self._fallbacks = _make("Counter", "tts_fallbacks", "Fallbacks from one engine to the next", ("from_engine", "to_engine"))
        self._ttfb = _make(
            "Histogram", "tts_ttfb_seconds", "Time to first audio byte per engine", ("engine",), boundaries=_TTFB_BUCKETS
        )
        self._breaker = _make("Gauge", "tts_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open", ("engine",))

    def outcome(self, engine: str, outcome: str) -> None:
        self._requests.inc(1, tags={"engine": engine, "outcome": outcome})

    def fallback(self, source: str, target: str) -> None:
        self._fallbacks.inc(1, tags={"from_engine": source, "to_engine": target})

    def ttfb(self, engine: str, seconds: float) -> None:
        self._ttfb.observe(seconds, tags={"engine": engine})

    def breaker_state(self, engine: str, state: Any) -> None:
        self._breaker.set(_BREAKER_VALUE.get(str(getattr(state, "value", state)), 0.0), tags={"engine": engine})
