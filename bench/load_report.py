"""The load test's written output: `report.json` and two PNG plots (latency, memory over time).

The JSON is the contract CI and people read (its shape is unit-tested); the plots are for eyes:
TTFB per engine with rolling percentiles and throughput, and replica RSS with the warm-up mark.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.load_client import Call

MAX_SCATTER_POINTS = 2500
REPORT_KEYS = (
    "config",
    "run",
    "requests",
    "errors",
    "ttfb_ms",
    "sessions",
    "memory",
    "db_pool",
    "verdict",
    "plots",
)


def request_counts(calls: Sequence[Call]) -> dict[str, Any]:
    """Totals and per-kind counts (create, speech, heartbeat, finalize, verify), ok or not."""
    by_kind: dict[str, dict[str, int]] = {}
    for call in calls:
        entry = by_kind.setdefault(call.kind, {"total": 0, "ok": 0, "failed": 0})
        entry["total"] += 1
        entry["ok" if call.ok else "failed"] += 1
    return {"total": len(calls), "by_kind": {k: by_kind[k] for k in sorted(by_kind)}}


def write_report(directory: Path, report: Mapping[str, Any]) -> Path:
    """`directory/report.json`, keys in the documented order."""
    missing = [key for key in REPORT_KEYS if key not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    ordered = {key: report[key] for key in REPORT_KEYS}
    path.write_text(json.dumps(ordered, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _rolling(times: np.ndarray, values: np.ndarray, width: float) -> tuple[list[float], list[float], list[float]]:
    """p50/p95 of `values` in consecutive windows of `width` seconds (bin centres)."""
    centres: list[float] = []
    p50: list[float] = []
    p95: list[float] = []
    if times.size == 0:
        return centres, p50, p95
    for start in np.arange(0.0, float(times.max()) + width, width):
        mask = (times >= start) & (times < start + width)
        if mask.any():
            centres.append(float(start + width / 2))
            a, b = np.percentile(values[mask], [50, 95])
            p50.append(float(a))
            p95.append(float(b))
    return centres, p50, p95


def plot_latency(path: Path, calls: Sequence[Call], active: Sequence[tuple[float, int]]) -> Path:
    """TTFB per request (by engine) with rolling p50/p95; below, speech throughput and sessions."""
    plt = _pyplot()
    speech = [c for c in calls if c.kind == "speech"]
    ok = [c for c in speech if c.ok and c.ttfb_s is not None]
    failed = [c for c in speech if not c.ok]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=[2, 1])
    for engine in sorted({c.engine or "unknown" for c in ok}):
        points = [c for c in ok if (c.engine or "unknown") == engine]
        points = points[:: max(1, len(points) // MAX_SCATTER_POINTS)]  # a readable, small PNG; the lines use all
        top.scatter(
            [c.t for c in points],
            [c.ttfb_s * 1000 for c in points if c.ttfb_s is not None],
            s=4,
            alpha=0.35,
            label=f"TTFB {engine}",
        )
    if failed:
        top.scatter([c.t for c in failed], [0] * len(failed), marker="x", color="red", label="failed")
    times = np.asarray([c.t for c in ok], dtype=float)
    values = np.asarray([(c.ttfb_s or 0.0) * 1000 for c in ok], dtype=float)
    width = max(2.0, float(times.max()) / 40) if times.size else 2.0
    centres, p50, p95 = _rolling(times, values, width)
    top.plot(centres, p50, color="black", linewidth=1.5, label="p50")
    top.plot(centres, p95, color="darkorange", linewidth=1.5, label="p95")
    top.set_ylabel("time to first byte (ms)")
    top.set_title("Streaming speech latency under load")
    top.grid(alpha=0.3)
    top.legend(loc="upper right", fontsize=8, markerscale=3)
    if times.size:
        edges = np.arange(0.0, float(times.max()) + width, width)
        counts, _ = np.histogram([c.t for c in speech], bins=np.append(edges, edges[-1] + width))
        bottom.bar(edges + width / 2, counts / width, width=width * 0.9, color="steelblue", label="speech req/s")
    bottom.set_ylabel("requests/s")
    bottom.set_xlabel("seconds since start")
    bottom.grid(alpha=0.3)
    if active:
        twin = bottom.twinx()
        twin.plot([a[0] for a in active], [a[1] for a in active], color="seagreen", label="active sessions")
        twin.set_ylabel("active sessions")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_memory(
    path: Path, samples: Sequence[tuple[float, Mapping[str, int]]], warmup_t: float | None, load_end_t: float | None
) -> Path:
    """RSS per replica over time, with the end of warm-up and the end of load marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    keys = sorted({key for _, sample in samples for key in sample})
    for key in keys:
        points = [(t, sample[key] / 1_048_576) for t, sample in samples if key in sample]
        ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, label=key)
    if warmup_t is not None:
        ax.axvline(warmup_t, color="gray", linestyle="--", linewidth=1, label="end of warm-up")
    if load_end_t is not None:
        ax.axvline(load_end_t, color="black", linestyle=":", linewidth=1, label="end of load")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("Serve replica memory over time")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "replica memory not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
