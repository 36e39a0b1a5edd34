"""The voice catalogue across engines (the store of clones: tests/unit/test_voice_backends.py)."""

from __future__ import annotations

import pytest

from serve_app.core.errors import InvalidInput
from serve_app.core.voices import OPENAI_VOICES, is_clone_id
from serve_app.engines import registry

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
