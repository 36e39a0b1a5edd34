"""The realtime socket's gatekeeping on the real app under a real uvicorn server (in-process Flite):
API keys as a bearer header or an `api_key` query parameter, browser origins, and a draining replica.
The protocol itself is tested through Serve (tests/integration/test_realtime.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from config.settings import load_settings
from serve_app.api.app import create_app
from serve_app.engines import registry
from serve_app.launch import free_port
from serve_app.router import compose_router
from serve_app.router.clients import LocalEngineClient

KEY = "sk-live-key-0123456789"
ORIGIN = "https://app.example.com"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    settings = load_settings(
        _env_file=None, env="production", api_keys=KEY, cors_allowed_origins=ORIGIN,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/rt.db", voices_dir=str(tmp_path / "voices"),
    )
    router = compose_router(settings, {"flite": LocalEngineClient(registry.build_engine("flite", settings))})
    app = create_app(settings, router)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(uv.serve())
    async with asyncio.timeout(30):
        while not uv.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.02)
    try:
        yield f"ws://127.0.0.1:{port}/v1/audio/speech/stream", app
    finally:
        uv.should_exit = True
        await task


async def refusal(ws: ClientConnection) -> tuple[dict[str, Any], int | None]:
    event = json.loads(await ws.recv())
    with contextlib.suppress(Exception):
        await ws.recv()
    return event, ws.close_code


async def spoken(ws: ClientConnection) -> bytes:
    await ws.send(json.dumps({"type": "session.update", "response_format": "pcm"}))
    await ws.send(json.dumps({"type": "input_text.append", "text": "Let me in."}))
    await ws.send(json.dumps({"type": "input_text.flush"}))
    audio = b""
    async with asyncio.timeout(30):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                audio += message
            elif json.loads(message)["type"] == "flushed":
                return audio


async def test_key_by_header_or_query_parameter(server: tuple[str, Any]) -> None:
    url, _ = server
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert await spoken(ws)
    async with connect(f"{url}?api_key={KEY}") as ws:
        assert await spoken(ws)
    for target, headers in ((url, {}), (f"{url}?api_key=wrong", {}), (url, {"Authorization": "Bearer wrong"})):
        async with connect(target, additional_headers=headers) as ws:
            event, code = await refusal(ws)
        assert event["type"] == "error" and event["error"]["code"] == "invalid_api_key" and code == 1008


async def test_browser_origins_follow_the_cors_policy(server: tuple[str, Any]) -> None:
    url, _ = server
    async with connect(f"{url}?api_key={KEY}", origin=ORIGIN) as ws:  # type: ignore[arg-type]
        assert await spoken(ws)
    async with connect(f"{url}?api_key={KEY}", origin="https://evil.example") as ws:  # type: ignore[arg-type]
        event, code = await refusal(ws)
    assert event["error"]["code"] == "origin_not_allowed" and code == 1008


async def test_a_draining_replica_refuses_new_sockets_and_closes_idle_ones(server: tuple[str, Any]) -> None:
    url, app = server
    async with connect(f"{url}?api_key={KEY}") as idle:
        assert await spoken(idle)
        app.state.services.drain.draining = True
        async with connect(f"{url}?api_key={KEY}") as late:
            event, code = await refusal(late)
        assert event["error"]["code"] == "draining" and code == 1013
        event, code = await refusal(idle)  # nothing left to say: closed for the restart
        assert event["error"]["code"] == "draining" and code == 1012
        app.state.services.drain.draining = False
