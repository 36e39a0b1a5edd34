"""Sessions through the real Serve application (Ray cluster, ingress replica, SQLite from conftest)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.integration]


def test_session_lifecycle_and_health_through_serve(client: httpx.Client) -> None:
    r = client.post("/v1/sessions", json={"room": "serve-room", "participant": "carol", "agent_name": "agent"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert client.post(f"/v1/sessions/{sid}/heartbeat").status_code == 200
    first = client.patch(f"/v1/sessions/{sid}/finalize", json={"usage": {"characters": 5, "requests": 1}})
    second = client.patch(f"/v1/sessions/{sid}/finalize", json={"usage": {"characters": 999}})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["status"] == "COMPLETED" and first.json()["usage"]["characters"] == 5
    assert client.get("/v1/sessions/does-not-exist").status_code == 404
    health = client.get("/health/db")
    assert health.status_code == 200
    assert health.json()["backend"] == "sqlite"
    assert {"size", "checked_out", "overflow"} <= health.json()["pool"].keys()


def test_speech_with_session_id_is_accounted_to_the_session(client: httpx.Client) -> None:
    sid = client.post("/v1/sessions", json={"room": "speech-room"}).json()["id"]
    r = client.post(
        "/v1/audio/speech",
        json={"model": "flite", "input": "Hello from the session test.", "voice": "alloy",
              "response_format": "pcm", "session_id": sid},
    )
    if r.status_code == 503:
        pytest.skip(f"no engine can speak here: {r.text[:200]}")
    assert r.status_code == 200 and len(r.content) > 0
    deadline = time.monotonic() + 15
    usage: dict = {}
    while time.monotonic() < deadline:  # recorded when the stream ends, just after the last byte
        usage = client.get(f"/v1/sessions/{sid}").json()["server_usage"]
        if usage.get("requests"):
            break
        time.sleep(0.1)
    assert usage["requests"] == 1
    assert usage["characters"] == len("Hello from the session test.")
    assert usage["audio_seconds"] > 0
    assert "flite" in usage["engines"]
    ttfb = usage["latency_ms"]["ttfb"]  # the router's time to first audio, per session
    assert ttfb["p50"] is not None and 0 < ttfb["p50"] <= usage["latency_ms"]["elapsed"]["p95"]


def test_concurrent_sessions_through_serve_leave_the_pool_empty(client: httpx.Client) -> None:
    def one(i: int) -> dict:
        r = client.post("/v1/sessions", json={"room": f"serve-load-{i}"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = client.patch(f"/v1/sessions/{sid}/finalize", json={"usage": {"characters": i}})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(60)))
    assert {s["status"] for s in results} == {"COMPLETED"}
    ids = {s["id"] for s in results}
    listed = client.get("/v1/sessions", params={"status": "COMPLETED", "limit": 500}).json()["data"]
    assert ids <= {s["id"] for s in listed}
    assert client.get("/health/db").json()["pool"]["checked_out"] == 0
