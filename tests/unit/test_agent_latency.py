"""LatencyMonitor keeps memory bounded per session and summarizes the recent window."""

from __future__ import annotations

import tracemalloc

from agent.latency import LatencyMonitor, percentile


def test_memory_stays_bounded_over_10000_records() -> None:
    monitor = LatencyMonitor(window=256)
    tracemalloc.start()
    try:
        for i in range(1_000):
            monitor.record("s1", "tts_ttfb", i / 1000)
        after_1k, _ = tracemalloc.get_traced_memory()
        for i in range(1_000, 10_000):
            monitor.record("s1", "tts_ttfb", i / 1000)
        after_10k, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert monitor.samples("s1", "tts_ttfb") == 256
    assert monitor.held_samples() == 256
    # 9,000 more samples, no more memory than a few stray objects (a float list would add ~300 KB).
    assert after_10k - after_1k < 16_384
    summary = monitor.summary("s1")["tts_ttfb"]
    assert summary["count"] == 10_000
    assert summary["window"] == 256
    # Percentiles describe the recent window (the last 256 samples: 9.744 s .. 9.999 s).
    assert 9744 <= summary["p50_ms"] <= 9999
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["max_ms"] == 9999.0


def test_metric_names_are_capped_and_clear_forgets_the_session() -> None:
    monitor = LatencyMonitor(window=8, max_metrics=4)
    for i in range(100):
        monitor.record("s1", f"metric-{i}", 0.01)
    monitor.record("s2", "llm_ttft", 0.2)
    assert len(monitor.summary("s1")) == 4
    assert monitor.held_samples() == 5
    assert monitor.clear("s1") is True
    assert monitor.clear("s1") is False
    assert monitor.summary("s1") == {}
    assert monitor.sessions() == ["s2"]


def test_bad_values_are_ignored_and_percentiles_use_nearest_rank() -> None:
    monitor = LatencyMonitor(window=16)
    for value in (float("nan"), -1.0, float("inf")):
        monitor.record("s", "x", value)
    assert monitor.summary("s") == {}
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile(list(range(1, 101)), 0.95) == 95
