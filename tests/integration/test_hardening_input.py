"""Bad input through the live Serve application (the proxy, the ingress replica, the engine replicas).

Complements test_speech_api.py (empty, whitespace, unknown voice/format/model, speed, one control
character, malformed JSON, declared oversized body) with what a hostile or broken client can
also send: 100,000 characters, bytes that are not UTF-8, markup, escape and NUL characters, a
chunked body over MAX_BODY_BYTES, and a client that hangs up in the middle of a stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from config.settings import get_settings
from serve_app.core.audio import rms_level

pytestmark = pytest.mark.integration

LONG = " ".join(f"This is sentence number {i} of a long answer that keeps going." for i in range(20))


def payload(**body: Any) -> dict[str, Any]:
    return {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "pcm", **body}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    return error


def test_100000_characters_get_a_400_naming_the_limit(client: httpx.Client) -> None:
    limit = get_settings().http.max_input_chars
    text = ("word " * 20_000)[:100_000]
    error = assert_openai_error(client.post("/v1/audio/speech", json=payload(input=text)), 400)
    assert f"the limit is {limit}" in error["message"] and error["code"] == "invalid_input"
    # One character more than the schema allows is refused by validation, also naming the limit.
    error = assert_openai_error(client.post("/v1/audio/speech", json=payload(input=text + "x")), 422)
    assert error["param"] == "input" and "100000" in error["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"input": "caf\xe9 \xff\xfe", "voice": "alloy"}',  # Latin-1 and stray bytes: 400, body unparsable
        b'{"input": "\xed\xa0\x80 surrogate bytes", "voice": "alloy"}',  # UTF-8-encoded surrogate: 422
        b'{"input": "lone \\ud800 escape", "voice": "alloy"}',  # valid JSON, not encodable text: 422
        b'{"input": "raw \x00 nul", "voice": "alloy"}',  # control bytes are not allowed in JSON strings: 422
    ],
)
def test_bytes_that_are_not_text_get_a_4xx(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/v1/audio/speech", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text[:300]
    assert_openai_error(response, response.status_code)


@pytest.mark.parametrize("text", ["nul\x00byte", "escape \x1b[31mred\x1b[0m", "delete\x7f", "c1 control\x85", "bs\x08"])
def test_nul_and_escape_characters_are_refused(client: httpx.Client, text: str) -> None:
    error = assert_openai_error(client.post("/v1/audio/speech", json=payload(input=text)), 400)
    assert "control characters" in error["message"]


def test_ssml_is_spoken_as_text_never_interpreted(client: httpx.Client, edge_server: Any) -> None:
    """Edge's wire format is SSML: markup in user text must arrive escaped, as words, not as tags."""
    marker = f"mark{uuid.uuid4().hex[:8]}"
    text = (
        f'<speak>{marker} <break time="5s"/> <prosody rate="x-slow">slow</prosody> '
        '<voice name="en-GB-RyanNeural">other</voice> &amp; done]]></speak>'
    )
    # As written (no spoken form, which would read the marker's digits and the "5s" as words).
    response = client.post("/v1/audio/speech", json=payload(input=text, engine="edge", normalize=False))
    assert response.status_code == 200, response.text[:300]
    assert response.headers["x-tts-engine"] == "edge" and rms_level(response.content) > 300
    seen = [r for r in edge_server.requests if marker in r.text]
    assert seen, "the Edge fake never saw the text"
    for request in seen:
        assert request.markup_inside == [], request.markup_inside  # no element was parsed out of user text
        assert request.voice != "en-GB-RyanNeural" and request.rate == "+0%"
    spoken = " ".join(r.text for r in seen)
    assert "<break" in spoken and "<prosody" in spoken and "</speak>" in spoken
    flite = client.post("/v1/audio/speech", json=payload(input=text, engine="flite"))
    assert flite.status_code == 200 and rms_level(flite.content) > 300


def _chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON body sent with Transfer-Encoding: chunked (no Content-Length)."""
    yield b'{"model": "tts-1", "voice": "alloy", "input": "'
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        sent += size
        yield b"a " * (size // 2)
    yield b'"}'


def test_chunked_bodies_are_limited_as_they_arrive(client: httpx.Client) -> None:
    limit = get_settings().http.max_body_bytes
    over = client.post(
        "/v1/audio/speech", content=_chunked(limit + 128 * 1024), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in over.request.headers
    error = assert_openai_error(over, 413)
    assert error["code"] == "request_too_large" and str(limit) in error["message"]
    # A small chunked body is an ordinary request: refused only for what it says (too many characters).
    small = client.post("/v1/audio/speech", content=_chunked(10_000), headers={"Content-Type": "application/json"})
    assert_openai_error(small, 400)
    assert client.get("/health").status_code == 200


def _in_flight(client: httpx.Client) -> dict[str, int]:
    return {e["name"]: e["in_flight"] for e in client.get("/v1/engines").json()["data"]}


def test_client_leaving_mid_stream_leaves_the_service_healthy(serve_url: str, client: httpx.Client) -> None:
    for _ in range(3):
        with (
            httpx.Client(base_url=serve_url, timeout=60.0) as leaver,
            leaver.stream("POST", "/v1/audio/speech", json=payload(input=LONG, engine="flite")) as response,
        ):
            assert response.status_code == 200
            assert next(response.iter_raw())
        # Leaving the block closed the connection with most of the answer unsent.
    deadline = time.monotonic() + 30
    while any(_in_flight(client).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_in_flight(client).values()), _in_flight(client)  # abandoned work was stopped, slots freed
    after = client.post("/v1/audio/speech", json=payload(input=LONG, engine="flite"))
    assert after.status_code == 200 and len(after.content) / 48000 > 20  # 20 sentences: well over 20 s of speech
    assert client.get("/health/ready").status_code == 200
