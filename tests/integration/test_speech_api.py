"""The real Serve application over HTTP: OpenAI-compatible speech, streaming, formats, bad input."""

from __future__ import annotations

import io
import wave

import httpx
import numpy as np
import pytest

from serve_app.core.audio import decode_audio, rms_level

pytestmark = pytest.mark.integration

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def speech(client: httpx.Client, **body: object) -> httpx.Response:
    payload = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, **body}
    return client.post("/v1/audio/speech", json=payload)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"]
    return error


def test_health_models_voices_and_docs(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    models = {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert {"tts-1", "tts-1-hd", "flite"} <= models
    voices = client.get("/v1/audio/voices").json()["data"]
    ids = {v["id"] for v in voices}
    assert {"alloy", "onyx", "slt", "rms"} <= ids
    assert client.get("/docs").status_code == 200
    assert "/v1/audio/speech" in client.get("/openapi.json").json()["paths"]


def test_wav_is_real_speech(client: httpx.Client) -> None:
    response = speech(client, response_format="wav", engine="flite")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-tts-engine"] == "flite"
    data = response.content
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data[:44] + b"")) as header:
        assert header.getframerate() == 24000 and header.getnchannels() == 1 and header.getsampwidth() == 2
    pcm = data[44:]
    seconds = len(pcm) / 48000
    assert 2.0 < seconds < 10.0
    assert rms_level(pcm) > 500  # speech, not silence


def test_pcm_is_24khz_s16le(client: httpx.Client) -> None:
    response = speech(client, response_format="pcm", engine="flite", input="Hello there.")
    assert response.status_code == 200
    assert response.headers["x-sample-rate"] == "24000"
    assert len(response.content) % 2 == 0
    assert 0.4 < len(response.content) / 48000 < 3.0
    assert rms_level(response.content) > 500


@pytest.mark.parametrize(
    ("fmt", "ctype"), [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac"), ("flac", "audio/flac")]
)
def test_compressed_formats_decode(client: httpx.Client, fmt: str, ctype: str) -> None:
    response = speech(client, response_format=fmt, engine="flite")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ctype
    rate, samples = decode_audio(response.content)
    assert 2.0 < len(samples) / rate < 10.0
    assert float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) > 300


def test_speed_changes_duration(client: httpx.Client) -> None:
    normal = speech(client, response_format="pcm", engine="flite").content
    fast = speech(client, response_format="pcm", engine="flite", speed=2.0).content
    assert len(fast) < 0.7 * len(normal)


def test_text_starting_with_dash_is_spoken(client: httpx.Client) -> None:
    response = speech(client, response_format="pcm", engine="flite", input="-voice kal -o /etc/passwd")
    assert response.status_code == 200
    assert len(response.content) / 48000 > 1.0


def test_streams_before_the_whole_input_is_spoken(client: httpx.Client) -> None:
    text = " ".join(f"This is sentence number {i} of a long answer." for i in range(12))
    with client.stream(
        "POST",
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "engine": "flite"},
    ) as response:
        assert response.status_code == 200
        chunks = [len(c) for c in response.iter_raw()]
    total = sum(chunks)
    assert len(chunks) >= 6, chunks
    # The first chunk is the first sentence only: a small part of the whole answer.
    assert chunks[0] < total / 4


def test_openai_sdk_streaming(serve_url: str, tmp_path: object) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused-in-development")
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="onyx", input=SENTENCE, response_format="mp3"
    ) as response:
        data = b"".join(response.iter_bytes())
    rate, samples = decode_audio(data)
    assert len(samples) / rate > 2.0


def test_openai_sdk_sees_typed_errors(serve_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{serve_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    assert "unknown voice" in str(info.value)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"input": ""}, 400),
        ({"input": "   \n  "}, 400),
        ({"input": "x" * 4097}, 400),
        ({"voice": "nobody"}, 400),
        ({"response_format": "ogg"}, 422),
        ({"model": "tts-9000"}, 400),
        ({"speed": 9.0}, 422),
        ({"speed": 0.0}, 422),
        ({"input": None}, 422),
        ({"input": "bell\x07ring"}, 400),
        ({"engine": "espeak"}, 422),
    ],
)
def test_bad_input_gets_openai_shaped_4xx(client: httpx.Client, body: dict[str, object], status: int) -> None:
    assert_openai_error(speech(client, **body), status)


def test_malformed_json_and_wrong_content_type(client: httpx.Client) -> None:
    bad = client.post("/v1/audio/speech", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(bad, 422)
    text = client.post("/v1/audio/speech", content=b"hello", headers={"content-type": "text/plain"})
    assert 400 <= text.status_code < 500
    missing = client.post("/v1/audio/speech", json={"voice": "alloy"})
    assert_openai_error(missing, 422)


def test_oversized_body_is_413(client: httpx.Client) -> None:
    response = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "a " * 700_000})
    assert_openai_error(response, 413)


def test_unknown_route_is_openai_shaped_404(client: httpx.Client) -> None:
    assert_openai_error(client.get("/v1/nothing-here"), 404)


def test_request_id_is_echoed_once(client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Request-ID": "trace-abc-123"})
    assert response.headers.get_list("x-request-id") == ["trace-abc-123"]
    assigned = client.get("/health").headers.get_list("x-request-id")
    assert len(assigned) == 1 and assigned[0]


def test_deployments_list_every_engine_deployment_with_running_replicas(client: httpx.Client) -> None:
    listing = client.get("/v1/deployments").json()
    ours = {d["name"]: d for d in listing["data"] if d["application"] == "tts"}
    assert {"Ingress", "EdgeEngine", "PiperEngine"} <= set(ours), listing
    # Flite is hosted inside each ingress replica (FLITE_IN_PROCESS): no deployment, and it serves.
    assert "FliteEngine" not in ours
    flite = next(e for e in client.get("/v1/engines").json()["data"] if e["name"] == "flite")
    assert flite["available"] is True, flite
    # Earlier tests load the engines, so an autoscaled deployment may be adding or shedding replicas:
    # what matters is that it serves (a running replica) and is not failing.
    serving = {"HEALTHY", "UPSCALING", "DOWNSCALING"}
    for deployment in ours.values():
        assert deployment["status"] in serving and deployment["replicas"].get("RUNNING", 0) >= 1, deployment
