"""ZonosEngine on the CPU build of torch, against the Zonos test double (tests/fakes/zonos).

The double is importable as `zonos` only inside these tests (the `zonos_double` fixture puts
tests/fakes on sys.path and removes it, and the imported modules, afterwards). It accepts exactly
what the real library accepts (tests/unit/test_zonos_real.py checks that, call by call, and runs
the engine on the real library); here it keeps the engine's own logic fast to test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.core.audio import rms_level
from serve_app.engines.base import EngineUnavailable, InvalidInput
from serve_app.engines.zonos import (
    SAMPLE_RATE,
    ZonosEngine,
    ZonosRequest,
    batch_cond_dicts,
    is_fatal_cuda_error,
    match_language,
    speaking_rate,
)
from serve_app.voice_store import VoiceStore
from serve_app.voice_store.directory import DirectoryBackend
from tests.support import FAKES, forget_zonos

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def zonos_double(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    forget_zonos()
    monkeypatch.syspath_prepend(str(FAKES))
    yield
    forget_zonos()


def tone_wav(path: Path, hz: float, seconds: float = 2.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * hz * t) * 12000 * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return path


def voice_store(tmp_path: Path, **options: Any) -> VoiceStore:
    """The clones' store as a replica would have it (here over a directory: the backends' own
    contract is tests/unit/test_voice_backends.py)."""
    return VoiceStore(DirectoryBackend(tmp_path / "voices"), **options)


def engine(tmp_path: Path, **kwargs: Any) -> ZonosEngine:
    kwargs.setdefault("voice_store", voice_store(tmp_path))
    return ZonosEngine(device="cpu", **kwargs)


async def speak(e: ZonosEngine, text: str, voice: str | None = "alloy", **kwargs: Any) -> list[bytes]:
    """The audio chunks of one request (the admission marker `b""` it starts with is checked and dropped)."""
    chunks = [chunk async for chunk in e.synthesize(text, voice, **kwargs)]
    assert chunks[0] == b""
    return chunks[1:]


def dominant_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


# --- without the package, without a GPU -----------------------------------------------------------


def test_module_imports_without_torch_or_zonos() -> None:
    code = "import sys, serve_app.engines.zonos, serve_app.deployments; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_check_says_the_package_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zonos" else real(name, *a))
    e = engine(tmp_path)
    check = await e.check()
    assert not check.available
    assert "not installed" in (check.reason or "") and "github.com/Zyphra/Zonos" in (check.reason or "")
    with pytest.raises(EngineUnavailable, match="not installed"):
        await speak(e, "Hello.")


async def test_check_says_torch_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    check = await engine(tmp_path).check()
    assert not check.available and "torch is not installed" in (check.reason or "")


async def test_check_recognises_the_pypi_placeholder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    placeholder = tmp_path / "site" / "zonos"
    placeholder.mkdir(parents=True)
    (placeholder / "__init__.py").write_text("")  # what `pip install zonos` gives
    forget_zonos()
    monkeypatch.syspath_prepend(str(placeholder.parent))
    try:
        check = await engine(tmp_path).check()
    finally:
        forget_zonos()
    assert not check.available and "placeholder" in (check.reason or "")


async def test_cuda_device_without_a_gpu_is_reported(tmp_path: Path, zonos_double: None) -> None:
    e = ZonosEngine(device="cuda")
    check = await e.check()
    assert not check.available and "CUDA is not available" in (check.reason or "")


async def test_unknown_model_is_reported(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path, model_name="Zyphra/Zonos-v9")
    e.load()
    check = await e.check()
    assert not check.available and "loading Zyphra/Zonos-v9 on cpu failed" in (check.reason or "")


# --- synthesis through the real code path, on the double ------------------------------------------


async def test_speaks_pcm_at_44k_in_chunks(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path)
    chunks = await speak(e, "Hello there, this is the primary engine speaking.")
    pcm = b"".join(chunks)
    assert e.sample_rate == SAMPLE_RATE == e._model.autoencoder.sampling_rate
    assert len(chunks) > 1 and all(len(c) % 2 == 0 for c in chunks)
    assert 1.0 < len(pcm) / (2 * SAMPLE_RATE) < 10.0
    assert rms_level(pcm) > 1000
    assert (await e.check()).details["loaded"] is True


async def test_speed_and_text_length_shape_the_audio(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path)
    short = b"".join(await speak(e, "Short one."))
    long = b"".join(await speak(e, "A considerably longer sentence, with many more words to say."))
    fast = b"".join(await speak(e, "A considerably longer sentence, with many more words to say.", speed=2.0))
    assert len(short) < len(long)
    assert len(fast) < 0.75 * len(long)
    assert speaking_rate(2.0) == 30.0 and speaking_rate(0.25) == 5.0


async def test_concurrent_requests_share_one_batch_and_end_on_their_own(tmp_path: Path, zonos_double: None) -> None:
    import asyncio

    texts = ["Hi.", "A medium length sentence here.", "And a much longer sentence, which takes a while to say."]
    alone = [b"".join(await speak(engine(tmp_path), t)) for t in texts]
    e = engine(tmp_path, max_batch_size=3, batch_wait_s=1.0)
    batched = [b"".join(chunks) for chunks in await asyncio.gather(*(speak(e, t) for t in texts))]
    assert list(e.batcher.stats.recent) == [3]
    # Each row ends at its own end: the same audio as when spoken alone, not padded to the longest.
    assert batched == alone
    assert len(batched[0]) < len(batched[1]) < len(batched[2])
    assert (await e.check()).details["batching"]["largest"] == 3


async def test_bad_item_fails_alone_and_the_rest_of_the_batch_is_spoken(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path)
    e.load()
    results = e.batcher.run_now(
        [ZonosRequest("Fine.", "en-us", "default"), ZonosRequest("Missing.", "en-us", "clone-000000000000")]
    )
    assert isinstance(results[0], bytes) and len(results[0]) > 0
    assert isinstance(results[1], InvalidInput)


def test_stacked_conditioning_is_refused_as_the_real_library_does(zonos_double: None) -> None:
    """The old batching stacked `[n, 1, k]` tensors; the real conditioners take them as n arguments."""
    import torch
    from zonos.conditioning import make_cond_dict
    from zonos.model import Zonos

    model = Zonos.from_pretrained("Zyphra/Zonos-v0.1-transformer", device="cpu")
    dicts = [make_cond_dict(text=t, device="cpu") for t in ("One.", "Two.")]
    stacked = {k: torch.cat([d[k] for d in dicts]) if isinstance(v, torch.Tensor) else v for k, v in dicts[0].items()}
    with pytest.raises(TypeError, match="positional arguments"):
        model.prepare_conditioning(stacked)
    assert model.prepare_conditioning(batch_cond_dicts(dicts)).shape[0] == 4


async def test_cloned_voice_is_used_and_its_embedding_cached(tmp_path: Path, zonos_double: None) -> None:
    store = voice_store(tmp_path)
    low = await store.add(tone_wav(tmp_path / "low.wav", 140).read_bytes(), "low")
    high = await store.add(tone_wav(tmp_path / "high.wav", 2500).read_bytes(), "high")
    e = engine(tmp_path)
    e.load()
    calls: list[int] = []
    original = e._model.make_speaker_embedding

    def counting(wav: Any, sr: int) -> Any:
        calls.append(sr)
        return original(wav, sr)

    e._model.make_speaker_embedding = counting
    text = "The same sentence in two voices."
    first = b"".join(await speak(e, text, low.id))
    again = b"".join(await speak(e, text, low.id))
    other = b"".join(await speak(e, text, high.id))
    assert calls == [16000, 16000]  # one embedding per clip; the second request hit the cache
    assert (await e.check()).details["speakers_cached"] == 2
    assert len(first) == len(again)
    assert dominant_hz(first) != pytest.approx(dominant_hz(other), abs=5.0)
    with pytest.raises(InvalidInput, match="not registered"):
        await speak(e, text, "clone-0123456789ab")


async def test_speaker_cache_is_bounded(tmp_path: Path, zonos_double: None) -> None:
    store = voice_store(tmp_path)
    ids = [(await store.add(tone_wav(tmp_path / f"{hz}.wav", hz).read_bytes())).id for hz in (200, 400, 800)]
    e = engine(tmp_path, voice_cache_size=2)
    for voice_id in ids:
        await speak(e, "Hello.", voice_id)
    assert list(e._speakers) == ids[1:]


async def test_an_embedding_one_replica_computes_is_reused_by_another(tmp_path: Path, zonos_double: None) -> None:
    """Two engines over one store stand for two replicas: the second never embeds the clip itself."""
    store = voice_store(tmp_path)
    voice = await store.add(tone_wav(tmp_path / "v.wav", 500).read_bytes())
    first, second = engine(tmp_path), engine(tmp_path)
    for e in (first, second):
        e.load()
    calls: list[str] = []
    for name, e in (("first", first), ("second", second)):
        original = e._model.make_speaker_embedding
        e._model.make_speaker_embedding = lambda wav, sr, _o=original, _n=name: calls.append(_n) or _o(wav, sr)
    a = b"".join(await speak(first, "Shared voice.", voice.id))
    for _ in range(100):  # the computed embedding is stored by the event loop after the batch
        if await store.embedding(voice.id, first.embedding_key) is not None:
            break
        await asyncio.sleep(0.02)
    b = b"".join(await speak(second, "Shared voice.", voice.id))
    assert calls == ["first"] and a == b  # same embedding, same audio
    assert (await second.check()).details["speakers_cached"] == 1


async def test_a_deleted_voice_is_refused_and_forgotten(tmp_path: Path, zonos_double: None) -> None:
    writer = voice_store(tmp_path)
    voice = await writer.add(tone_wav(tmp_path / "d.wav", 300).read_bytes())
    e = engine(tmp_path, voice_store=voice_store(tmp_path, check_interval_s=0.0))
    await speak(e, "Before.", voice.id)
    assert voice.id in e._speakers
    assert await writer.delete(voice.id)
    with pytest.raises(InvalidInput, match="not registered"):
        await speak(e, "After.", voice.id)
    assert voice.id not in e._speakers


async def test_clones_are_refused_without_a_voice_store(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path, voice_store=None)
    assert b"".join(await speak(e, "The default voice still works."))
    with pytest.raises(InvalidInput, match="not registered"):
        await speak(e, "A clone cannot.", "clone-0123456789ab")


async def test_default_speaker_comes_from_zonos_speaker_audio(tmp_path: Path, zonos_double: None) -> None:
    plain = engine(tmp_path)
    cloned = engine(tmp_path, speaker_audio=str(tone_wav(tmp_path / "ref.wav", 900)))
    a = b"".join(await speak(plain, "Default speaker."))
    b = b"".join(await speak(cloned, "Default speaker."))
    assert cloned._default_speaker is not None and tuple(cloned._default_speaker.shape) == (1, 1, 128)
    assert dominant_hz(a) != pytest.approx(dominant_hz(b), abs=5.0)
    broken = engine(tmp_path, speaker_audio=str(tmp_path / "missing.wav"))
    broken.load()
    assert "FileNotFoundError" in ((await broken.check()).reason or "")


async def test_default_and_cloned_speakers_in_one_batch(tmp_path: Path, zonos_double: None) -> None:
    store = voice_store(tmp_path)
    clone = await store.add(tone_wav(tmp_path / "c.wav", 300).read_bytes())
    e = engine(tmp_path)
    e.load()
    speakers = ["alloy", clone.id, "alloy"]
    requests = [await e.prepare(f"Line {i}.", s, None, 1.0) for i, s in enumerate(speakers)]
    results = e.batcher.run_now(requests)
    assert all(isinstance(r, bytes) and r for r in results)
    assert list(e.batcher.stats.recent) == [3]  # speaker and no-speaker rows share one batch
    assert dominant_hz(results[0]) != pytest.approx(dominant_hz(results[1]), abs=5.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tag", "code"),
    [("en", "en-us"), ("en-GB", "en-gb"), ("fr_FR", "fr-fr"), ("fr", "fr-fr"), ("de-DE", "de"), ("xx", None)],
)
def test_language_tags_map_to_zonos_codes(tag: str, code: str | None, zonos_double: None) -> None:
    from zonos.conditioning import supported_language_codes

    assert match_language(tag, supported_language_codes) == code


async def test_unsupported_language_and_bad_input_are_the_callers_fault(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path)
    with pytest.raises(InvalidInput, match="language"):
        await speak(e, "Hello.", language="xx")
    with pytest.raises(InvalidInput):
        await speak(e, "   ")
    with pytest.raises(InvalidInput):
        await speak(e, "Hello.", "no-such-voice")
    with pytest.raises(InvalidInput):
        await speak(e, "Hello.", speed=5.0)


async def test_cuda_errors_fail_health_but_out_of_memory_does_not(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path)
    e.load()

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    e._model._decode_one_token = oom
    with pytest.raises(EngineUnavailable):
        await speak(e, "Hello.")
    assert await e.health() is None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    e._model._decode_one_token = broken
    with pytest.raises(EngineUnavailable):
        await speak(e, "Hello.")
    assert "illegal memory access" in (await e.health() or "")
    assert not (await e.check()).available
    with pytest.raises(EngineUnavailable, match="CUDA error"):
        await speak(e, "Hello.")
    assert is_fatal_cuda_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_fatal_cuda_error(ValueError("bad shape"))


def test_warmup_speaks_one_sentence_and_can_be_turned_off(tmp_path: Path, zonos_double: None) -> None:
    e = engine(tmp_path)
    e.load()
    e.warmup()
    assert list(e.batcher.stats.recent) == [1]
    quiet = engine(tmp_path, warmup_on_start=False)
    quiet.load()
    quiet.warmup()
    assert quiet.batcher.stats.batches == 0


async def test_batching_host_loads_warms_up_and_streams(tmp_path: Path, zonos_double: None) -> None:
    from serve_app.deployments import EngineHost

    host = EngineHost(lambda: engine(tmp_path))
    status = await host.check()
    assert status["available"] and status["details"]["loaded"]
    assert status["details"]["batching"]["batches"] == 1  # the warm-up ran before any request
    assert host.info()["sample_rate"] == SAMPLE_RATE and host.info()["voices"][0]["id"] == "default"
    from serve_app.core.wire import unpack

    messages = [m async for m in host.synthesize("Hosted and batched.", "alloy", None, 1.0)]
    chunks = [item for message in messages for item in unpack(message)]
    assert chunks[0] == b"" and rms_level(b"".join(chunks)) > 1000
    await host.check_health()
    with pytest.raises(TypeError, match="is not an Engine"):
        EngineHost(lambda: object())  # type: ignore[arg-type, return-value]


async def test_a_hung_batch_fails_the_health_check_and_recovers_when_it_moves(
    tmp_path: Path, zonos_double: None
) -> None:
    e = engine(tmp_path, hang_timeout_s=0.3, warmup_on_start=False)
    e.load()
    moving = threading.Event()
    original = e._model._decode_one_token

    def stuck(*args: Any, **kwargs: Any) -> Any:
        moving.wait(10)  # a kernel that never returns, until the test lets it
        return original(*args, **kwargs)

    e._model._decode_one_token = stuck
    stream = e.synthesize("Hello there, this is a long enough sentence.", "alloy")
    assert await anext(stream) == b""  # admitted: the batch is running
    assert await e.health() is None  # not yet past the hang timeout
    await asyncio.sleep(0.5)
    problem = await e.health()
    assert problem is not None and "hung" in problem
    moving.set()
    e._model._decode_one_token = original
    chunks = [chunk async for chunk in stream]
    assert chunks and await e.health() is None
