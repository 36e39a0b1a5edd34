"""Per-session usage the service measures itself (`server_usage`): pure, mergeable arithmetic.

Each speech request with a `session_id` adds one `UsageEvent`. Latencies go into fixed
histogram buckets rather than a list of samples, so the stored document stays small however
long the session runs, and percentiles are read off the buckets (upper bound of the bucket the
quantile falls in: an honest over-estimate, never an under-estimate).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

BUCKETS_MS: tuple[float, ...] = (25, 50, 100, 200, 350, 500, 750, 1000, 1500, 2500, 5000, 10000, 30000, 60000)
_INF = "inf"


@dataclass(frozen=True)
class UsageEvent:
    """What one speech request consumed (see serve_app/api/speech.py)."""

    characters: int
    audio_seconds: float
    engines: dict[str, int] = field(default_factory=dict)  # engine -> audio chunks it produced
    ok: bool = True
    elapsed_s: float | None = None
    ttfb_s: float | None = None


def _bucket(ms: float) -> str:
    for bound in BUCKETS_MS:
        if ms <= bound:
            return f"{bound:g}"
    return _INF


def _observe(histogram: dict[str, Any], ms: float) -> None:
    buckets = histogram.setdefault("buckets", {})
    key = _bucket(ms)
    buckets[key] = int(buckets.get(key, 0)) + 1
    histogram["count"] = int(histogram.get("count", 0)) + 1
    histogram["max"] = round(max(float(histogram.get("max", 0.0)), ms), 2)


def percentile(histogram: dict[str, Any], q: float) -> float | None:
    """Upper bound (ms) of the bucket holding quantile `q` (0..1); the max for the last bucket."""
    count = int(histogram.get("count", 0))
    if count == 0:
        return None
    rank = max(1, math.ceil(q * count))
    seen = 0
    buckets = histogram.get("buckets", {})
    for bound in [*(f"{b:g}" for b in BUCKETS_MS), _INF]:
        seen += int(buckets.get(bound, 0))
        if seen >= rank:
            return float(histogram.get("max", 0.0)) if bound == _INF else min(float(bound), histogram["max"])
    return float(histogram.get("max", 0.0))


def summarize(histogram: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": int(histogram.get("count", 0)),
        "p50": percentile(histogram, 0.50),
        "p95": percentile(histogram, 0.95),
        "p99": percentile(histogram, 0.99),
        "max": histogram.get("max"),
    }


def apply_event(current: dict[str, Any] | None, event: UsageEvent) -> dict[str, Any]:
    """A new usage document: `current` plus `event` (the input is not modified)."""
    doc = copy.deepcopy(current) if current else {}
    doc["characters"] = int(doc.get("characters", 0)) + max(event.characters, 0)
    doc["audio_seconds"] = round(float(doc.get("audio_seconds", 0.0)) + max(event.audio_seconds, 0.0), 3)
    doc["requests"] = int(doc.get("requests", 0)) + 1
    if not event.ok:
        doc["failed_requests"] = int(doc.get("failed_requests", 0)) + 1
    if len(event.engines) > 1:  # more than one engine spoke: the router fell back mid-request
        doc["fallback_requests"] = int(doc.get("fallback_requests", 0)) + 1
    engines = doc.setdefault("engines", {})
    for name, chunks in event.engines.items():
        entry = engines.setdefault(str(name)[:32], {"requests": 0, "chunks": 0})
        entry["requests"] += 1
        entry["chunks"] += int(chunks)
    histograms = doc.setdefault("histograms", {})
    latency = doc.setdefault("latency_ms", {})
    for name, seconds in (("elapsed", event.elapsed_s), ("ttfb", event.ttfb_s)):
        if seconds is None or seconds < 0:
            continue
        histogram = histograms.setdefault(name, {})
        _observe(histogram, seconds * 1000.0)
        latency[name] = summarize(histogram)
    return doc
