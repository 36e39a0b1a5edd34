"""OpenAI parity of `POST /v1/audio/speech` through the real Serve app: server-sent events, word
timestamps, `instructions`, `voice` as an object, and the stock clients (the `openai` SDK and
LiveKit's OpenAI TTS plugin) used exactly as their users would."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from serve_app.core.audio import decode_audio, rms_level

pytestmark = pytest.mark.integration

TWO_SENTENCES = "The quick brown fox jumps. It lands near the lazy dog."


def events(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines[:3]
    return [json.loads(line[6:]) for line in lines]


def test_sse_events_carry_audio_words_and_usage(client: httpx.Client) -> None:
    response = client.post("/v1/audio/speech", json={
        "model": "gpt-4o-mini-tts", "voice": {"id": "alloy"}, "input": TWO_SENTENCES, "stream_format": "sse",
        "timestamps": True, "response_format": "mp3", "instructions": "Speak slowly and cheerfully.",
    })
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response)
    kinds = [e["type"] for e in got]
    assert kinds[0] == "speech.audio.delta" and kinds[-1] == "speech.audio.done"
    assert set(kinds) == {"speech.audio.delta", "speech.word", "speech.audio.done"}
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in got if e["type"] == "speech.audio.delta")
    rate, samples = decode_audio(mp3)
    seconds = len(samples) / rate
    assert seconds > 2.0 and rms_level(samples.tobytes()) > 300
    words = [e for e in got if e["type"] == "speech.word"]
    assert [w["word"] for w in words] == TWO_SENTENCES.replace(".", "").split()
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts) and all(w["end_s"] >= w["start_s"] for w in words)
    assert words[-1]["end_s"] <= seconds + 0.1
    assert set(words[0]) == {"type", "word", "start_s", "end_s"}
    usage = got[-1]["usage"]
    assert usage["input_tokens"] == len(TWO_SENTENCES)
    assert usage["output_tokens"] == pytest.approx(seconds * 50, rel=0.1)  # 20 ms audio frames
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_errors_before_the_first_event_are_http_errors(client: httpx.Client) -> None:
    base = {"input": "Hello.", "stream_format": "sse"}
    assert client.post("/v1/audio/speech", json={**base, "voice": {"id": "nobody"}}).status_code == 400
    assert client.post("/v1/audio/speech", json={**base, "voice": {"name": "alloy"}}).status_code == 422
    assert client.post("/v1/audio/speech", json={**base, "stream_format": "json"}).status_code == 422
    assert client.post("/v1/audio/speech", json={**base, "input": "..."}).json()["error"]["code"] == "invalid_input"


def test_every_openai_voice_and_instructions_on_every_model(client: httpx.Client) -> None:
    voices = {v["id"]: v for v in client.get("/v1/audio/voices").json()["data"] if v["engine"] == "any"}
    names = ["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
             "marin", "cedar"]
    assert set(names) <= set(voices)
    assert all({"edge", "flite"} <= set(voices[n]["maps_to"]) for n in names)
    for model in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "flite"):
        response = client.post("/v1/audio/speech", json={
            "model": model, "voice": "cedar", "input": "Hi.", "instructions": "whisper, quickly",
            "response_format": "pcm",
        })
        assert response.status_code == 200, (model, response.text)
    engines = {e["name"]: e for e in client.get("/v1/engines").json()["data"]}
    assert engines["edge"]["word_timing"] == "exact" and engines["flite"]["word_timing"] == "exact"
    assert "instructions" in engines["edge"]["honours"]


def test_openai_sdk_streams_both_formats(serve_url: str) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{serve_url}/v1", api_key="not-needed-in-tests", max_retries=0)
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Streaming speech from Ray Serve.", response_format="wav"
    ) as response:
        wav = response.read()
    assert wav[:4] == b"RIFF" and len(wav) > 48000
    with sdk.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice={"id": "nova"}, input="Events, please.", response_format="pcm",
        stream_format="sse", instructions="calmly",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        parsed = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert parsed[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in parsed if e["type"] == "speech.audio.delta")
    assert len(pcm) / 48000 > 0.5


@pytest.mark.parametrize("model", [None, "tts-1"])
async def test_livekit_openai_plugin_works_unchanged(serve_url: str, model: str | None) -> None:
    """LiveKit's stock plugin: its default model asks for SSE, `tts-1` for raw audio."""
    from livekit.plugins import openai as lk_openai

    options: dict[str, Any] = {"base_url": f"{serve_url}/v1", "api_key": "not-needed-in-tests"}
    if model is not None:
        options["model"] = model
    tts = lk_openai.TTS(**options)
    try:
        stream = tts.synthesize("Hello from the stock LiveKit plugin.")
        frames = [event.frame async for event in stream]
    finally:
        await tts.aclose()
    samples = sum(f.samples_per_channel for f in frames)
    assert frames and frames[0].sample_rate == 24000
    assert samples / 24000 > 1.0
