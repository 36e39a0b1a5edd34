"""EdgeEngine against a local server speaking Edge's protocol (tests/fakes/edge_server.py).

The real edge-tts library does the talking; the server answers with flite speech as MP3, or cuts
the connection half-way (`drop`), or never answers (`hang`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from serve_app.core.audio import rms_level
from serve_app.engines.base import EngineTimeout, EngineUnavailable, InvalidInput
from serve_app.engines.edge import EdgeEngine, Mp3StreamDecoder, edge_rate
from serve_app.engines.flite import FliteEngine
from serve_app.router import FallbackRouter, RouterConfig, SpeechRequest
from serve_app.router.clients import LocalEngineClient
from tests.fakes.edge_server import FakeEdgeServer, encode_mp3

RATE = EdgeEngine.sample_rate


@pytest.fixture
async def edge_fake() -> AsyncIterator[FakeEdgeServer]:
    async with FakeEdgeServer("normal") as server:
        yield server


def engine_for(server: FakeEdgeServer, **kwargs: float) -> EdgeEngine:
    options = {"connect_timeout_s": 2.0, "receive_timeout_s": 2.0, **kwargs}
    return EdgeEngine(wss_url=server.url, **options)  # type: ignore[arg-type]


async def collect(engine: EdgeEngine, text: str, voice: str | None = "alloy", **kwargs: object) -> list[bytes]:
    """The audio chunks (word marks left out)."""
    stream = engine.synthesize(text, voice, **kwargs)  # type: ignore[arg-type]
    return [chunk async for chunk in stream if isinstance(chunk, bytes)]


@pytest.mark.parametrize(
    ("speed", "rate"), [(1.0, "+0%"), (1.5, "+50%"), (0.75, "-25%"), (4.0, "+100%"), (0.25, "-50%")]
)
def test_speed_maps_to_edge_rate_within_its_range(speed: float, rate: str) -> None:
    assert edge_rate(speed) == rate


def test_mp3_decoder_gives_the_same_pcm_fed_byte_by_byte_as_whole() -> None:
    tone = bytes(range(256)) * 400
    mp3 = encode_mp3(tone)
    whole = Mp3StreamDecoder(RATE)
    pcm_whole = whole.feed(mp3) + whole.flush()
    trickled = Mp3StreamDecoder(RATE)
    pieces = [trickled.feed(mp3[i : i + 7]) for i in range(0, len(mp3), 7)]
    pcm_trickled = b"".join(pieces) + trickled.flush()
    assert pcm_trickled == pcm_whole
    assert sum(1 for p in pieces if p) > 10  # PCM came out while bytes were still arriving
    assert len(pcm_whole) >= len(tone)


async def test_streams_real_speech_as_pcm_chunks(edge_fake: FakeEdgeServer) -> None:
    chunks = await collect(engine_for(edge_fake), "Hello from the local Edge server.", "onyx")
    pcm = b"".join(chunks)
    assert len(chunks) > 1, "audio should be streamed as it arrives, not buffered"
    assert len(pcm) / (2 * RATE) > 1.0
    assert rms_level(pcm) > 300
    request = edge_fake.requests[-1]
    assert request.voice == "en-US-DavisNeural"  # onyx mapped to Edge's nearest voice
    assert request.text == "Hello from the local Edge server."
    assert "Sec-MS-GEC=" in request.query  # the real client, with its real handshake


async def test_speed_changes_rate_and_duration(edge_fake: FakeEdgeServer) -> None:
    engine = engine_for(edge_fake)
    text = "The quick brown fox jumps over the lazy dog."
    normal = b"".join(await collect(engine, text))
    fast = b"".join(await collect(engine, text, speed=2.0))
    assert [r.rate for r in edge_fake.requests] == ["+0%", "+100%"]
    assert len(fast) < 0.75 * len(normal)


async def test_markup_in_text_is_spoken_not_interpreted(edge_fake: FakeEdgeServer) -> None:
    text = "Say </prosody></voice><voice name='en-US-GuyNeural'><speak>hi</speak> & <break time='9s'/> now."
    pcm = b"".join(await collect(engine_for(edge_fake), text))
    request = edge_fake.requests[-1]
    assert request.text == text  # the service received the text verbatim, as character data
    assert request.markup_inside == []  # no element got into the SSML
    assert request.voice == "en-US-AriaNeural"
    assert rms_level(pcm) > 300


async def test_language_picks_a_voice_of_that_language_with_the_same_gender(edge_fake: FakeEdgeServer) -> None:
    engine = engine_for(edge_fake)
    await collect(engine, "Guten Tag.", "alloy", language="de-DE")
    await collect(engine, "Bonjour.", "echo", language="fr")
    assert [r.voice for r in edge_fake.requests] == ["de-DE-KatjaNeural", "fr-FR-HenriNeural"]


async def test_unknown_voice_and_bad_speed_are_the_callers_fault(edge_fake: FakeEdgeServer) -> None:
    engine = engine_for(edge_fake)
    with pytest.raises(InvalidInput):
        await collect(engine, "Hello.", "no-such-voice")
    with pytest.raises(InvalidInput):
        await collect(engine, "Hello.", speed=9.0)
    assert edge_fake.connections == 0


async def test_a_turn_without_audio_is_engine_unavailable(edge_fake: FakeEdgeServer) -> None:
    engine = EdgeEngine(wss_url=edge_fake.url, default_voice="en-US-NobodyNeural")
    with pytest.raises(EngineUnavailable, match="no audio"):
        await collect(engine, "Hello.", None)


async def test_connection_cut_mid_stream_raises_after_partial_audio(edge_fake: FakeEdgeServer) -> None:
    edge_fake.mode = "drop"
    received: list[bytes] = []
    with pytest.raises(EngineUnavailable, match="ended early"):
        async for chunk in engine_for(edge_fake).synthesize("This sentence is cut off in the middle.", "alloy"):
            if isinstance(chunk, bytes):
                received.append(chunk)
    assert received, "audio before the cut is passed on (the router restarts the sentence elsewhere)"


async def test_server_that_never_answers_is_a_timeout(edge_fake: FakeEdgeServer) -> None:
    edge_fake.mode = "hang"
    with pytest.raises(EngineTimeout):
        await collect(engine_for(edge_fake, connect_timeout_s=0.3, receive_timeout_s=0.3), "Hello.")
    assert edge_fake.connections == 1


async def test_refused_connection_is_unavailable_and_check_says_why() -> None:
    server = FakeEdgeServer()
    await server.start()
    url = server.url
    await server.stop()  # the port is now closed
    engine = EdgeEngine(wss_url=url, check_ttl_s=0)
    with pytest.raises(EngineUnavailable, match="unreachable") as info:
        await collect(engine, "Hello.")
    assert not isinstance(info.value, EngineTimeout)
    check = await engine.check()
    assert not check.available
    assert "Connect" in (check.reason or "") or "refused" in (check.reason or "")


async def test_check_reports_reachability_without_synthesis_and_caches_it(edge_fake: FakeEdgeServer) -> None:
    cached = engine_for(edge_fake, check_ttl_s=3600.0)
    first = await cached.check()
    assert first.available and first.details["endpoint"].startswith("127.0.0.1:")
    assert edge_fake.requests == []  # nothing was synthesized
    await edge_fake.stop()
    assert (await cached.check()).available  # served from the cache
    fresh = engine_for(edge_fake, check_ttl_s=0.0)
    assert not (await fresh.check()).available


async def test_router_finishes_a_cut_sentence_with_the_next_engine(edge_fake: FakeEdgeServer) -> None:
    edge_fake.mode = "drop"
    clients = {"edge": LocalEngineClient(engine_for(edge_fake)), "flite": LocalEngineClient(FliteEngine())}
    router = FallbackRouter(clients, RouterConfig(chain=("edge", "flite"), lookahead=0))
    try:
        pcm, engines = await router.speak(SpeechRequest(text="A sentence that Edge will not finish.", voice="alloy"))
    finally:
        await router.aclose()
    assert engines[-1] == "flite"
    assert len(pcm) / (2 * 24000) > 1.0
