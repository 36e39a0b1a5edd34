"""The load test's verdict rules: percentiles, memory growth, leak detection, ranges."""

from __future__ import annotations

import pytest

from bench.load_stats import (
    Thresholds,
    evaluate,
    growth_pct,
    growth_windows,
    latency_summary,
    memory_growth,
    parse_range,
    summaries_by,
    window_median,
)


def test_latency_summary_percentiles_in_ms() -> None:
    summary = latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["count"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p95"] == pytest.approx(95.05, abs=0.1)
    assert summary["p99"] == pytest.approx(99.01, abs=0.1)
    assert summary["max"] == 100.0
    assert summary["mean"] == pytest.approx(50.5)


def test_latency_summary_empty_is_all_none() -> None:
    assert latency_summary([]) == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}


def test_summaries_by_groups_per_engine() -> None:
    result = summaries_by([("flite", 0.02), ("zonos", 0.2), ("flite", 0.04)])
    assert list(result) == ["flite", "zonos"]
    assert result["flite"]["count"] == 2
    assert result["flite"]["p50"] == pytest.approx(30.0)
    assert result["zonos"]["max"] == pytest.approx(200.0)


def test_growth_pct() -> None:
    assert growth_pct(100, 104) == 4.0
    assert growth_pct(100, 90) == -10.0
    assert growth_pct(0, 50) is None


def test_memory_growth_counts_only_replicas_present_at_both_points() -> None:
    baseline = {"Ingress#1": 100, "FliteEngine#2": 100, "FliteEngine#3": 50}  # #3 was replaced later
    end = {"Ingress#1": 110, "FliteEngine#2": 100, "FliteEngine#4": 500}  # #4 came with autoscaling
    pct, before, after = memory_growth(baseline, end)
    assert (before, after) == (200, 210)
    assert pct == 5.0


def _verdict(**overrides: object) -> object:
    args: dict[str, object] = {
        "errors": 0,
        "sessions_created": 100,
        "sessions_expected": 100,
        "sessions_completed": 100,
        "memory_growth_pct": 1.0,
        "memory_reason": None,
        "pool_checked_out": 0,
        "thresholds": Thresholds(max_memory_growth_pct=5.0),
        "ttfb_p95_ms": 120.0,
        "unloaded_ttfb_p50_ms": 40.0,
    }
    args.update(overrides)
    return evaluate(**args)  # type: ignore[arg-type]


def test_clean_run_passes() -> None:
    verdict = _verdict()
    assert verdict.passed and not verdict.leak and verdict.failures == []


def test_any_failed_request_fails_without_being_a_leak() -> None:
    verdict = _verdict(errors=1)
    assert not verdict.passed and not verdict.leak
    assert verdict.failures == ["1 request(s) failed"]


def test_sessions_not_completed_or_not_created_fail() -> None:
    assert _verdict(sessions_completed=99).failures == ["1/100 sessions are not COMPLETED"]
    assert _verdict(sessions_created=98, sessions_completed=98).failures == ["only 98/100 sessions were created"]


def test_memory_growth_over_the_limit_is_a_leak() -> None:
    verdict = _verdict(memory_growth_pct=5.01)
    assert not verdict.passed and verdict.leak
    assert "5.01%" in verdict.failures[0]
    assert _verdict(memory_growth_pct=5.0).passed  # the limit itself is allowed


def test_pool_connection_held_at_the_end_is_a_leak() -> None:
    verdict = _verdict(pool_checked_out=2)
    assert verdict.leak and not verdict.passed
    assert verdict.failures == ["2 database connection(s) still checked out at the end"]


def test_unknown_pool_fails_but_unmeasured_memory_only_warns() -> None:
    assert not _verdict(pool_checked_out=None).passed
    verdict = _verdict(memory_growth_pct=None, memory_reason="remote host")
    assert verdict.passed
    assert verdict.warnings == ["replica memory not measured: remote host"]


@pytest.mark.parametrize(("text", "expected"), [("4-6", (4.0, 6.0)), ("0.5", (0.5, 0.5)), (" 1 - 2 ", (1.0, 2.0))])
def test_parse_range(text: str, expected: tuple[float, float]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["6-4", "-1", "a-b", ""])
def test_parse_range_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_range(text)


def test_window_median_ignores_a_spike() -> None:
    window = [{"Ingress#1": 100}, {"Ingress#1": 300, "Flite#2": 10}, {"Ingress#1": 102}]
    assert window_median(window) == {"Flite#2": 10, "Ingress#1": 102}


def test_growth_windows_never_overlap() -> None:
    assert growth_windows(100) == 10
    assert growth_windows(20) == 3
    assert growth_windows(4) == 2
    assert growth_windows(1) == 1


def test_memory_growth_is_only_judged_over_enough_requests() -> None:
    short = _verdict(memory_growth_pct=9.0, requests_after_warmup=358)
    assert short.passed and not short.leak
    assert "over only 358 requests" in short.warnings[0]
    long = _verdict(memory_growth_pct=9.0, requests_after_warmup=9000)
    assert long.leak and not long.passed


def test_loaded_first_byte_is_judged_against_the_unloaded_p50() -> None:
    within = _verdict(ttfb_p95_ms=190.0, unloaded_ttfb_p50_ms=40.0)
    assert within.passed  # type: ignore[attr-defined]
    slow = _verdict(ttfb_p95_ms=1176.0, unloaded_ttfb_p50_ms=40.0)
    assert not slow.passed  # type: ignore[attr-defined]
    assert any("29.4x the unloaded p50 40 ms (limit 5x)" in f for f in slow.failures)  # type: ignore[attr-defined]
    unmeasured = _verdict(ttfb_p95_ms=1176.0, unloaded_ttfb_p50_ms=None)
    assert unmeasured.passed and any("not judged" in w for w in unmeasured.warnings)  # type: ignore[attr-defined]
    off = _verdict(
        ttfb_p95_ms=1176.0, unloaded_ttfb_p50_ms=40.0,
        thresholds=Thresholds(max_memory_growth_pct=5.0, max_ttfb_p95_factor=None),
    )
    assert off.passed and not off.warnings  # type: ignore[attr-defined]
