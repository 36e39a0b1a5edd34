"""Pure pieces of the load test: latency summaries and the pass/leak verdict.

Kept free of I/O so the rules that decide the exit code are unit-tested on their own: a load
test whose verdict logic is wrong reports green on a leaking service, which is worse than none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Count, mean and p50/p95/p99/max in milliseconds (None when there is nothing to summarise)."""
    if not seconds:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    values = np.asarray(seconds, dtype=float) * 1000.0
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "count": int(values.size),
        "mean": round(float(values.mean()), 1),
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(float(values.max()), 1),
    }


def summaries_by(pairs: Iterable[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """`latency_summary` per key (the engine that answered), keys sorted for a stable report."""
    groups: dict[str, list[float]] = {}
    for key, value in pairs:
        groups.setdefault(key, []).append(value)
    return {key: latency_summary(groups[key]) for key in sorted(groups)}


def growth_pct(before: float, after: float) -> float | None:
    """Relative growth in percent; None when there is no baseline to compare with."""
    if before <= 0:
        return None
    return round((after - before) / before * 100.0, 2)


def memory_growth(baseline: Mapping[str, int], end: Mapping[str, int]) -> tuple[float | None, int, int]:
    """Growth of the replicas present in both samples: (percent, baseline bytes, end bytes).

    Only replicas alive at both points count: a replica that autoscaling added later has no
    baseline, and one that was replaced would compare two different processes.
    """
    common = sorted(set(baseline) & set(end))
    before = sum(int(baseline[key]) for key in common)
    after = sum(int(end[key]) for key in common)
    return growth_pct(before, after), before, after


def window_median(samples: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Per-replica median over a window of samples.

    One sample is one instant; a window of them is not thrown by the moment a burst of
    in-flight requests happens to be held in memory, so growth compares levels, not spikes.
    """
    keys = sorted({key for sample in samples for key in sample})
    return {key: int(np.median([s[key] for s in samples if key in s])) for key in keys}


def growth_windows(count: int, fraction: float = 0.1, minimum: int = 3) -> int:
    """How many samples the baseline and end windows each take out of `count` (never overlapping)."""
    return max(1, min(count // 2, max(minimum, int(count * fraction))))


@dataclass
class Thresholds:
    """What makes a run fail: memory growth after warm-up, pool connections still checked out.

    Growth is judged only over at least `min_requests_after_warmup` utterances: over a few hundred
    requests RSS mostly shows the allocator's high-water mark after a burst of in-flight streams,
    which a leak test must not confuse with memory that grows with every request.
    """

    max_memory_growth_pct: float = 5.0
    max_pool_checked_out: int = 0
    min_requests_after_warmup: int = 1000
    # Loaded p95 time to first byte at most this many times the unloaded p50 (None: not judged).
    max_ttfb_p95_factor: float | None = 5.0


@dataclass
class Verdict:
    passed: bool
    leak: bool
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "leak": self.leak, "failures": self.failures, "warnings": self.warnings}


def evaluate(
    *,
    errors: int,
    sessions_created: int,
    sessions_expected: int,
    sessions_completed: int,
    memory_growth_pct: float | None,
    memory_reason: str | None,
    pool_checked_out: int | None,
    thresholds: Thresholds,
    requests_after_warmup: int | None = None,
    ttfb_p95_ms: float | None = None,
    unloaded_ttfb_p50_ms: float | None = None,
) -> Verdict:
    """The run's verdict. Any failed request, any session not COMPLETED, or a leak fails it.

    A memory figure that could not be taken (remote deployment, no replica found) is a warning,
    not a pass or a fail: the report says so instead of claiming a leak check that never ran.
    The pool figure is required: without `/health/db` nobody can tell whether connections leak.
    """
    failures: list[str] = []
    warnings: list[str] = []
    leak = False
    if errors:
        failures.append(f"{errors} request(s) failed")
    if sessions_created < sessions_expected:
        failures.append(f"only {sessions_created}/{sessions_expected} sessions were created")
    if sessions_completed < sessions_created:
        failures.append(f"{sessions_created - sessions_completed}/{sessions_created} sessions are not COMPLETED")
    judged = requests_after_warmup is None or requests_after_warmup >= thresholds.min_requests_after_warmup
    if memory_growth_pct is None:
        warnings.append(f"replica memory not measured: {memory_reason or 'no samples'}")
    elif not judged:
        warnings.append(
            f"replica memory changed {memory_growth_pct:+.2f}% over only {requests_after_warmup} requests after "
            f"warm-up; a leak verdict needs {thresholds.min_requests_after_warmup} (use --requests-target)"
        )
    elif memory_growth_pct > thresholds.max_memory_growth_pct:
        leak = True
        failures.append(
            f"replica memory grew {memory_growth_pct:.2f}% after warm-up (limit {thresholds.max_memory_growth_pct:g}%)"
        )
    factor = thresholds.max_ttfb_p95_factor
    if factor is not None:
        if ttfb_p95_ms is None or not unloaded_ttfb_p50_ms:
            warnings.append("time to first byte not judged: no loaded p95 or no unloaded p50")
        elif ttfb_p95_ms > factor * unloaded_ttfb_p50_ms:
            failures.append(
                f"p95 time to first byte {ttfb_p95_ms:g} ms is {ttfb_p95_ms / unloaded_ttfb_p50_ms:.1f}x the unloaded "
                f"p50 {unloaded_ttfb_p50_ms:g} ms (limit {factor:g}x)"
            )
    if pool_checked_out is None:
        failures.append("database pool state unknown at the end (/health/db did not answer)")
    elif pool_checked_out > thresholds.max_pool_checked_out:
        leak = True
        failures.append(f"{pool_checked_out} database connection(s) still checked out at the end")
    return Verdict(passed=not failures, leak=leak, failures=failures, warnings=warnings)


def parse_range(text: str) -> tuple[float, float]:
    """`"4-6"` -> (4.0, 6.0); `"5"` -> (5.0, 5.0). Rejects negative or reversed ranges."""
    parts = [part.strip() for part in str(text).split("-", 1)]
    try:
        low = float(parts[0])
        high = float(parts[-1])
    except ValueError:
        raise ValueError(f"expected a number or a range like 4-6, got {text!r}") from None
    if low < 0 or high < low:
        raise ValueError(f"expected 0 <= low <= high, got {text!r}")
    return low, high
