"""LatencyMonitor: per-session latency samples in fixed-size ring buffers, with summaries.

A voice agent records a handful of latencies every turn (LLM time to first token, TTS time to
first byte, end-of-utterance delay) for hours. Keeping every sample would grow without bound,
so each (session, metric) keeps only the last `window` samples in a `deque(maxlen=window)`,
plus running totals (count, sum, max) for the whole session. The number of metric names per
session is capped too, so a caller inventing names cannot grow memory either. `clear()` drops a
session entirely; the cleanup callback calls it when the session ends.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_METRICS = 16


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..1); None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class _Series:
    """One metric of one session: the recent window and whole-session running totals."""

    window: deque[float]
    count: int = 0
    total: float = 0.0
    maximum: float = 0.0

    def add(self, seconds: float) -> None:
        self.window.append(seconds)
        self.count += 1
        self.total += seconds
        self.maximum = max(self.maximum, seconds)

    def summary(self) -> dict[str, Any]:
        recent = list(self.window)
        return {
            "count": self.count,
            "window": len(recent),
            "mean_ms": _ms(self.total / self.count) if self.count else None,
            "p50_ms": _ms(percentile(recent, 0.50)),
            "p95_ms": _ms(percentile(recent, 0.95)),
            "max_ms": _ms(self.maximum) if self.count else None,
        }


@dataclass
class _Session:
    series: dict[str, _Series] = field(default_factory=dict)
    dropped: int = 0  # samples refused because the metric-name cap was reached


class LatencyMonitor:
    """Bounded latency bookkeeping for many concurrent sessions (thread safe)."""

    def __init__(self, window: int = 512, *, max_metrics: int = DEFAULT_MAX_METRICS) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.max_metrics = max_metrics
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def record(self, session_id: str, metric: str, seconds: float) -> None:
        """Add one sample (in seconds). Negative or non-finite values are ignored."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        with self._lock:
            session = self._sessions.setdefault(session_id, _Session())
            series = session.series.get(metric)
            if series is None:
                if len(session.series) >= self.max_metrics:
                    session.dropped += 1
                    return
                series = session.series[metric] = _Series(deque(maxlen=self.window))
            series.add(seconds)

    def summary(self, session_id: str) -> dict[str, dict[str, Any]]:
        """Per metric: count, window size, mean, p50, p95 and max in milliseconds."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return {}
            return {name: series.summary() for name, series in session.series.items()}

    def samples(self, session_id: str, metric: str) -> int:
        """How many samples are held in memory right now for one metric (at most `window`)."""
        with self._lock:
            session = self._sessions.get(session_id)
            series = session.series.get(metric) if session else None
            return len(series.window) if series else 0

    def clear(self, session_id: str) -> bool:
        """Forget a session; True when there was something to forget."""
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def held_samples(self) -> int:
        """Total samples in memory across all sessions (what bounds this object's size)."""
        with self._lock:
            return sum(len(s.window) for sess in self._sessions.values() for s in sess.series.values())


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)
