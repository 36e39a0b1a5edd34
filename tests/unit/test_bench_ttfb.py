"""bench.ttfb's verdict: ratios against the plain reference and the in-process floor, and their
median over rounds (the machine's speed drifts between the minutes each system is measured in)."""

from __future__ import annotations

from bench.ttfb import Figures, median_ratios, ratios


def _round(reference_rps: float, ours_rps: float) -> list[Figures]:
    return [
        Figures("uvicorn+binary x1", ttfb_ms=60.0, rps=reference_rps, cpu_ms_per_request=64.0),
        Figures("uvicorn+engine", ttfb_ms=20.0),
        Figures("serve run", ttfb_ms=24.0, rps=ours_rps, cpu_ms_per_request=60.0),
    ]


def test_ratios_compare_ours_with_the_reference_and_the_floor() -> None:
    found = ratios(_round(reference_rps=30.0, ours_rps=33.0))
    assert found == {
        "serve_run_rps_vs_uvicorn_binary": 1.1,
        "serve_run_cpu_per_request_vs_uvicorn_binary": 0.938,
        "serve_run_ttfb_vs_uvicorn_binary": 0.4,
        "serve_run_ttfb_vs_in_process_engine": 1.2,
    }


def test_a_system_that_failed_gives_no_ratio() -> None:
    figures = _round(reference_rps=30.0, ours_rps=33.0)
    figures[2].rps = None
    assert ratios(figures) == {}


def test_the_verdict_is_each_ratios_median_over_rounds() -> None:
    rounds = [ratios(_round(30.0, ours)) for ours in (27.0, 33.0, 31.5)]
    assert median_ratios(rounds)["serve_run_rps_vs_uvicorn_binary"] == 1.05
    # A ratio missing from a round (a system failed there) is left out rather than guessed.
    rounds[1].pop("serve_run_ttfb_vs_in_process_engine")
    assert "serve_run_ttfb_vs_in_process_engine" not in median_ratios(rounds)


def test_the_first_byte_alternating_with_the_floor_is_its_own_ratio() -> None:
    figures = _round(reference_rps=30.0, ours_rps=33.0)
    # Sequential figures taken minutes apart (24 against 20 ms) and the alternating pair (23 against 20).
    figures[2].paired_ttfb_ms = 23.0
    figures[2].paired_floor_ttfb_ms = 20.0
    found = ratios(figures)
    assert found["serve_run_ttfb_vs_in_process_engine"] == 1.2
    assert found["serve_run_ttfb_vs_in_process_engine_paired"] == 1.15
    # Without the pair (no floor among the systems, or --paired-slices 0) there is no such ratio.
    assert "serve_run_ttfb_vs_in_process_engine_paired" not in ratios(_round(30.0, 33.0))
