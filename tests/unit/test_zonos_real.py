"""ZonosEngine on the real upstream Zonos library: a small random-weight model on CPU.

The model is upstream's `Zonos` class built from a small config (`bench.zonos_random`: two
transformer layers, a narrow DAC codec), so every call below runs upstream's conditioners,
backbone, heads, sampling, delay pattern and DAC decoder; only the weights are random and small.
With random weights a row rarely samples EOS, so most rows end at their token budget; the tests
about EOS use a copy whose EOS logit is made likely (`eos_prone_model`).

`ZONOS_TEST_DEVICE=cuda` runs them on a GPU (default: cpu).

These tests must run in CI: when `zonos` is not importable there, they fail (with how to install
it: `make install-zonos`) instead of skipping.

Also here: the test double (tests/fakes/zonos) against the real library, call by call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.batching import Row
from serve_app.engines.base import EngineBusy, InvalidInput
from serve_app.engines.zonos import (
    GenerationConfig,
    ZonosEngine,
    ZonosRequest,
    batch_cond_dicts,
    batch_conditioning,
    generate_batch,
    token_budget,
    undelay,
)
from serve_app.stream_decode import seam_error
from serve_app.voice_store import VoiceStore
from serve_app.voice_store.directory import DirectoryBackend
from tests.support import FAKES, forget_zonos, require_real_zonos

DEVICE = os.environ.get("ZONOS_TEST_DEVICE", "cpu")
HOP = 512
FRAME_BYTES = HOP * 2


@pytest.fixture(scope="module")
def real_zonos() -> Iterator[None]:
    require_real_zonos()
    yield
    forget_zonos()


@pytest.fixture(scope="module")
def model(real_zonos: None) -> Any:
    from bench.zonos_random import build_model, speaker_model

    built = build_model("small", device=DEVICE, seed=0)
    built.spk_clone_model = speaker_model(DEVICE)  # upstream's speaker network at a small width
    return built


@pytest.fixture(scope="module")
def eos_prone_model(real_zonos: None) -> Any:
    """The small model with codebook 0's EOS logit made large often enough to end rows in ~10-100 frames."""
    import torch

    from bench.zonos_random import build_model

    built = build_model("small", device=DEVICE, seed=0)
    head = built.heads[0].weight
    generator = torch.Generator().manual_seed(1)
    direction = torch.randn(head.shape[1], generator=generator).to(DEVICE)
    head.data[built.eos_token_id] = (direction * head.float().std() * 3.0).to(head.dtype)
    return built


def voice_store(tmp_path: Path) -> VoiceStore:
    return VoiceStore(DirectoryBackend(tmp_path / "voices"))


def make_engine(model: Any, tmp_path: Path, **kwargs: Any) -> ZonosEngine:
    options: dict[str, Any] = {"max_new_frames": 48, "batch_wait_s": 0.5, "seed": 7, "stop_at_eos": False}
    options.update(kwargs)
    options.setdefault("voice_store", voice_store(tmp_path))
    engine = ZonosEngine(device=DEVICE, model=model, **options)
    engine.load()
    assert engine.loaded, engine._problem
    return engine


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


def audio_of(chunks: list[bytes]) -> bytes:
    return b"".join(chunks)


