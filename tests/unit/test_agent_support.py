"""A small local sessions server for the agent's tests (real HTTP, real uvicorn, in a thread).

It speaks the sessions API contract (create 201, get, heartbeat, finalize idempotent, bearer
key) and can be told to fail the next N finalize calls with 503 or to delay finalize, so
retries, the outbox and signal-driven drains are tested over a real socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class FakeSessionsState:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_finalize: int = 0
    # Creates whose answer is "lost" (503 after the session was stored), and the keys creates carried.
    lose_create_answers: int = 0
    create_keys: list[str | None] = field(default_factory=list)
    finalize_delay_s: float = 0.0
    finalize_calls: int = 0
    heartbeats: int = 0
    api_key: str | None = None


def build_fake_app(state: FakeSessionsState) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return await call_next(request)

    @app.post("/v1/sessions", status_code=201)
    async def create(body: dict[str, Any], request: Request) -> Any:
        key = request.headers.get("idempotency-key")
        state.create_keys.append(key)
        sid = uuid.uuid5(uuid.NAMESPACE_URL, key).hex if key else uuid.uuid4().hex
        state.sessions.setdefault(sid, {"id": sid, "status": "ACTIVE", "usage": None, "ended_at": None, **body})
        if state.lose_create_answers > 0:
            state.lose_create_answers -= 1
            return JSONResponse({"error": {"message": "lost"}}, status_code=503)
        return state.sessions[sid]

    @app.get("/v1/sessions/{sid}")
    async def get(sid: str) -> Any:
        if sid not in state.sessions:
            return JSONResponse({"error": {"message": "not found"}}, status_code=404)
        return state.sessions[sid]

    @app.post("/v1/sessions/{sid}/heartbeat")
    async def heartbeat(sid: str) -> Any:
        if sid not in state.sessions:
            return JSONResponse({"error": {"message": "not found"}}, status_code=404)
        state.heartbeats += 1
        return state.sessions[sid]

    @app.patch("/v1/sessions/{sid}/finalize")
    async def finalize(sid: str, request: Request) -> Any:
        state.finalize_calls += 1
        if state.finalize_delay_s:
            await asyncio.sleep(state.finalize_delay_s)
        if state.fail_finalize > 0:
            state.fail_finalize -= 1
            return JSONResponse({"error": {"message": "try later"}}, status_code=503)
        if sid not in state.sessions:
            return JSONResponse({"error": {"message": "not found"}}, status_code=404)
        raw = await request.body()
        body = (await request.json()) if raw else {}
        session = state.sessions[sid]
        if session["status"] != "COMPLETED":
            session.update(status="COMPLETED", ended_at=time.time(), usage=(body or {}).get("usage"))
        return session

    return app


class FakeSessionsServer:
    """uvicorn serving `build_fake_app` on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self) -> None:
        self.state = FakeSessionsState()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = uvicorn.Config(build_fake_app(self.state), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeSessionsServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake sessions server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def reset(self) -> None:
        self.state.sessions.clear()
        self.state.fail_finalize = 0
        self.state.lose_create_answers = 0
        self.state.create_keys.clear()
        self.state.finalize_delay_s = 0.0
        self.state.finalize_calls = 0
        self.state.heartbeats = 0
        self.state.api_key = None


@pytest.fixture(scope="module")
def sessions_server() -> Iterator[FakeSessionsServer]:
    server = FakeSessionsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_api(sessions_server: FakeSessionsServer) -> FakeSessionsServer:
    sessions_server.reset()
    return sessions_server


def test_an_agent_process_hosts_one_flite_for_all_its_conversations() -> None:
    # Each conversation composes its own router; the in-process engines (and Flite's helper
    # processes) are the process's, not rebuilt (and leaked) per conversation.
    from agent.tts import _process_engines
    from config.settings import load_settings

    settings = load_settings(_env_file=None)
    first, failed = _process_engines(("flite",), settings)
    again, _ = _process_engines(("flite",), settings)
    assert failed == {} and first["flite"] is again["flite"]
