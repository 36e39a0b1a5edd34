"""The batching host in a real Serve application, with the real Zonos library (small random model, CPU).

`EngineHost` is deployed with an engine factory (`bench.zonos_random.small_engine`: the
upstream `Zonos` class at a small size with random weights, built inside the replica), and called
through a Serve handle the way the router calls engines: streaming `synthesize`, `check`, `info`,
`check_health`. The replica loads and warms up before it serves; concurrent requests share a
batch; every stream starts with the admission marker; a caller that cancels frees its row; bad
input comes back as the typed `InvalidInput`. A second replica clones: a clip uploaded through the
live ingress (another process) is spoken by it, read from the sessions database with no shared
directory, and refused there soon after it is deleted.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serve_app.engines.base import InvalidInput
from serve_app.engines.zonos import ZonosRequest, token_budget
from tests.support import require_real_zonos

pytestmark = pytest.mark.integration

APP = "zonos-real-small"
FRAME_BYTES = 512 * 2


@pytest.fixture(scope="module")
def host(serve_port: int) -> Iterator[Any]:

    require_real_zonos()
    from ray import serve

    from bench.zonos_random import small_engine
    from serve_app.deployments import EngineDeployment

    factory = functools.partial(small_engine, max_batch_size=4, batch_wait_s=0.3)
    app = EngineDeployment.options(name="ZonosSmall", ray_actor_options={"num_cpus": 0.1}).bind(factory)
    handle = serve.run(app, name=APP, route_prefix=None, blocking=False)
    try:
        yield handle
    finally:
        serve.delete(APP)


async def speak(host: Any, text: str, **kwargs: Any) -> list[bytes]:
    args = {"voice": "alloy", "language": None, "speed": 1.0, **kwargs}
    stream = host.options(stream=True).synthesize.remote(text, args["voice"], args["language"], args["speed"])
    return [chunk async for chunk in stream]


async def check(host: Any) -> dict[str, Any]:
    result: dict[str, Any] = await host.check.remote()
    return result


async def test_replica_loads_and_warms_up_before_serving(host: Any) -> None:
    status = await check(host)
    assert status["available"], status
    assert status["details"]["loaded"] and status["details"]["batching"]["batches"] >= 1  # the warm-up ran
    info = await host.info.remote()
    assert info["name"] == "zonos" and info["sample_rate"] == 44_100
    await host.check_health.remote()


async def test_concurrent_requests_share_a_batch_and_each_streams(host: Any) -> None:
    texts = [f"Caller {i}." + " Yes." * i for i in range(4)]
    results = await asyncio.gather(*(speak(host, text) for text in texts))
    for text, chunks in zip(texts, results, strict=True):
        assert chunks[0] == b""  # admission marker first, for the router's first-byte timer
        assert len([c for c in chunks if c]) > 1  # streamed in chunks
        # Each row exactly its own length (its text's budget; random weights rarely end by EOS).
        assert len(b"".join(chunks)) == token_budget(ZonosRequest(text, "en-us", "default")) * FRAME_BYTES
    assert (await check(host))["details"]["batching"]["largest"] == 4


async def test_a_cancelled_call_frees_its_row(host: Any) -> None:
    before = (await check(host))["details"]["batching"]["cancelled"]
    text = "A long answer that the caller walks away from."
    stream = host.options(stream=True).synthesize.remote(text, "alloy", None, 0.25)  # ~18 s of audio
    assert await stream.__anext__() == b""
    assert await stream.__anext__()  # audio flows
    stream.cancel()
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        details = (await check(host))["details"]["batching"]
        if details["cancelled"] == before + 1 and details["running"] == 0:
            break
        assert asyncio.get_running_loop().time() < deadline, details
        await asyncio.sleep(0.05)


async def test_bad_input_is_a_typed_invalid_input(host: Any) -> None:
    with pytest.raises(Exception) as caught:
        await speak(host, "   ")
    error = getattr(caught.value, "cause", caught.value)
    assert isinstance(error, InvalidInput) and error.status == 400


# --- a clone uploaded through the live ingress, spoken by a Zonos replica in another process -------


@pytest.fixture(scope="module")
def cloning_host(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real small Zonos with upstream's speaker network, its clones read from the store its own
    settings name (VOICES_BACKEND=database: the sessions database the ingress writes), and a VOICES_DIR
    of its own that nothing shares."""
    require_real_zonos()
    from ray import serve

    from bench.zonos_random import small_engine
    from serve_app.deployments import EngineDeployment

    private = tmp_path_factory.mktemp("zonos-replica-only") / "voices"
    factory = functools.partial(small_engine, stored_voices=True, max_batch_size=2, batch_wait_s=0.05)
    options = {"num_cpus": 0.1, "runtime_env": {"env_vars": {"VOICES_DIR": str(private)}}}
    app = EngineDeployment.options(name="ZonosClones", ray_actor_options=options).bind(factory)
    handle = serve.run(app, name=f"{APP}-clones", route_prefix=None, blocking=False)
    try:
        yield handle
    finally:
        serve.delete(f"{APP}-clones")


def reference_clip(seconds: float = 3.0) -> bytes:
    from serve_app.core.audio import wav_header

    t = np.arange(int(seconds * 16000)) / 16000
    samples = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 12000
    pcm = samples.astype("<i2").tobytes()
    return wav_header(16000, len(pcm)) + pcm


async def test_a_clone_uploaded_through_the_ingress_is_spoken_by_a_replica_elsewhere(
    serve_url: str, cloning_host: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from config.settings import get_settings
    from serve_app.voice_store.factory import build_voice_store

    async with httpx.AsyncClient(base_url=serve_url, timeout=60.0) as api:
        created = await api.post("/v1/audio/voices", files={"file": ("me.wav", reference_clip(), "audio/wav")})
        assert created.status_code == 201, created.text
        voice = created.json()["id"]
        assert (await check(cloning_host))["details"]["voice_store"] == "database"

        text = "Spoken in the uploaded voice."
        cloned = b"".join(await speak(cloning_host, text, voice=voice))
        default = b"".join(await speak(cloning_host, text))
        assert cloned and len(cloned) == len(default) and cloned != default  # another speaker embedding
        assert (await check(cloning_host))["details"]["speakers_cached"] == 1
        # Nothing went through a directory: no clip file under the cluster's data or the replica's VOICES_DIR.
        base: Path = tmp_path_factory.getbasetemp()
        assert not await asyncio.to_thread(lambda: list(base.rglob("clone-*")))

        # The embedding the replica computed is in the shared store for every other replica.
        store = build_voice_store(get_settings())
        try:
            for _ in range(200):
                if await store.embedding(voice, "zonos:Zyphra/Zonos-v0.1-hybrid") is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the computed embedding was never stored")
        finally:
            await store.aclose()

        assert (await api.delete(f"/v1/audio/voices/{voice}")).status_code == 200
        refused: BaseException | None = None
        for _ in range(200):  # refused within VOICES_CHECK_INTERVAL_S (2 s) on the other replica
            try:
                await speak(cloning_host, "Gone?", voice=voice)
            except Exception as exc:
                refused = getattr(exc, "cause", exc)
                break
            await asyncio.sleep(0.05)
        assert isinstance(refused, InvalidInput) and "not registered" in str(refused)
        assert (await check(cloning_host))["details"]["speakers_cached"] == 0
