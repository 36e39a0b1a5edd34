"""A CI-sized run of bench.load against the real Serve application: 20 sessions for 20 seconds.

The same core as the 100-session test (`run_load`): sessions are created, speak streamed
utterances at a (shortened) conversational pace, heartbeat and finalize; then every session
must be COMPLETED in the database, no pool connection may be left checked out, and the report
and plots must be written. Twenty seconds are too short for the 5%-after-warm-up rule to mean
anything (that is what the 10,000-request run is for): the replicas' memory must have been found
and sampled, and the verdict must say it was not judged rather than claim a leak check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.load import EXIT_OK, LoadConfig, run_load
from bench.load_session import Pace
from bench.load_stats import Thresholds

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_twenty_sessions_for_twenty_seconds(serve_url: str, tmp_path: Path) -> None:
    config = LoadConfig(
        url=serve_url,
        sessions=20,
        duration_s=20.0,
        report_dir=tmp_path / "load",
        pace=Pace(user_turn_s=(1.0, 2.0), playback_factor=0.5, heartbeat_interval_s=4.0),
        ramp_up_s=3.0,
        warmup_requests=20,
        sample_interval_s=1.0,
        quiet=True,
        # The first-byte ratio is the 100-session benchmark's judgement on a quiet machine; this
        # run shares CI's two cores with the test process, so it only checks the figures exist.
        thresholds=Thresholds(max_ttfb_p95_factor=None),
        unloaded_samples=3,
    )
    result = await run_load(config)
    report = result.report

    assert report["errors"] == {"total": 0, "samples": []}
    assert report["sessions"]["created"] == 20
    assert report["sessions"]["completed"] == 20, report["sessions"]["not_completed"]
    assert report["sessions"]["finalize_ok"] == 20
    assert report["sessions"]["heartbeats"] > 0
    assert report["sessions"]["utterances_per_session_min"] >= 1
    assert report["db_pool"]["checked_out_end"] == 0
    speech = report["requests"]["by_kind"]["speech"]
    assert speech["failed"] == 0 and speech["ok"] >= 20
    assert set(report["ttfb_ms"]["by_engine"]) <= {"zonos", "edge", "piper", "flite"}
    assert report["ttfb_ms"]["all"]["count"] == speech["ok"]
    assert report["ttfb_ms"]["unloaded"]["count"] == 3 and report["ttfb_ms"]["p95_vs_unloaded_p50"] > 0

    memory = report["memory"]
    assert memory["available"] and memory["warmup_reached"]
    assert any(key.startswith("Ingress#") for key in memory["replicas"])
    assert memory["total_mb"]["end_of_load"] > 0 and memory["total_mb"]["final"] > 0
    assert not memory["judged"] and memory["requests_after_warmup"] < 1000
    verdict = report["verdict"]
    assert verdict["passed"] and not verdict["leak"] and verdict["failures"] == []
    assert len(verdict["warnings"]) == 1 and "a leak verdict needs 1000" in verdict["warnings"][0]
    assert result.exit_code == EXIT_OK

    written = json.loads((tmp_path / "load" / "report.json").read_text())
    assert written["sessions"]["completed"] == 20
    for name in ("latency.png", "memory.png"):
        assert (tmp_path / "load" / name).read_bytes()[:8] == PNG_MAGIC
