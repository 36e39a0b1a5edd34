"""One voice catalogue across engines, so a fallback keeps a similar voice.

A request names an OpenAI voice (`alloy`, `onyx`, ...), any engine's own voice id, or a registered
voice clone (`clone-<12 hex>`). Each engine resolves that to its nearest voice: OpenAI names
through the engine's own table, another engine's voice through its gender (a male voice falls back to
another engine's male voice rather than its default), a clone to the engine's default voice (only an
engine that clones speaks with the cloned timbre). When a request names a language,
`prefer_language` swaps to a voice of that language with the same gender, so a German sentence is
not read by an English voice after a fallback.

Engines declare their `VoiceTable`; the registry assembles the `Catalogue`. Nothing here names an
engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from serve_app.core.errors import InvalidInput

# OpenAI's current voice list, with the gender used to pick a similar voice on other engines.
OPENAI_VOICES: dict[str, str] = {
    "alloy": "female",
    "ash": "male",
    "ballad": "male",
    "cedar": "male",
    "coral": "female",
    "echo": "male",
    "fable": "male",
    "marin": "female",
    "nova": "female",
    "onyx": "male",
    "sage": "female",
    "shimmer": "female",
    "verse": "male",
}

# Registered reference clips: the id format is fixed so it can never name a path outside the store.
CLONE_PREFIX = "clone-"
CLONE_ID_PATTERN = re.compile(r"^clone-[0-9a-f]{12}$")


def is_clone_id(voice: str) -> bool:
    """True when `voice` has the shape of a registered clone id (whether or not it exists)."""
    return bool(CLONE_ID_PATTERN.match(voice))


@dataclass(frozen=True)
class Voice:
    """One voice of one engine, as listed by `GET /v1/audio/voices`."""

    id: str
    engine: str
    name: str
    language: str = "en-US"
    gender: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VoiceTable:
    """An engine's voices, how OpenAI's names map onto them, and a default voice per gender."""

    voices: tuple[Voice, ...]
    openai: Mapping[str, str] = field(default_factory=dict)
    by_gender: Mapping[str, str] = field(default_factory=dict)


def _primary(language: str) -> str:
    return language.replace("_", "-").split("-")[0].lower()


class Catalogue:
    """Every engine's `VoiceTable`, for lookups that cross engines (gender, language, listing)."""

    def __init__(self, tables: Mapping[str, VoiceTable]) -> None:
        self.tables = dict(tables)
        self._by_id = {v.id.lower(): v for table in self.tables.values() for v in table.voices}

    def voices_for(self, engine: str) -> list[Voice]:
        table = self.tables.get(engine)
        return list(table.voices) if table else []

    def catalogued(self, voice: str) -> Voice | None:
        """The entry with id `voice` (case-insensitive), if any engine declares it."""
        return self._by_id.get(voice.lower())

    def gender_of(self, voice: str) -> str | None:
        key = voice.lower()
        if key in OPENAI_VOICES:
            return OPENAI_VOICES[key]
        entry = self.catalogued(voice)
        return entry.gender if entry else None

    def is_known_voice(self, voice: str, extra: set[str] | frozenset[str] = frozenset()) -> bool:
        """True for OpenAI names, catalogued engine voices and `extra` ids (registered clones)."""
        return voice.lower() in OPENAI_VOICES or self.catalogued(voice) is not None or voice in extra

    def resolve(self, engine: str, requested: str | None, available: list[str]) -> str:
        """Nearest voice of `engine` for `requested`; the engine's first voice when nothing is asked.

        A clone id is accepted by every engine (the ingress has already checked it is registered):
        engines that cannot clone speak it with their default voice, so a fallback never turns a
        cloned-voice request into a client error.
        """
        if not available:
            raise InvalidInput(f"engine {engine} has no voices")
        if not requested:
            return available[0]
        by_lower = {v.lower(): v for v in available}
        key = requested.lower()
        if key in by_lower:
            return by_lower[key]
        table = self.tables.get(engine)
        mapped = table.openai.get(key) if table else None
        if mapped and mapped.lower() in by_lower:
            return by_lower[mapped.lower()]
        gender = self.gender_of(requested)
        if gender is None and not self.is_known_voice(requested) and not is_clone_id(requested):
            raise InvalidInput(f"unknown voice '{requested[:60]}'", param="voice")
        fallback = table.by_gender.get(gender or "", "") if table else ""
        return by_lower.get(fallback.lower(), available[0])

    def prefer_language(self, engine: str, chosen: str, language: str | None, available: list[str]) -> str:
        """`chosen`, or a voice of `engine` speaking `language` with the same gender when it does not.

        Matching is on the full tag first (`pt-BR`), then on the primary subtag (`pt`); a language
        no catalogued voice speaks keeps `chosen` (the engine may still read it, with an accent).
        """
        if not language:
            return chosen
        current = self.catalogued(chosen)
        wanted = language.replace("_", "-").lower()
        if current is not None and (current.language.lower() == wanted or _primary(current.language) == wanted):
            return chosen
        offered = {v.lower() for v in available}
        candidates = [v for v in self.voices_for(engine) if v.id.lower() in offered]
        for match in (
            lambda v: v.language.lower() == wanted,
            lambda v: _primary(v.language) == _primary(wanted),
        ):
            same_language = [v for v in candidates if match(v)]
            if same_language:
                gender = current.gender if current else None
                same_gender = [v for v in same_language if v.gender == gender]
                return (same_gender or same_language)[0].id
        return chosen

    def openai_mapping(self) -> dict[str, dict[str, str]]:
        """For each OpenAI name, the voice each engine speaks it with."""
        return {
            name: {engine: table.openai[name] for engine, table in self.tables.items() if name in table.openai}
            for name in OPENAI_VOICES
        }
