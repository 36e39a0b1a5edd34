"""Engines in the real Serve application: Edge TTS against the local Edge protocol server, Zonos left
out on a cluster without GPUs (and saying why), one voice catalogue across engines.

The session's fake Edge server (tests/conftest.py `edge_server`, normal mode) is what the app's
EdgeEngine replicas talk to (EDGE_WSS_URL); tests that change its mode restore it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from serve_app.core.audio import rms_level

if TYPE_CHECKING:
    from tests.fakes.edge_server import FakeEdgeServer

pytestmark = pytest.mark.integration


@pytest.fixture
def edge(edge_server: FakeEdgeServer) -> Iterator[FakeEdgeServer]:
    """The shared fake server, back in normal mode afterwards."""
    yield edge_server
    edge_server.mode = "normal"


def speech(client: httpx.Client, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", **extra}
    return client.post("/v1/audio/speech", json=body)


def engines(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in client.get("/v1/engines").json()["data"]}


def test_engines_listing_reports_edge_reachable_and_why_zonos_is_absent(client: httpx.Client) -> None:
    listing = engines(client)
    assert listing["edge"]["available"] and listing["edge"]["check"]["details"]["endpoint"].startswith("127.0.0.1:")
    zonos = listing["zonos"]
    assert not zonos["available"] and not zonos["deployed"]
    assert "no GPU in the Ray cluster" in zonos["reason"]


def test_edge_speaks_through_serve_with_the_mapped_voice(client: httpx.Client, edge: FakeEdgeServer) -> None:
    before = len(edge.requests)
    response = speech(client, "Edge is the first fallback when Zonos is away.", voice="onyx", model="edge-tts")
    assert response.status_code == 200, response.text
    assert response.headers["x-tts-engine"] == "edge"
    pcm = response.content
    assert len(pcm) / (2 * 24000) > 1.0 and rms_level(pcm) > 300
    sent = edge.requests[before:]
    assert [r.voice for r in sent] == ["en-US-DavisNeural"]
    assert sent[0].text == "Edge is the first fallback when Zonos is away."


def test_ssml_in_the_input_is_spoken_as_text(client: httpx.Client, edge: FakeEdgeServer) -> None:
    before = len(edge.requests)
    text = "Read <speak><voice name='x'>this</voice></speak> aloud."
    response = speech(client, text, engine="edge")
    assert response.status_code == 200, response.text
    sent = edge.requests[before:]
    assert len(sent) == 1 and sent[0].text == text and sent[0].markup_inside == []


def test_edge_that_never_answers_falls_back_to_the_next_engine(client: httpx.Client, edge: FakeEdgeServer) -> None:
    edge.mode = "hang"
    response = speech(client, "Nobody at Edge answers this one.")
    assert response.status_code == 200, response.text
    assert response.headers["x-tts-engine"] == "piper"  # the next engine of the default chain
    assert rms_level(response.content) > 300
    assert engines(client)["edge"]["strikes"] >= 1


def test_one_voice_catalogue_across_engines(client: httpx.Client) -> None:
    data = client.get("/v1/audio/voices").json()["data"]
    by_id = {v["id"]: v for v in data}
    assert by_id["onyx"]["maps_to"] == {
        "flite": "rms", "edge": "en-US-DavisNeural", "zonos": "default", "piper": "en_US-joe-medium"
    }
    assert by_id["en-US-DavisNeural"]["engine"] == "edge" and by_id["rms"]["engine"] == "flite"
    assert by_id["de-DE-KatjaNeural"]["language"] == "de-DE"
