"""Security of the real FastAPI app in-process (create_app + its lifespan over httpx's ASGI transport).

No Ray: the routes reach a real `FallbackRouter` over a real `FliteEngine` in this process, and
the sessions layer opens a real SQLite (or PostgreSQL) database, so production failsafes, API
keys, CORS, body limits and content types are checked quickly and exactly as the replica runs them.
tests/integration/test_hardening_*.py repeat the essentials through the live Serve app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from config.cors import CorsConfigurationError
from config.settings import Settings, get_settings, load_settings
from serve_app.api.app import create_app
from serve_app.api.deps import AuthConfigurationError
from serve_app.engines import registry
from serve_app.router import FallbackRouter, compose_router
from serve_app.router.clients import LocalEngineClient
from tests.support import running_app

ORIGIN = "https://app.example.com"
EVIL = "https://evil.example"
KEY = "sk-live-key-0123456789"
SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "pcm"}


def app_settings(tmp_path: Path, **overrides: Any) -> Settings:
    overrides.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path}/security.db")
    overrides.setdefault("voices_dir", str(tmp_path / "voices"))
    overrides.setdefault("env", "test")
    return load_settings(_env_file=None, **overrides)


def flite_router(settings: Settings) -> FallbackRouter:
    """The router as the ingress composes it, over an in-process FliteEngine built by the registry."""
    return compose_router(settings, {"flite": LocalEngineClient(registry.build_engine("flite", settings))})


def inprocess_app(settings: Settings) -> contextlib.AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with its lifespan, speech served by a router over an in-process FliteEngine."""
    return running_app(settings, flite_router(settings))


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"]
    return error


# --------------------------------------------------------------------------- production failsafes


def test_create_app_in_production_without_cors_origins_refuses_with_a_clear_message(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, env="production", api_keys=KEY)
    with pytest.raises(CorsConfigurationError, match="CORS_ALLOWED_ORIGINS must be set when ENV=production"):
        create_app(settings, flite_router(settings))


@pytest.fixture
def production_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """ENV=production in the environment, as `serve run` would see it; settings cache reset around."""
    for name in ("CORS_ALLOWED_ORIGINS", "API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV", "production")
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/prod.db")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("env", "error", "message"),
    [
        ({"API_KEYS": KEY}, CorsConfigurationError, "CORS_ALLOWED_ORIGINS must be set"),
        ({"CORS_ALLOWED_ORIGINS": ORIGIN}, AuthConfigurationError, "API_KEYS must be set"),
    ],
)
def test_build_app_in_production_fails_before_deploying(
    production_env: pytest.MonkeyPatch, env: dict[str, str], error: type[Exception], message: str
) -> None:
    """`serve run` itself fails with the clear line (build_app runs where the command was typed)."""
    from serve_app.app import build_app

    for name, value in env.items():
        production_env.setenv(name, value)
    with pytest.raises(error, match=message):
        build_app({})


def test_build_app_in_production_with_both_set_composes_the_application(production_env: pytest.MonkeyPatch) -> None:
    from ray.serve import Application

    from serve_app.app import build_app

    production_env.setenv("API_KEYS", KEY)
    production_env.setenv("CORS_ALLOWED_ORIGINS", ORIGIN)
    assert isinstance(build_app({}), Application)


