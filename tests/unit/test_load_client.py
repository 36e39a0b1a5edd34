"""ServiceClient turns every outcome of an HTTP exchange into a recorded Call, never an exception.

Driven through httpx's MockTransport: the failure paths (an error status, a stream cut after the
headers, an empty 200, a 201 without an id) are the ones a live run hits rarely and must count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from bench.load_client import PCM_BYTES_PER_SECOND, Recorder, ServiceClient


class _Body(httpx.AsyncByteStream):
    """A streamed body, as the service sends it (MockTransport pre-reads plain `content`)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class _CutStream(httpx.AsyncByteStream):
    """Sends some audio, then the connection drops (what an aborted stream looks like)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"\x00" * 4800
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[ServiceClient, Recorder, httpx.AsyncClient]:
    recorder = Recorder()
    http = httpx.AsyncClient(base_url="http://svc", transport=httpx.MockTransport(handler))
    return ServiceClient(http, recorder, voice="alloy", model="tts-1"), recorder, http


async def test_speech_ok_measures_ttfb_engine_and_audio_duration() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/audio/speech"
        return httpx.Response(
            200,
            headers={"X-TTS-Engine": "flite"},
            stream=_Body(b"\x01" * (PCM_BYTES_PER_SECOND // 2), b"\x01" * (PCM_BYTES_PER_SECOND // 2)),
        )

    client, recorder, http = _client(handler)
    async with http:
        call = await client.speak("Hello there.", "sid")
    assert call.ok and call.engine == "flite"
    assert call.audio_s == pytest.approx(1.0)
    assert call.ttfb_s is not None and call.ttfb_s <= call.elapsed_s
    assert recorder.speech_ok == 1 and recorder.errors == 0


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(503, json={"error": {"message": "all engines failed"}}), "all engines failed"),
        (httpx.Response(200, headers={"X-TTS-Engine": "flite"}, stream=_Body()), "200 with an empty audio body"),
        (httpx.Response(200, stream=_CutStream()), "RemoteProtocolError after 4800 bytes"),
    ],
)
async def test_speech_failures_are_recorded_with_a_message(response: httpx.Response, expected: str) -> None:
    client, recorder, http = _client(lambda _: response)
    async with http:
        call = await client.speak("Hello.", "sid-1")
    assert not call.ok
    assert recorder.errors == 1 and recorder.speech_ok == 0
    sample = recorder.error_samples[0]
    assert sample["kind"] == "speech" and sample["session"] == "sid-1"
    assert expected in sample["message"]


async def test_create_without_an_id_is_a_failure() -> None:
    client, recorder, http = _client(lambda _: httpx.Response(201, json={"status": "ACTIVE"}))
    async with http:
        assert await client.create_session("room", "p", "agent", {}) is None
    assert recorder.errors == 1
    assert recorder.error_samples[0]["message"] == "201 without a session id"


async def test_session_calls_and_pool_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": "abc", "status": "ACTIVE"})
        if request.url.path.endswith("/finalize"):
            assert b'"usage"' in request.content
            return httpx.Response(200, json={"id": "abc", "status": "COMPLETED"})
        if request.url.path == "/health/db":
            return httpx.Response(503, json={"ok": False, "pool": {"checked_out": 0}})
        if request.url.path.endswith("/heartbeat"):
            return httpx.Response(409, json={"error": {"message": "session is COMPLETED"}})
        return httpx.Response(200, json={"id": "abc", "status": "COMPLETED"})

    client, recorder, http = _client(handler)
    async with http:
        assert await client.create_session("room", "p", "agent", {"k": 1}) == "abc"
        assert await client.finalize("abc", {"requests": 1})
        assert await client.session_status("abc") == "COMPLETED"
        assert await client.pool_status() == {"checked_out": 0}  # read even when the status is 503
        assert not await client.heartbeat("abc")
    assert [c.kind for c in recorder.calls] == ["create", "finalize", "verify", "heartbeat"]
    assert recorder.errors == 1 and recorder.error_samples[0]["message"] == "session is COMPLETED"
