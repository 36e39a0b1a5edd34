"""The load report's shape and plots, the pacing control and the replica matching, without a server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.load import LoadConfig, parse_args, summary_lines
from bench.load_client import Call, Recorder
from bench.load_memory import NoLocator, ProcessTreeLocator, deployment_of, make_locator
from bench.load_report import REPORT_KEYS, plot_latency, plot_memory, request_counts, write_report
from bench.load_session import DEFAULT_UTTERANCES, RunControl, SessionStats, load_utterances

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _calls() -> list[Call]:
    return [
        Call("create", 0.0, 0.01, True, 201),
        Call("speech", 0.5, 0.4, True, 200, ttfb_s=0.03, engine="flite", audio_s=2.0),
        Call("speech", 3.0, 0.4, True, 200, ttfb_s=0.25, engine="zonos", audio_s=2.5),
        Call("speech", 6.0, 0.1, False, 503),
        Call("finalize", 8.0, 0.02, True, 200),
    ]


def test_request_counts_by_kind() -> None:
    counts = request_counts(_calls())
    assert counts["total"] == 5
    assert counts["by_kind"]["speech"] == {"total": 3, "ok": 2, "failed": 1}
    assert list(counts["by_kind"]) == ["create", "finalize", "speech"]


def test_recorder_counts_errors_and_keeps_bounded_samples() -> None:
    recorder = Recorder()
    for i in range(40):
        recorder.add(Call("speech", float(i), 0.1, False, 503), message="x" * 1000, session="s")
    recorder.add(Call("speech", 41.0, 0.1, True, 200, ttfb_s=0.02))
    assert recorder.errors == 40 and recorder.speech_ok == 1
    assert len(recorder.error_samples) == 25
    assert len(recorder.error_samples[0]["message"]) == 300


def test_recorder_reject_turns_a_2xx_into_a_failure() -> None:
    recorder = Recorder()
    call = recorder.add(Call("create", 0.0, 0.01, True, 201))
    recorder.reject(call, "201 without a session id")
    assert not call.ok and recorder.errors == 1
    assert recorder.error_samples[0]["message"] == "201 without a session id"


def test_write_report_orders_keys_and_refuses_incomplete(tmp_path: Path) -> None:
    report = {key: {} for key in reversed(REPORT_KEYS)}
    path = write_report(tmp_path / "out", report)
    assert list(json.loads(path.read_text())) == list(REPORT_KEYS)
    with pytest.raises(ValueError, match="verdict"):
        write_report(tmp_path, {k: {} for k in REPORT_KEYS if k != "verdict"})


def test_plots_are_png_files(tmp_path: Path) -> None:
    latency = plot_latency(tmp_path / "latency.png", _calls(), [(0.0, 1), (5.0, 2)])
    samples = [(0.0, {"Ingress#1": 100 << 20}), (5.0, {"Ingress#1": 101 << 20, "FliteEngine#2": 50 << 20})]
    memory = plot_memory(tmp_path / "memory.png", samples, warmup_t=2.0, load_end_t=5.0)
    empty = plot_memory(tmp_path / "empty.png", [], None, None)
    for path in (latency, memory, empty):
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_summary_lines_name_the_verdict() -> None:
    report = {
        "requests": {"total": 10, "by_kind": {"speech": {"total": 6}}},
        "run": {"speech_per_s": 1.5},
        "errors": {"total": 0},
        "sessions": {"created": 2, "requested": 2, "completed": 2},
        "ttfb_ms": {
            "all": {"p50": 20, "p95": 30, "p99": 40},
            "by_engine": {"flite": {"p50": 20, "p95": 30, "p99": 40, "count": 6}},
        },
        "memory": {"available": False, "reason": "remote"},
        "db_pool": {"checked_out_end": 0},
        "verdict": {"passed": False, "failures": ["1/2 sessions are not COMPLETED"], "warnings": ["w"]},
    }
    lines = summary_lines(report)
    assert "FAIL: 1/2 sessions are not COMPLETED" in lines
    assert "warning: w" in lines
    assert any(line.startswith("ttfb flite p50 20") for line in lines)


def test_session_usage_matches_the_sessions_api_shape() -> None:
    stats = SessionStats(
        0, "sid", utterances=3, characters=120, audio_s=7.5, ttfbs=[0.02, 0.03, 0.05], engines={"flite": 3}
    )
    usage = stats.usage()
    assert usage["requests"] == 3 and usage["characters"] == 120
    assert usage["engines"] == {"flite": {"requests": 3}}
    assert usage["latency_ms"]["ttfb_p50"] == pytest.approx(30.0)


async def test_run_control_stops_at_the_request_target() -> None:
    control = RunControl(None, requests_target=3)
    control.begin()
    claimed = [control.claim_request() for _ in range(5)]
    assert claimed == [True, True, True, False, False]
    assert control.stopping()
    await asyncio.wait_for(control.pause(30.0), timeout=5.0)  # already stopped: returns at once


async def test_run_control_pause_ends_at_the_deadline_or_on_stop() -> None:
    control = RunControl(0.05, None)
    control.begin()
    await control.pause(30.0)
    assert control.stopping()
    other = RunControl(None, None)
    other.begin()
    waiter = asyncio.create_task(other.pause(30.0))
    other.stop()
    await asyncio.wait_for(waiter, timeout=5.0)


def test_load_utterances(tmp_path: Path) -> None:
    assert load_utterances(None) == DEFAULT_UTTERANCES
    path = tmp_path / "u.txt"
    path.write_text("# comment\nHello there.\n\nGoodbye.\n")
    assert load_utterances(path) == ("Hello there.", "Goodbye.")
    path.write_text("\n# only a comment\n")
    with pytest.raises(ValueError):
        load_utterances(path)


def test_deployment_of_matches_only_the_application() -> None:
    assert deployment_of("ServeReplica:tts:Ingress", "tts") == "Ingress"
    assert deployment_of("ServeReplica:other:Ingress", "tts") is None
    assert deployment_of("ProxyActor", "tts") is None
    # Ray retitles a worker with the method it is running.
    assert deployment_of("ServeReplica:tts:Ingress.handle_request_with_rejection", "tts") == "Ingress"


def test_make_locator_by_host(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a CLI run with only a URL
    assert isinstance(make_locator("http://127.0.0.1:1234", "tts"), ProcessTreeLocator)
    remote = make_locator("http://203.0.113.9:8000", "tts")
    assert isinstance(remote, NoLocator) and remote.locate() == []


def test_cli_defaults_and_modes() -> None:
    args = parse_args(["--url", "http://x", "--user-turn", "1-2"])
    assert args.duration == 60.0 and args.user_turn == (1.0, 2.0)
    target = parse_args(["--requests-target", "10000"])
    assert target.duration is None and target.requests_target == 10000
    config = LoadConfig(url="http://x", sessions=100, duration_s=None, requests_target=10_000)
    assert config.effective_warmup() == 1000 and config.effective_ramp_up() == 10.0
    assert LoadConfig(url="http://x", sessions=20, duration_s=20).effective_ramp_up() == 5.0
    with pytest.raises(SystemExit):
        parse_args(["--user-turn", "6-4"])
