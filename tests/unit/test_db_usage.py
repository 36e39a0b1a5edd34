"""Server-side usage accounting: counters add up, histograms stay bounded, percentiles are honest."""

from __future__ import annotations

from serve_app.db.usage import UsageEvent, apply_event, percentile


def test_events_accumulate_and_input_is_not_modified() -> None:
    first = apply_event(None, UsageEvent(characters=12, audio_seconds=1.25, engines={"flite": 3}, elapsed_s=0.08))
    snapshot = {**first}
    second = apply_event(first, UsageEvent(characters=8, audio_seconds=0.5, engines={"edge": 1, "flite": 2}, ok=False))
    assert first == snapshot
    assert second["characters"] == 20
    assert second["audio_seconds"] == 1.75
    assert second["requests"] == 2
    assert second["failed_requests"] == 1
    assert second["fallback_requests"] == 1
    assert second["engines"] == {"flite": {"requests": 2, "chunks": 5}, "edge": {"requests": 1, "chunks": 1}}
    assert second["latency_ms"]["elapsed"]["count"] == 1


def test_percentiles_never_underestimate() -> None:
    doc: dict = {}
    samples_ms = [10, 20, 30, 40, 60, 90, 150, 300, 800, 4000]
    for ms in samples_ms:
        doc = apply_event(doc, UsageEvent(characters=1, audio_seconds=0.1, elapsed_s=ms / 1000))
    histogram = doc["histograms"]["elapsed"]
    assert histogram["count"] == len(samples_ms)
    assert sum(histogram["buckets"].values()) == len(samples_ms)
    ordered = sorted(samples_ms)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]
        assert percentile(histogram, q) >= exact
    assert percentile(histogram, 1.0) == 4000.0
    summary = doc["latency_ms"]["elapsed"]
    assert summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"]


def test_histogram_size_is_bounded_however_many_requests() -> None:
    doc: dict = {}
    for i in range(2000):
        doc = apply_event(doc, UsageEvent(characters=1, audio_seconds=0.01, elapsed_s=(i % 700) / 10))
    assert len(doc["histograms"]["elapsed"]["buckets"]) <= 15
    assert doc["requests"] == 2000
    assert percentile({}, 0.5) is None
