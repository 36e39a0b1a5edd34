"""Voice cloning end to end, and Zonos batching, through Serve with the Zonos engine on CPU.

A second application ("zonos-cpu", at /zonos-cpu) runs in the test cluster: the real `Ingress`
and the real engine deployment (model load, warm-up, the engine's own batching), with
ZONOS_DEVICE=cpu, ZONOS_NUM_GPUS=0, and tests/fakes on the replicas' PYTHONPATH so `import zonos`
finds the test double there, and only there (tests/unit/test_zonos_real.py and
tests/integration/test_zonos_serve.py run the real library). Uploads go to the ingress, which
stores them in the voice store (the sessions database, VOICES_BACKEND's default); the Zonos replica,
another process, reads the clip from there and computes (and caches, locally and in the store) the
speaker embedding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serve_app.core.audio import rms_level, wav_header
from tests.conftest import wait_http

pytestmark = pytest.mark.integration

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PREFIX = "/zonos-cpu"
UPLOAD_LIMIT = 300_000
ZONOS_RATE = 44_100


@pytest.fixture(scope="module")
def zonos_url(serve_port: int) -> Iterator[str]:
    from ray import serve

    from serve_app.deployments import EngineDeployment
    from serve_app.ingress import Ingress

    env = {
        "ZONOS_DEVICE": "cpu",
        "ZONOS_NUM_GPUS": "0",
        "ZONOS_MAX_BATCH_SIZE": "4",
        "ZONOS_BATCH_WAIT_TIMEOUT_S": "0.5",
        "TTS_ENGINE_CHAIN": "zonos",
        "MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "PYTHONPATH": os.pathsep.join(p for p in (str(FAKES), os.environ.get("PYTHONPATH")) if p),
    }
    options = {"num_cpus": 0.1, "runtime_env": {"env_vars": env}}
    zonos = EngineDeployment.options(name="ZonosEngine", max_ongoing_requests=48, ray_actor_options=options).bind(
        "zonos"
    )
    app = Ingress.options(ray_actor_options=options).bind({"zonos": zonos})
    serve.run(app, name="zonos-cpu", route_prefix=PREFIX, blocking=False)
    url = f"http://127.0.0.1:{serve_port}{PREFIX}"
    wait_http(f"{url}/health")
    try:
        yield url
    finally:
        serve.delete("zonos-cpu")


@pytest.fixture
def api(zonos_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=zonos_url, timeout=60.0) as client:
        yield client


def reference_clip(seconds: float = 3.0, hz: float = 180.0) -> bytes:
    """A voiced, modulated tone as a WAV file (what a client would upload)."""
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    samples = np.sin(2 * np.pi * hz * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 12000
    pcm = samples.astype("<i2").tobytes()
    return wav_header(rate, len(pcm)) + pcm


def zonos_status(api: httpx.Client) -> dict[str, Any]:
    return next(e for e in api.get("/v1/engines").json()["data"] if e["name"] == "zonos")


def speak(api: httpx.Client, text: str, voice: str = "alloy") -> httpx.Response:
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm", "sample_rate": ZONOS_RATE}
    return api.post("/v1/audio/speech", json=body)


def test_zonos_replica_loaded_and_warmed_up_before_serving(api: httpx.Client) -> None:
    status = zonos_status(api)
    assert status["available"], status
    details = status["check"]["details"]
    assert details["loaded"] and details["device"] == "cpu"
    assert details["batching"]["batches"] >= 1  # the warm-up synthesis ran in the constructor
    response = speak(api, "Zonos answers on CPU with the test double.")
    assert response.status_code == 200, response.text
    assert response.headers["x-tts-engine"] == "zonos"
    assert rms_level(response.content) > 1000


def test_concurrent_requests_are_batched_into_one_generate(api: httpx.Client) -> None:
    texts = [f"Concurrent sentence number {i} for the batch." for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda t: speak(api, t), texts))
    assert all(r.status_code == 200 and r.headers["x-tts-engine"] == "zonos" for r in responses)
    assert zonos_status(api)["check"]["details"]["batching"]["largest"] >= 2


def test_upload_a_clip_and_speak_with_it_then_delete(api: httpx.Client) -> None:
    created = api.post(
        "/v1/audio/voices", files={"file": ("me.wav", reference_clip(), "audio/wav")}, data={"name": "Test voice"}
    )
    assert created.status_code == 201, created.text
    voice = created.json()
    assert voice["id"].startswith("clone-") and voice["name"] == "Test voice"
    assert voice["duration_s"] == pytest.approx(3.0, abs=0.05)
    assert api.get(f"/v1/audio/voices/{voice['id']}").json()["id"] == voice["id"]
    listed = {v["id"]: v for v in api.get("/v1/audio/voices").json()["data"]}
    assert listed[voice["id"]]["name"] == "Test voice" and listed[voice["id"]]["cloned"] is True

    cloned = speak(api, "Now in the uploaded voice.", voice=voice["id"])
    default = speak(api, "Now in the uploaded voice.")
    assert cloned.status_code == 200, cloned.text
    assert cloned.headers["x-tts-engine"] == "zonos"
    assert cloned.content != default.content  # another speaker embedding, another voice
    assert zonos_status(api)["check"]["details"]["speakers_cached"] >= 1

    assert api.delete(f"/v1/audio/voices/{voice['id']}").json()["deleted"] is True
    assert api.delete(f"/v1/audio/voices/{voice['id']}").status_code == 404
    gone = speak(api, "Gone.", voice=voice["id"])
    assert gone.status_code == 400 and gone.json()["error"]["code"] == "invalid_voice"


def test_uploads_that_are_not_usable_clips_are_refused(api: httpx.Client) -> None:
    not_audio = api.post("/v1/audio/voices", files={"file": ("x.wav", b"RIFF" + b"\x00" * 5000, "audio/wav")})
    assert not_audio.status_code == 400 and not_audio.json()["error"]["code"] == "invalid_audio"
    too_short = api.post("/v1/audio/voices", files={"file": ("s.wav", reference_clip(0.2), "audio/wav")})
    assert too_short.status_code == 400 and "too short" in too_short.json()["error"]["message"]
    too_big = api.post("/v1/audio/voices", files={"file": ("b.wav", reference_clip(12.0), "audio/wav")})
    assert too_big.status_code == 413
    missing = api.post("/v1/audio/voices", data={"name": "no file"})
    assert missing.status_code == 422
    assert api.get("/v1/audio/voices/clone-000000000000").status_code == 404
    assert api.get("/v1/audio/voices/..%2F..%2Fetc").status_code == 404
