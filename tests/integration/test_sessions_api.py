"""Sessions API and auth through the real FastAPI app (create_app + its lifespan) over ASGI.

No Ray here: the app runs in-process with a real SQLite database, so every status code, the
error shape and API-key auth are checked quickly. tests/integration/test_sessions_serve.py does
the same path through the real Serve application.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from config.settings import Settings, load_settings
from serve_app.api.app import create_app
from serve_app.api.deps import AuthConfigurationError
from serve_app.engines.flite import FliteEngine
from serve_app.router import FallbackRouter
from serve_app.router.clients import LocalEngineClient
from tests.support import running_app


def db_settings(database_url: str, **overrides: Any) -> Settings:
    return load_settings(_env_file=None, env="test", database_url=database_url, **overrides)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with running_app(db_settings(f"sqlite+aiosqlite:///{tmp_path}/api.db")) as (app, client):
        yield app, client


@pytest.fixture
def api(running: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return running[1]


def flite_router() -> FallbackRouter:
    return FallbackRouter({"flite": LocalEngineClient(FliteEngine())})


SESSION_KEYS = {
    "id", "room", "participant", "agent_name", "status", "created_at", "updated_at", "ended_at",
    "last_heartbeat_at", "usage", "metadata",
}


async def test_session_lifecycle_over_http(api: httpx.AsyncClient) -> None:
    body = {"room": "r1", "participant": "bob", "agent_name": "a", "metadata": {"x": 1}}
    r = await api.post("/v1/sessions", json=body)
    assert r.status_code == 201
    session = r.json()
    assert session.keys() >= SESSION_KEYS
    assert session["status"] == "ACTIVE" and session["metadata"] == {"x": 1}
    sid = session["id"]

    assert (await api.get(f"/v1/sessions/{sid}")).json()["room"] == "r1"
    assert (await api.post(f"/v1/sessions/{sid}/heartbeat")).status_code == 200

    usage = {"characters": 120, "audio_seconds": 7.5, "requests": 3, "fallbacks": 1,
             "engines": {"edge": {"requests": 2, "fallbacks": 1}, "flite": {"requests": 1}},
             "latency_ms": {"p50": 210.0, "p95": 480.0, "p99": 600.0}, "turns": 4}
    r = await api.patch(f"/v1/sessions/{sid}/finalize", json={"usage": usage})
    assert r.status_code == 200
    done = r.json()
    assert done["status"] == "COMPLETED" and done["ended_at"]
    assert done["usage"]["characters"] == 120 and done["usage"]["turns"] == 4
    assert done["usage"]["engines"]["flite"] == {"requests": 1, "fallbacks": 0, "failures": 0}

    again = await api.patch(f"/v1/sessions/{sid}/finalize")
    assert again.status_code == 200 and again.json() == done

    listed = (await api.get("/v1/sessions", params={"status": "completed"})).json()
    assert [s["id"] for s in listed["data"]] == [sid]
    assert (await api.get("/v1/sessions", params={"status": "ACTIVE"})).json()["data"] == []
    r = await api.post(f"/v1/sessions/{sid}/heartbeat")
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_closed"


async def test_errors_are_404_and_422_in_openai_shape(api: httpx.AsyncClient) -> None:
    r = await api.patch("/v1/sessions/unknown/finalize", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    assert (await api.get("/v1/sessions/unknown")).status_code == 404
    assert (await api.post("/v1/sessions/unknown/heartbeat")).status_code == 404
    assert (await api.post("/v1/sessions", json={})).status_code == 422  # room is required
    assert (await api.post("/v1/sessions", json={"room": ""})).status_code == 422
    assert (await api.post("/v1/sessions", json={"room": "r", "metadata": "nope"})).status_code == 422
    assert (await api.get("/v1/sessions", params={"status": "bogus"})).status_code == 422
    sid = (await api.post("/v1/sessions", json={"room": "r"})).json()["id"]
    for bad in ({"usage": "lots"}, {"usage": {"characters": -1}}, {"unexpected": 1}):
        r = await api.patch(f"/v1/sessions/{sid}/finalize", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = await api.patch(
        f"/v1/sessions/{sid}/finalize", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert (await api.get(f"/v1/sessions/{sid}")).json()["status"] == "ACTIVE", "rejected bodies change nothing"


async def test_health_db_reports_pool_and_usage_recorder_is_wired(running: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, api = running
    r = await api.get("/health/db")
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True and body["status"] == "ok"
    assert {"size", "checked_out", "overflow"} <= body["pool"].keys()
    recorder = app.state.services.usage
    sid = (await api.post("/v1/sessions", json={"room": "u"})).json()["id"]
    await recorder(sid, characters=11, audio_seconds=0.75, engines={"flite": 2}, ttfb_s=0.05, ok=True, elapsed_s=0.2)
    await recorder("unknown", characters=1, audio_seconds=0.1, engines={}, ttfb_s=None, ok=True, elapsed_s=0.1)
    usage = (await api.get(f"/v1/sessions/{sid}")).json()["server_usage"]
    assert usage["characters"] == 11 and usage["requests"] == 1
    assert usage["latency_ms"]["ttfb"]["count"] == 1


async def test_api_keys_protect_sessions_but_not_health(tmp_path: Path) -> None:
    settings = db_settings(f"sqlite+aiosqlite:///{tmp_path}/auth.db", api_keys="key-one,key-two")
    async with running_app(settings) as (_, client):
        assert (await client.post("/v1/sessions", json={"room": "r"})).status_code == 401
        r = await client.post("/v1/sessions", json={"room": "r"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await client.get("/v1/sessions", headers={"Authorization": "Basic a2V5LW9uZQ=="})
        assert r.status_code == 401
        r = await client.post("/v1/sessions", json={"room": "r"}, headers={"Authorization": "Bearer key-two"})
        assert r.status_code == 201
        sid = r.json()["id"]
        r = await client.patch(f"/v1/sessions/{sid}/finalize", headers={"Authorization": "Bearer key-one"})
        assert r.status_code == 200
        assert (await client.patch(f"/v1/sessions/{sid}/finalize")).status_code == 401
        for path in ("/health", "/health/db"):
            assert (await client.get(path)).status_code == 200, path


def test_production_without_api_keys_refuses_to_build(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/prod.db"
    origins = "https://app.example.com"
    with pytest.raises(AuthConfigurationError, match="API_KEYS"):
        create_app(
            load_settings(_env_file=None, env="production", database_url=url, cors_allowed_origins=origins),
            flite_router(),
        )
    app = create_app(
        load_settings(_env_file=None, env="production", database_url=url, cors_allowed_origins=origins, api_keys="k"),
        flite_router(),
    )
    paths = app.openapi()["paths"]
    assert "/v1/sessions" in paths and "/v1/sessions/{session_id}/finalize" in paths


async def test_idempotency_key_makes_a_retried_create_return_the_same_session(api: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "agent-42-attempt"}
    first = await api.post("/v1/sessions", json={"room": "idem"}, headers=headers)
    again = await api.post("/v1/sessions", json={"room": "idem"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    reused = await api.post("/v1/sessions", json={"room": "elsewhere"}, headers=headers)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
    fresh = await api.post("/v1/sessions", json={"room": "idem"})
    assert fresh.json()["id"] != first.json()["id"]
    listed = (await api.get("/v1/sessions")).json()["data"]
    assert sum(1 for s in listed if s["room"] == "idem") == 2
