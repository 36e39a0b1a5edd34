"""The load test's view of the service: every call timed, every failure recorded, none raised.

A simulated session must keep going (and still finalize) when one call fails, and the report
must count every failure with a sample of what went wrong, so `ServiceClient` turns each HTTP
exchange into a `Call` in the `Recorder` instead of raising.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

PCM_BYTES_PER_SECOND = 24_000 * 2  # response_format "pcm": 24 kHz, 16-bit, mono
MAX_ERROR_SAMPLES = 25


@dataclass
class Call:
    """One HTTP exchange. `t` is seconds since the run started; TTFB/engine/audio for speech."""

    kind: str
    t: float
    elapsed_s: float
    ok: bool
    status: int | None
    ttfb_s: float | None = None
    engine: str | None = None
    audio_s: float | None = None


@dataclass
class Recorder:
    """Everything measured while the run goes on; the progress line and the report read it."""

    started: float = field(default_factory=time.perf_counter)
    calls: list[Call] = field(default_factory=list)
    error_samples: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0
    speech_ok: int = 0
    warmup_requests: int | None = None
    warmed: asyncio.Event = field(default_factory=asyncio.Event)  # set at `warmup_requests` utterances

    def now(self) -> float:
        return time.perf_counter() - self.started

    def add(self, call: Call, *, message: str | None = None, session: str | None = None) -> Call:
        self.calls.append(call)
        if call.ok:
            if call.kind == "speech":
                self.speech_ok += 1
                if self.warmup_requests is not None and self.speech_ok >= self.warmup_requests:
                    self.warmed.set()
        else:
            self._count_error(call, message, session)
        return call

    def reject(self, call: Call, message: str, session: str | None = None) -> None:
        """A call that got a 2xx but the wrong answer (e.g. no session id) is a failure too."""
        if call.ok:
            call.ok = False
            if call.kind == "speech":
                self.speech_ok -= 1
            self._count_error(call, message, session)

    def _count_error(self, call: Call, message: str | None, session: str | None) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(
                {
                    "kind": call.kind,
                    "t": round(call.t, 2),
                    "status": call.status,
                    "session": session,
                    "message": (message or "")[:300],
                }
            )

    def speech_calls(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "speech"]


def _error_message(response: httpx.Response) -> str:
    """OpenAI-shaped `{"error": {"message"}}` when the service sent one, else the raw body."""
    try:
        body = response.json()
        return str(body.get("error", {}).get("message") or body.get("detail") or body)[:300]
    except ValueError:
        return response.text[:300]


class ServiceClient:
    """The sessions API and streaming speech over one shared `httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient, recorder: Recorder, *, voice: str, model: str) -> None:
        self.http = http
        self.recorder = recorder
        self.voice = voice
        self.model = model

    async def _json_call(
        self, kind: str, method: str, path: str, *, body: Any = None, session: str | None = None
    ) -> tuple[Call, Any]:
        t = self.recorder.now()
        started = time.perf_counter()
        try:
            response = await self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            call = Call(kind, t, time.perf_counter() - started, False, None)
            self.recorder.add(call, message=f"{type(exc).__name__}: {exc}", session=session)
            return call, None
        elapsed = time.perf_counter() - started
        ok = response.is_success
        call = Call(kind, t, elapsed, ok, response.status_code)
        if not ok:
            self.recorder.add(call, message=_error_message(response), session=session)
            return call, None
        self.recorder.add(call)
        try:
            return call, response.json()
        except ValueError:
            return call, None

    async def create_session(
        self, room: str, participant: str, agent_name: str, metadata: dict[str, Any]
    ) -> str | None:
        body = {"room": room, "participant": participant, "agent_name": agent_name, "metadata": metadata}
        call, data = await self._json_call("create", "POST", "/v1/sessions", body=body)
        if not call.ok:
            return None
        if not (isinstance(data, dict) and data.get("id")):
            self.recorder.reject(call, "201 without a session id")
            return None
        return str(data["id"])

    async def heartbeat(self, session_id: str) -> bool:
        call, _ = await self._json_call("heartbeat", "POST", f"/v1/sessions/{session_id}/heartbeat", session=session_id)
        return call.ok

    async def finalize(self, session_id: str, usage: dict[str, Any]) -> bool:
        call, _ = await self._json_call(
            "finalize", "PATCH", f"/v1/sessions/{session_id}/finalize", body={"usage": usage}, session=session_id
        )
        return call.ok

    async def session_status(self, session_id: str) -> str | None:
        call, data = await self._json_call("verify", "GET", f"/v1/sessions/{session_id}", session=session_id)
        return str(data.get("status")) if call.ok and isinstance(data, dict) else None

    async def pool_status(self) -> dict[str, Any] | None:
        """`/health/db`'s pool (or None). Not recorded as a call: it is the referee, not the load."""
        try:
            response = await self.http.get("/health/db")
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        pool = data.get("pool") if isinstance(data, dict) else None
        return pool if isinstance(pool, dict) else None

    async def speak(self, text: str, session_id: str | None) -> Call:
        """Stream one utterance as 24 kHz PCM; TTFB is the time to the first body byte."""
        body: dict[str, Any] = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": "pcm",
            "session_id": session_id,
        }
        t = self.recorder.now()
        started = time.perf_counter()
        ttfb: float | None = None
        nbytes = 0
        try:
            async with self.http.stream("POST", "/v1/audio/speech", json=body) as response:
                if not response.is_success:
                    await response.aread()
                    call = Call("speech", t, time.perf_counter() - started, False, response.status_code)
                    return self.recorder.add(call, message=_error_message(response), session=session_id)
                engine = response.headers.get("x-tts-engine", "unknown")
                async for chunk in response.aiter_raw():
                    if chunk and ttfb is None:
                        ttfb = time.perf_counter() - started
                    nbytes += len(chunk)
        except httpx.HTTPError as exc:
            call = Call("speech", t, time.perf_counter() - started, False, None, ttfb_s=ttfb)
            return self.recorder.add(
                call, message=f"{type(exc).__name__} after {nbytes} bytes: {exc}", session=session_id
            )
        elapsed = time.perf_counter() - started
        if nbytes == 0 or ttfb is None:
            call = Call("speech", t, elapsed, False, response.status_code)
            return self.recorder.add(call, message="200 with an empty audio body", session=session_id)
        call = Call(
            "speech",
            t,
            elapsed,
            True,
            response.status_code,
            ttfb_s=ttfb,
            engine=engine,
            audio_s=nbytes / PCM_BYTES_PER_SECOND,
        )
        return self.recorder.add(call)
