"""The voice catalogue across engines, and the store of registered reference clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.core.audio import StreamEncoder
from serve_app.core.errors import InvalidInput
from serve_app.core.voices import OPENAI_VOICES, is_clone_id
from serve_app.engines import registry
from serve_app.voice_store import MAX_SECONDS, VoiceLimitReached, VoiceStore

ENGINES = ("zonos", "edge", "flite")
CATALOGUE = registry.catalogue()


def ids(engine: str) -> list[str]:
    return [v.id for v in CATALOGUE.voices_for(engine)]


def resolve_voice(engine: str, requested: str | None, available: list[str]) -> str:
    return CATALOGUE.resolve(engine, requested, available)


def prefer_language(engine: str, chosen: str, language: str | None, available: list[str]) -> str:
    return CATALOGUE.prefer_language(engine, chosen, language, available)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_openai_name_maps_to_a_catalogued_voice_of_the_same_gender(engine: str) -> None:
    for name, gender in OPENAI_VOICES.items():
        voice = CATALOGUE.catalogued(CATALOGUE.tables[engine].openai[name])
        assert voice is not None and voice.engine == engine
        assert voice.gender in (gender, None)  # Zonos's single default speaker has no gender
        assert resolve_voice(engine, name, ids(engine)) == voice.id


def test_catalogue_ids_are_unique_and_mapping_is_published() -> None:
    every = [v for table in CATALOGUE.tables.values() for v in table.voices]
    assert len({v.id.lower() for v in every}) == len(every)
    mapping = CATALOGUE.openai_mapping()
    assert set(mapping) == set(OPENAI_VOICES)
    assert {"marin", "cedar"} <= set(OPENAI_VOICES)
    assert all(set(by_engine) == set(registry.specs()) for by_engine in mapping.values())  # every engine, every name
    onyx = {engine: mapping["onyx"][engine] for engine in ENGINES}
    assert onyx == {"flite": "rms", "edge": "en-US-DavisNeural", "zonos": "default"}


def test_another_engines_voice_falls_back_to_the_same_gender() -> None:
    assert resolve_voice("flite", "en-US-GuyNeural", ids("flite")) == "rms"
    assert resolve_voice("flite", "en-US-JennyNeural", ids("flite")) == "slt"
    assert resolve_voice("edge", "rms", ids("edge")) == "en-US-GuyNeural"
    assert resolve_voice("zonos", "en-US-GuyNeural", ids("zonos")) == "default"


def test_clone_ids_are_spoken_by_every_engine_unknown_voices_are_refused() -> None:
    clone = "clone-0123456789ab"
    assert is_clone_id(clone) and not is_clone_id("clone-../../etc") and not is_clone_id("clone-XYZ")
    assert resolve_voice("edge", clone, ids("edge")) == "en-US-AriaNeural"
    assert resolve_voice("flite", clone, ids("flite")) == "slt"
    assert CATALOGUE.is_known_voice(clone, {clone}) and not CATALOGUE.is_known_voice(clone)
    with pytest.raises(InvalidInput):
        resolve_voice("edge", "nobody", ids("edge"))
    assert resolve_voice("edge", None, ids("edge")) == ids("edge")[0]


def test_language_prefers_a_voice_speaking_it_with_the_same_gender() -> None:
    edge = ids("edge")
    assert prefer_language("edge", "en-US-GuyNeural", "de-DE", edge) == "de-DE-ConradNeural"
    assert prefer_language("edge", "en-US-AriaNeural", "pt", edge) == "pt-BR-FranciscaNeural"
    assert prefer_language("edge", "en-US-AriaNeural", "en", edge) == "en-US-AriaNeural"  # speaks it already
    assert prefer_language("edge", "en-US-AriaNeural", "en-GB", edge) == "en-GB-SoniaNeural"  # the exact tag wins
    assert prefer_language("edge", "en-US-AriaNeural", "sw", edge) == "en-US-AriaNeural"  # nobody speaks it
    assert prefer_language("edge", "en-US-AriaNeural", None, edge) == "en-US-AriaNeural"


# --- the store ---------------------------------------------------------------------------------


def speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * 9000 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype("<i2")


def encoded(samples: np.ndarray, fmt: str, rate: int = 16000) -> bytes:
    encoder = StreamEncoder(fmt, rate)
    return encoder.feed(samples.tobytes()) + encoder.finish()


def test_store_registers_lists_reads_and_deletes(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path / "voices")
    assert store.ids() == set() and store.list() == []
    voice = store.add(encoded(speech_like(3.0), "mp3"), "  Narrator  ")
    assert is_clone_id(voice.id) and voice.name == "Narrator"
    assert voice.duration_s == pytest.approx(3.0, abs=0.15)
    assert store.ids() == {voice.id} and store.get(voice.id) == voice
    rate, samples = store.load(voice.id)
    assert rate == voice.sample_rate and len(samples) == pytest.approx(3.0 * rate, rel=0.05)
    second = store.add(encoded(speech_like(2.0), "wav"))
    assert second.name == "cloned voice"
    assert [v.id for v in store.list()] == sorted([voice.id, second.id], key=lambda i: (store.get(i).created_at, i))  # type: ignore[union-attr]
    assert store.delete(voice.id) and not store.delete(voice.id)
    assert store.ids() == {second.id} and store.get(voice.id) is None
    assert voice.to_dict()["object"] == "voice" and voice.to_dict()["cloned"] is True


def test_store_refuses_what_is_not_a_usable_clip(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path)
    with pytest.raises(InvalidInput, match="not decodable"):
        store.add(b"definitely not audio" * 100)
    with pytest.raises(InvalidInput, match="too short"):
        store.add(encoded(speech_like(0.3), "wav"))
    with pytest.raises(InvalidInput, match="silent"):
        store.add(encoded(np.zeros(32000, dtype="<i2"), "wav"))
    with pytest.raises(InvalidInput, match="too long"):
        store.add(encoded(speech_like(MAX_SECONDS + 5, rate=8000), "mp3", rate=8000))
    assert store.ids() == set()


def test_store_limit_and_ids_that_are_not_ours(tmp_path: Path) -> None:
    store = VoiceStore(tmp_path, max_voices=1)
    store.add(encoded(speech_like(1.5), "wav"))
    with pytest.raises(VoiceLimitReached):
        store.add(encoded(speech_like(1.5), "wav"))
    (tmp_path / "secret.json").write_text("{}")
    for bad in ("../secret", "secret", "clone-../../x", "CLONE-0123456789AB"):
        assert store.get(bad) is None and not store.delete(bad) and not store.exists(bad)
        with pytest.raises(KeyError):
            store.load(bad)
    assert (tmp_path / "secret.json").exists()