def clip(path: Path, amplitude: float, seconds: float = 2.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    if amplitude >= 1:
        samples = np.sin(2 * np.pi * 180 * t) * amplitude * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    else:  # near-silence: +-1 LSB of dither, which a recorder produces with the microphone muted
        samples = np.random.default_rng(0).integers(-1, 2, t.size)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path.read_bytes()


def rows_for(requests: list[ZonosRequest]) -> tuple[list[Row[ZonosRequest]], list[list[Any]]]:
    outputs: list[list[Any]] = [[] for _ in requests]
    return [Row(r, out.append) for r, out in zip(requests, outputs, strict=True)], outputs


@contextmanager
def spy_decode(model: Any) -> Iterator[list[Any]]:
    """Record the codes every `autoencoder.decode` call gets."""
    seen: list[Any] = []
    original = model.autoencoder.decode

    def recording(codes: Any) -> Any:
        seen.append(codes.clone())
        return original(codes)

    model.autoencoder.decode = recording
    try:
        yield seen
    finally:
        model.autoencoder.decode = original


@contextmanager
def spy_steps(model: Any) -> Iterator[list[int]]:
    """Record the batch size of every decoding step."""
    sizes: list[int] = []
    original = model._decode_one_token

    def recording(input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(int(input_ids.shape[0]))
        return original(input_ids, *args, **kwargs)

    model._decode_one_token = recording
    try:
        yield sizes
    finally:
        del model._decode_one_token


# --- batches of 1, 2, 4 and 8 through the engine -------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 4, 8])
async def test_batches_speak_every_row(model: Any, tmp_path: Path, size: int) -> None:
    engine = make_engine(model, tmp_path, max_batch_size=size)
    texts = [f"Row {i} of a batch of {size}, speaking." for i in range(size)]
    results = await asyncio.gather(*(collect(engine.synthesize(t, "alloy")) for t in texts))
    assert list(engine.batcher.stats.recent) == [size]  # one batch, all rows in it
    for chunks in results:
        assert chunks[0] == b""  # the admission marker comes first
        pcm = audio_of(chunks)
        assert 0 < len(pcm) <= 48 * FRAME_BYTES and len(pcm) % FRAME_BYTES == 0
        assert np.abs(np.frombuffer(pcm, "<i2")).max() > 0


async def test_mixed_languages_speeds_and_speakers_in_one_batch(model: Any, tmp_path: Path) -> None:
    voice = (await voice_store(tmp_path).add(clip(tmp_path / "ref.wav", 9000), "ref")).id
    engine = make_engine(model, tmp_path, max_batch_size=4, max_new_frames=None)
    requests = [
        ("Good morning.", None, "en-US", 1.0),
        ("Bonjour à tous.", voice, "fr", 1.5),
        ("Guten Morgen.", "alloy", "de-DE", 0.6),
        ("こんにちは、日本語です。", voice, "ja", 1.2),
    ]
    results = await asyncio.gather(
        *(collect(engine.synthesize(t, v, language=lang, speed=s)) for t, v, lang, s in requests)
    )
    assert list(engine.batcher.stats.recent) == [4]
    lengths = [len(audio_of(r)) // FRAME_BYTES for r in results]
    # Each row's budget follows its own text and speed, and each row ends at its own: no padding.
    budgets = [token_budget(ZonosRequest(t, "", "", s)) for t, _, _, s in requests]
    assert lengths == budgets and len(set(lengths)) > 1
    assert (await engine.check()).details["speakers_cached"] == 1


def test_speaker_and_no_speaker_rows_condition_as_they_would_alone(model: Any) -> None:
    import torch
    from zonos.conditioning import make_cond_dict

    speaker = model.make_speaker_embedding(torch.randn(1, 32000, device=DEVICE) * 0.3, 16000)
    assert tuple(speaker.shape) == (1, 1, 128) and speaker.dtype == torch.bfloat16
    text = "The same words for every row."
    dicts = [
        make_cond_dict(text=text, language="en-us", speaker=s, speaking_rate=r, device=DEVICE)
        for s, r in [(None, 15.0), (speaker, 20.0), (None, 10.0)]
    ]
    with torch.inference_mode():
        batched = batch_conditioning(model, dicts)
        for i, cond in enumerate(dicts):
            alone = model.prepare_conditioning(cond)  # upstream's one-request path
            assert torch.equal(batched[i], alone[0]) and torch.equal(batched[3 + i], alone[1])
    with pytest.raises(ValueError, match="mixing tensors and None"):
        batch_cond_dicts(dicts)


def test_batched_prefill_under_guidance_equals_each_request_alone(model: Any) -> None:
    import torch
    from zonos.conditioning import make_cond_dict

    dicts = [
        make_cond_dict(text="Equal lengths here.", language="en-us", speaking_rate=r, device=DEVICE)
        for r in (10, 15, 25)
    ]
    first = torch.full((3, 9, 1), model.masked_token_id, device=DEVICE)
    with torch.inference_mode():
        prefix = batch_conditioning(model, dicts)
        params = model.setup_cache(batch_size=6, max_seqlen=prefix.shape[1] + 16)
        hidden = torch.cat([prefix, model.embed_codes(first.repeat(2, 1, 1))], dim=1)
        batched = model._compute_logits(hidden, params, 2.0)
        for i, cond in enumerate(dicts):
            alone = model._prefill(
                model.prepare_conditioning(cond), first[:1], model.setup_cache(2, prefix.shape[1] + 16), 2.0
            )
            assert torch.allclose(batched[i, :, :1025], alone[0, :, :1025], atol=1e-3)
        with pytest.raises(RuntimeError, match="expanded size"):  # why upstream's _prefill cannot batch
            model._prefill(prefix, first, model.setup_cache(6, prefix.shape[1] + 16), 2.0)


# --- the generation loop against upstream generate ----------------------------------------------


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_one_request_gives_upstream_generates_codes(eos_prone_model: Any, seed: int) -> None:
    """Same seed, same codes as `Zonos.generate` (EOS handling included: these seeds end by EOS)."""
    import torch
    from zonos.conditioning import make_cond_dict

    model = eos_prone_model
    cond = make_cond_dict(text="Hello there, this is a test of the small model.", language="en-us", device=DEVICE)
    torch.manual_seed(seed)
    with torch.inference_mode():
        upstream = model.generate(
            model.prepare_conditioning(cond), max_new_tokens=300, progress_bar=False, disable_torch_compile=True
        )
    rows, outputs = rows_for([ZonosRequest("x", "en-us", "default")])
    torch.manual_seed(seed)
    with spy_decode(model) as decoded, torch.inference_mode():
        generate_batch(model, [cond], rows, [300], GenerationConfig(streaming=False))
    assert upstream.shape[-1] < 300  # ended by EOS
    assert torch.equal(decoded[-1], upstream.masked_fill(upstream >= 1024, 0))
    assert len(audio_of([o for o in outputs[0] if isinstance(o, bytes)])) == upstream.shape[-1] * FRAME_BYTES


def test_one_request_at_its_budget_matches_upstream_except_upstreams_last_frames(model: Any) -> None:
    """Without EOS the codes match too, up to the last 8 frames, where upstream is wrong.

    Upstream writes each step's tokens with `masked_scatter_`, which takes its source in flat
    order: once the budget's end closes codebook 0 (then 1, 2, ...), the open codebooks receive
    the tokens sampled for the closed ones, shifted. We write tokens by position.
    """
    import torch
    from zonos.conditioning import make_cond_dict

    cond = make_cond_dict(text="Budget bound.", language="en-us", device=DEVICE)
    torch.manual_seed(11)
    with torch.inference_mode():
        upstream = model.generate(
            model.prepare_conditioning(cond), max_new_tokens=60, progress_bar=False, disable_torch_compile=True
        )
    rows, _ = rows_for([ZonosRequest("x", "en-us", "default")])
    torch.manual_seed(11)
    with spy_decode(model) as decoded, torch.inference_mode():
        generate_batch(model, [cond], rows, [60], GenerationConfig(streaming=False))
    ours = decoded[-1]
    assert ours.shape == upstream.shape == (1, 9, 60)
    assert torch.equal(ours[..., :52], upstream[..., :52])
    assert not torch.equal(ours[..., 52:], upstream[..., 52:])  # upstream's shifted tail


async def test_rows_end_at_their_own_eos_and_leave_the_batch(eos_prone_model: Any, tmp_path: Path) -> None:
    engine = make_engine(eos_prone_model, tmp_path, max_batch_size=4, max_new_frames=400, seed=3, stop_at_eos=True)
    texts = [f"Sentence {i}, ending whenever it ends." for i in range(4)]
    with spy_steps(eos_prone_model) as sizes:
        results = await asyncio.gather(*(collect(engine.synthesize(t)) for t in texts))
    lengths = [len(audio_of(r)) // FRAME_BYTES for r in results]
    assert all(0 < n < 400 for n in lengths)  # every row ended by its own EOS, none at the budget
    assert len(set(lengths)) > 1  # ... at different frames, and no row was padded to the longest
    assert sizes[0] == 4 and sizes == sorted(sizes, reverse=True)  # the batch shrank as rows ended
    assert sizes[-1] == lengths.count(max(lengths))
    # It stopped as soon as the last row's frames were complete (codebook 8 lags codebook 0 by 8 steps).
    assert len(sizes) == max(lengths) + 7


# --- streaming ------------------------------------------------------------------------------------


async def test_streamed_audio_equals_the_one_shot_decode(model: Any, tmp_path: Path) -> None:
    text = "Streaming should sound exactly like the one-shot decode of the same codes."
    streaming = make_engine(model, tmp_path, max_new_frames=120, stream_first_frames=8, stream_chunk_frames=32)
    one_shot = make_engine(model, tmp_path, max_new_frames=120, streaming=False)
    streamed = await collect(streaming.synthesize(text))
    whole = await collect(one_shot.synthesize(text))
    chunks = [c for c in streamed if c]
    assert [len(c) // FRAME_BYTES for c in chunks] == [8, 8, 16, 32, 32, 24]  # first, ramp, capped, rest
    assert len([c for c in whole if c]) == 1
    a = np.frombuffer(audio_of(streamed), "<i2") / 32767.0
    b = np.frombuffer(audio_of(whole), "<i2") / 32767.0
    error = seam_error(a, b)
    assert error["rms"] < 0.01 * 0.1 and error["max"] < 0.01  # goal: RMS below 1% of full scale


def test_streaming_inside_a_batch_each_row_its_own_stream(model: Any) -> None:
    import torch
    from zonos.conditioning import make_cond_dict

    requests = [ZonosRequest(f"Row {i} streams.", "en-us", "default") for i in range(3)]
    conds = [make_cond_dict(text=r.text, language="en-us", device=DEVICE) for r in requests]
    rows, outputs = rows_for(requests)
    with torch.inference_mode():
        config = GenerationConfig(stream_first_frames=4, stream_chunk_frames=16, stop_at_eos=False)
        generate_batch(model, conds, rows, [40, 64, 90], config)
    for out, budget in zip(outputs, [40, 64, 90], strict=True):
        chunks = [o for o in out if isinstance(o, bytes)]
        assert len(chunks) > 2 and chunks[0] and len(chunks[0]) == 4 * FRAME_BYTES
        assert sum(len(c) for c in chunks) == budget * FRAME_BYTES  # each row exactly its own frames
        assert type(out[-1]).__name__ == "_End"


# --- cancellation ------------------------------------------------------------------------------


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_a_cancelled_row_stops_within_two_frames_and_its_batch_goes_on(model: Any, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, max_batch_size=2, max_new_frames=600)
    leaving = engine.synthesize("I will be interrupted.")
    staying = asyncio.ensure_future(collect(engine.synthesize("I keep talking to the end.")))
    with spy_steps(model) as sizes:
        assert await anext(leaving) == b""
        assert await anext(leaving)  # audio is flowing
        await leaving.aclose()  # the caller leaves (disconnect, barge-in, failover)
        at_cancel = len(sizes)
        await wait_for(lambda: sizes[-1] == 1)
        first_alone = sizes.index(1)
        assert first_alone - at_cancel <= 2  # the row's last step was at most 2 frames after the cancel
        kept = await staying
    assert len(audio_of(kept)) == 600 * FRAME_BYTES  # the other row spoke to its end
    details = (await engine.check()).details["batching"]
    assert details["cancelled"] == 1


async def test_a_batch_whose_rows_all_leave_stops(model: Any, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, max_batch_size=2, max_new_frames=2000)

    async def listen(text: str) -> None:
        async for _ in engine.synthesize(text):
            pass

    tasks = [asyncio.ensure_future(listen(f"Caller {i} hangs up.")) for i in range(2)]
    with spy_steps(model) as sizes:
        await wait_for(lambda: len(sizes) > 20)
        for task in tasks:
            task.cancel()  # the consumer's task is cancelled
        at_cancel = len(sizes)
        await wait_for(lambda: engine.batcher.running == 0)
    assert len(sizes) - at_cancel <= 2 and len(sizes) < 2000
    assert engine.batcher.stats.cancelled == 2


async def test_a_request_cancelled_in_the_queue_never_runs_and_busy_is_typed(model: Any, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path, max_batch_size=1, max_queued=1, batch_wait_s=0.0, max_new_frames=2000)
    running = engine.synthesize("The one being spoken.")
    assert await anext(running) == b""
    queued = asyncio.ensure_future(collect(engine.synthesize("Waiting my turn.")))
    await wait_for(lambda: engine.batcher.queued == 1)
    with pytest.raises(EngineBusy) as busy:
        await collect(engine.synthesize("No room for me."))
    assert busy.value.code == "engine_busy" and engine.batcher.stats.busy_rejections == 1
    queued.cancel()
    await wait_for(lambda: engine.batcher.queued == 0)
    await running.aclose()
    await wait_for(lambda: engine.batcher.running == 0)
    assert engine.batcher.stats.items == 1 and engine.batcher.stats.cancelled == 2


# --- bad input ------------------------------------------------------------------------------------


async def test_bad_input_is_the_callers_fault_before_any_batch(model: Any, tmp_path: Path) -> None:
    engine = make_engine(model, tmp_path)
    for text, kwargs in [("   ", {}), ("?! ...", {}), ("Hello.", {"language": "xx"}), ("Hello.", {"speed": 9.0})]:
        with pytest.raises(InvalidInput):
            await collect(engine.synthesize(text, **kwargs))
    with pytest.raises(InvalidInput, match="not registered"):
        await collect(engine.synthesize("Hello.", "clone-0123456789ab"))
    assert engine.batcher.stats.items == 0


async def test_one_bad_request_fails_alone_in_its_batch(model: Any, tmp_path: Path) -> None:
    """A clip that decodes to (near) silence passes upload but has no voice: only its row fails."""
    silent = (await voice_store(tmp_path).add(clip(tmp_path / "silent.wav", 0.0), "muted mic")).id
    engine = make_engine(model, tmp_path, max_batch_size=4)

    async def speak(text: str, voice: str | None) -> bytes | BaseException:
        try:
            return audio_of(await collect(engine.synthesize(text, voice)))
        except Exception as exc:
            return exc

    results = await asyncio.gather(
        speak("Fine one.", None), speak("Silent clip.", silent), speak("Fine two.", "alloy"), speak("Fine 3.", "nova")
    )
    assert list(engine.batcher.stats.recent) == [4]  # the bad request was in the batch
    assert isinstance(results[1], InvalidInput) and "silent" in str(results[1])
    assert results[1].status == 400
    assert all(isinstance(r, bytes) and len(r) == 48 * FRAME_BYTES for r in (results[0], results[2], results[3]))


# --- the test double accepts exactly what the real library accepts --------------------------------


@contextmanager
def zonos_double() -> Iterator[None]:
    """`import zonos` finds tests/fakes/zonos inside the block, the real package again after it."""
    saved = {name: mod for name, mod in sys.modules.items() if name == "zonos" or name.startswith("zonos.")}
    forget_zonos()
    sys.path.insert(0, str(FAKES))
    try:
        yield
    finally:
        sys.path.remove(str(FAKES))
        forget_zonos()
        sys.modules.update(saved)


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call did, comparable across implementations: its error type, or its result's shape."""
    import torch

    try:
        result = call()
    except Exception as exc:
        return ("raises", type(exc).__name__)
    if isinstance(result, torch.Tensor):
        return ("tensor", (result.ndim, result.dtype))
    if isinstance(result, dict):
        return ("dict", sorted(result))
    return ("value", type(result).__name__)


def _same_calls(model: Any) -> dict[str, tuple[str, Any]]:
    """Every call the engine makes into Zonos, with good and bad arguments, and what each gave."""
    import torch
    from zonos.codebook_pattern import apply_delay_pattern
    from zonos.conditioning import make_cond_dict, phonemize, supported_language_codes
    from zonos.sampling import sample_from_logits

    speaker = model.make_speaker_embedding(torch.sin(torch.arange(32000) / 9.0).unsqueeze(0) * 0.3, 16000)
    one = make_cond_dict(text="One request.", language="en-us", speaker=speaker, device=DEVICE)
    plain = make_cond_dict(text="No speaker here.", language="fr-fr", speaking_rate=20.0, device=DEVICE)
    stacked = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) else v) for k, v in plain.items()}
    stacked["espeak"] = (["a", "b"], ["en-us", "en-us"])
    n = 3
    batch = [one, {**one, "speaker": None}, plain]
    prefix = batch_conditioning(model, batch)
    first = torch.full((n, 9, 1), model.masked_token_id)
    outcome: dict[str, tuple[str, Any]] = {
        "languages": ("value", "en-us" in supported_language_codes and "ja" in supported_language_codes),
        "phonemize": _outcome(lambda: phonemize(["Hello there."], ["en-us"])),
        "cond_dict": _outcome(lambda: one),
        "cond_dict_bad_language": _outcome(lambda: make_cond_dict(text="x", language="xx-yy")),
        "speaker": _outcome(lambda: speaker),
        "prepare_one": _outcome(lambda: model.prepare_conditioning(one)),
        "prepare_one_rows": ("value", model.prepare_conditioning(one).shape[0]),
        "prepare_stacked": _outcome(lambda: model.prepare_conditioning(stacked)),
        "prepare_missing_espeak": _outcome(lambda: model.prepare_conditioning({"speaker": None})),
        "prepare_float_speaker": _outcome(lambda: model.prepare_conditioning({**one, "speaker": speaker.float()})),
        "prepare_batched": _outcome(lambda: model.prepare_conditioning(batch_cond_dicts([one, one]))),
        "batch_conditioning_rows": ("value", prefix.shape[0]),
        "prefill_batched_upstream": _outcome(lambda: model._prefill(prefix, first, model.setup_cache(2 * n, 64), 2.0)),
        "embed_unknown": _outcome(lambda: model.embed_codes(torch.full((1, 9, 1), -1))),
        "logits": _outcome(
            lambda: model._compute_logits(
                torch.cat([prefix, model.embed_codes(first.repeat(2, 1, 1))], dim=1),
                model.setup_cache(2 * n, prefix.shape[1] + 8),
                2.0,
            )
        ),
        "decode": _outcome(lambda: model.autoencoder.decode(torch.randint(0, 1024, (2, 9, 5)))),
        "decode_eos": _outcome(lambda: model.autoencoder.decode(torch.full((1, 9, 2), 1024))),
        "sample": _outcome(lambda: sample_from_logits(torch.randn(2, 9, 1025), min_p=0.1)),
        "delay": ("value", tuple(apply_delay_pattern(torch.zeros(2, 9, 4, dtype=torch.long), 1025).shape)),
        "undelay": (
            "value",
            tuple(undelay(apply_delay_pattern(torch.zeros(2, 9, 4, dtype=torch.long), 1025), 0, 4).shape),
        ),
    }
    rows, outputs = rows_for([ZonosRequest(str(i), "en-us", "default") for i in range(n)])
    with torch.inference_mode():
        generate_batch(model, batch, rows, [12, 20, 30], GenerationConfig(stream_first_frames=4, stream_chunk_frames=8))
    outcome["generate_batch"] = ("value", [type(out[-1]).__name__ for out in outputs])
    return outcome


@pytest.mark.skipif(DEVICE != "cpu", reason="an API check, independent of the device; the double runs on CPU")
def test_the_double_accepts_exactly_what_the_real_library_accepts(model: Any) -> None:
    import torch

    with torch.inference_mode():
        real = _same_calls(model)
    with zonos_double(), torch.inference_mode():
        from zonos.model import Zonos

        double = _same_calls(Zonos.from_pretrained("Zyphra/Zonos-v0.1-transformer", device=DEVICE))
    assert double == real
    # And what that means: the stacked shape the old double took is refused by both.
    assert real["prepare_stacked"] == ("raises", "TypeError")
    assert real["prefill_batched_upstream"] == ("raises", "RuntimeError")
    assert real["generate_batch"] == ("value", ["_End"] * 3)


async def test_zonos_model_factory_builds_the_model_the_deployment_loads(
    real_zonos: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZONOS_MODEL_FACTORY replaces `from_pretrained` in the engine the registry builds (as a replica
    does): the small random-weight model loads on the configured device and speaks; a factory that
    cannot be imported makes the engine unavailable with the reason instead of failing the replica."""
    from config.settings import load_settings
    from serve_app.engines import registry

    for name, value in {"ZONOS_DEVICE": "cpu", "ZONOS_WARMUP": "false", "VOICES_BACKEND": "directory"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZONOS_MODEL_FACTORY", "bench.zonos_random:build_model")
    engine = registry.build_engine("zonos", load_settings(_env_file=None))
    assert isinstance(engine, ZonosEngine)
    await asyncio.to_thread(engine.load)
    assert engine.loaded and (await engine.check()).available
    assert len(audio_of(await collect(engine.synthesize("Hi.", None, language=None, speed=1.0)))) > 0

    monkeypatch.setenv("ZONOS_MODEL_FACTORY", "bench.no_such_module:build_model")
    missing = registry.build_engine("zonos", load_settings(_env_file=None))
    assert isinstance(missing, ZonosEngine)
    await asyncio.to_thread(missing.load)
    check = await missing.check()
    assert not missing.loaded and not check.available and "no_such_module" in str(check.reason)
