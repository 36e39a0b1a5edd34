"""Router metrics on Ray's Prometheus endpoint (`ray.serve.metrics`); no-ops outside a Ray worker.

Names are prefixed `tts_` and exported by Ray as `ray_tts_*`. The metric objects are created once
per process (several routers in one process share them), and a metrics failure never breaks
synthesis: every call is guarded.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

TTFB_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0]
BREAKER_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

# Outcomes of one attempt of one engine at one sentence (the `outcome` tag).
OUTCOMES = (
    "ok", "error", "timeout", "stall", "empty", "invalid_input", "busy", "cancelled", "probe_ok", "probe_failed",
)


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


@functools.lru_cache(maxsize=1)
def _instruments() -> tuple[Any, Any, Any, Any]:
    return (
        _make("Counter", "tts_engine_requests", "Engine attempts per engine and outcome", ("engine", "outcome")),
        _make(
            "Counter", "tts_fallbacks", "Fallbacks from one engine to the next", ("from_engine", "to_engine", "reason")
        ),
        _make("Histogram", "tts_ttfb_seconds", "Engine time to first audio byte", ("engine",), boundaries=TTFB_BUCKETS),
        _make("Gauge", "tts_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open", ("engine",)),
    )


def _guard(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except Exception as exc:  # a metrics backend hiccup is not the caller's problem
        logger.debug("metric update failed: %s", exc)


class RouterMetrics:
    """Attempts and outcomes per engine, fallbacks (from, to, why), time to first byte, breaker state."""

    def __init__(self) -> None:
        self._requests, self._fallbacks, self._ttfb, self._breaker = _instruments()

    def outcome(self, engine: str, outcome: str) -> None:
        _guard(self._requests.inc, 1, tags={"engine": engine, "outcome": outcome})

    def fallback(self, source: str, target: str, reason: str) -> None:
        _guard(self._fallbacks.inc, 1, tags={"from_engine": source, "to_engine": target, "reason": reason})

    def ttfb(self, engine: str, seconds: float) -> None:
        _guard(self._ttfb.observe, seconds, tags={"engine": engine})

    def breaker_state(self, engine: str, state: Any) -> None:
        value = BREAKER_VALUE.get(str(getattr(state, "value", state)), 0.0)
        _guard(self._breaker.set, value, tags={"engine": engine})