async def test_production_requires_the_key_everywhere_but_health_and_preflight(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, env="production", cors_allowed_origins=ORIGIN, api_keys=f"other-key,{KEY}")
    async with inprocess_app(settings) as (_, client):
        for method, path, body in [
            ("POST", "/v1/audio/speech", SPEECH),
            ("GET", "/v1/models", None),
            ("GET", "/v1/audio/voices", None),
            ("GET", "/v1/engines", None),
            ("GET", "/v1/sessions", None),
        ]:
            bare = await client.request(method, path, json=body)
            error = assert_openai_error(bare, 401)
            assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
            assert bare.headers["www-authenticate"] == "Bearer"
            wrong = await client.request(method, path, json=body, headers={"Authorization": "Bearer sk-guess"})
            assert_openai_error(wrong, 401)
            # The key must not come back in any error message.
            assert KEY not in bare.text and "sk-guess" not in wrong.text
        for path in ("/health", "/health/db", "/health/ready"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 200, path
            # Up or down for anyone; the internals (pool, engines, reasons) only with the key.
            assert set(anonymous.json()) == {"status"}, (path, anonymous.json())
            keyed = await client.get(path, headers={"Authorization": f"Bearer {KEY}"})
            assert keyed.status_code == 200 and len(keyed.json()) > 1, path
        keyed_db = (await client.get("/health/db", headers={"Authorization": f"Bearer {KEY}"})).json()
        assert {"size", "checked_out"} <= keyed_db["pool"].keys()
        # A browser's preflight carries no Authorization header; it must pass for the allowed origin.
        preflight = await client.options(
            "/v1/audio/speech",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert preflight.headers["access-control-allow-credentials"] == "true"
        spoken = await client.post("/v1/audio/speech", json=SPEECH, headers={"Authorization": f"Bearer {KEY}"})
        assert spoken.status_code == 200 and len(spoken.content) > 24000  # > 0.5 s at 24 kHz s16le


async def test_wildcard_origins_never_send_credentials(tmp_path: Path) -> None:
    async with inprocess_app(app_settings(tmp_path, cors_allowed_origins="*")) as (_, client):
        response = await client.get("/v1/models", headers={"Origin": EVIL})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


async def test_explicit_origins_send_credentials_only_to_themselves(tmp_path: Path) -> None:
    async with inprocess_app(app_settings(tmp_path, cors_allowed_origins=ORIGIN)) as (_, client):
        allowed = await client.get("/v1/models", headers={"Origin": ORIGIN})
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["access-control-allow-credentials"] == "true"
        refused = await client.get("/v1/models", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in refused.headers


# --------------------------------------------------------------------------- request size limits


async def _chunks(total: int, size: int = 1000) -> AsyncIterator[bytes]:
    """A body streamed without Content-Length (chunked), `total` bytes of a JSON-looking prefix."""
    sent = 0
    while sent < total:
        piece = b"x" * min(size, total - sent)
        sent += len(piece)
        yield piece


async def test_body_limits_declared_streamed_and_for_uploads(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, max_body_bytes=4096, max_upload_bytes=16384)
    async with inprocess_app(settings) as (_, client):
        declared = await client.post("/v1/audio/speech", json={**SPEECH, "input": "a " * 4000})
        assert assert_openai_error(declared, 413)["code"] == "request_too_large"
        assert "4096" in declared.json()["error"]["message"]
        # Chunked: no Content-Length, so the limit is counted as the body arrives.
        streamed = await client.post(
            "/v1/audio/speech", content=_chunks(10_000), headers={"Content-Type": "application/json"}
        )
        assert assert_openai_error(streamed, 413)["code"] == "request_too_large"
        # Multipart uploads get MAX_UPLOAD_BYTES: over the JSON limit is fine, over the upload limit is not.
        small_clip = await client.post("/v1/audio/voices", files={"file": ("a.wav", b"\0" * 8000, "audio/wav")})
        assert small_clip.status_code == 400, small_clip.text  # not audio: refused by the route, not the limit
        big_clip = await client.post("/v1/audio/voices", files={"file": ("a.wav", b"\0" * 20000, "audio/wav")})
        assert assert_openai_error(big_clip, 413)["code"] == "request_too_large"
        # A JSON body under the limit still works after all that.
        assert (await client.post("/v1/audio/speech", json=SPEECH)).status_code == 200


# --------------------------------------------------------------------------- content types


def _request_bodies(app: FastAPI) -> list[tuple[str, str, set[str]]]:
    """(method, path, accepted content types) of every operation with a request body."""
    out = []
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if content and "{" not in path:
                out.append((method.upper(), path, set(content)))
    return out


async def test_wrong_content_type_is_a_clear_4xx_on_every_route(tmp_path: Path) -> None:
    async with inprocess_app(app_settings(tmp_path)) as (app, client):
        operations = _request_bodies(app)
        kinds = {kind for _, _, accepted in operations for kind in accepted}
        assert {"application/json", "multipart/form-data"} <= kinds, operations
        for method, path, accepted in operations:
            if "application/json" in accepted:
                sent = [
                    ("multipart", {"files": {"input": (None, "hello")}}),
                    ("form", {"data": {"input": "hello"}}),
                    ("text", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}),
                ]
            else:
                sent = [("json", {"json": {"file": "hello"}})]
            for label, kwargs in sent:
                response = await client.request(method, path, **kwargs)
                assert 400 <= response.status_code < 500, (method, path, label, response.text)
                error = response.json()["error"]
                assert error["message"] and error["type"] == "invalid_request_error", (path, label, error)
                if "application/json" in accepted:
                    assert "JSON" in error["message"], (path, label, error)


async def test_request_id_outside_serve_is_echoed_or_assigned_once(tmp_path: Path) -> None:
    async with inprocess_app(app_settings(tmp_path)) as (_, client):
        given = await client.get("/health", headers={"X-Request-ID": "trace-1"})
        assert given.headers.get_list("x-request-id") == ["trace-1"]
        assigned = (await client.get("/health")).headers.get_list("x-request-id")
        assert len(assigned) == 1 and len(assigned[0]) == 16
