"""One voice catalogue across engines, so a fallback keeps a similar voice.

A request names an OpenAI voice (`alloy`, `onyx`, ...), any engine's own voice id, or a registered
voice clone (`clone-<12 hex>`, see `serve_app.voice_store`). Each engine resolves that to its
nearest voice: OpenAI names through `OPENAI_VOICE_MAP`, another engine's voice through its gender
(a male Edge voice falls back to a male Flite voice rather than a default), a clone to the
engine's default voice (only Zonos can speak with a cloned timbre). When a request names a
language, `prefer_language` swaps to a voice of that language with the same gender, so a German
sentence is not read by an English voice after a fallback.
"""

from __future__ import annotations

import re

from serve_app.engines.base import InvalidInput, Voice

OPENAI_VOICES: dict[str, str] = {
    "alloy": "female",
    "ash": "male",
    "ballad": "male",
    "coral": "female",
    "echo": "male",
    "fable": "male",
    "nova": "female",
    "onyx": "male",
    "sage": "female",
    "shimmer": "female",
    "verse": "male",
}

# Registered reference clips: the id format is fixed so it can never name a path outside the store.
CLONE_PREFIX = "clone-"
CLONE_ID_PATTERN = re.compile(r"^clone-[0-9a-f]{12}$")

# Nearest voice per engine for each OpenAI name.
OPENAI_VOICE_MAP: dict[str, dict[str, str]] = {
    "flite": {
        "alloy": "slt", "ash": "rms", "ballad": "awb", "coral": "slt", "echo": "rms", "fable": "awb",
        "nova": "slt", "onyx": "rms", "sage": "slt", "shimmer": "slt", "verse": "awb",
    },
    "edge": {
        "alloy": "en-US-AriaNeural", "ash": "en-US-AndrewNeural", "ballad": "en-GB-RyanNeural",
        "coral": "en-US-JennyNeural", "echo": "en-US-GuyNeural", "fable": "en-GB-RyanNeural",
        "nova": "en-US-EmmaNeural", "onyx": "en-US-DavisNeural", "sage": "en-GB-SoniaNeural",
        "shimmer": "en-US-AvaNeural", "verse": "en-US-BrianNeural",
    },
    # Zonos has one built-in speaker (ZONOS_SPEAKER_AUDIO or the model's own); timbre comes from clones.
    "zonos": {name: "default" for name in OPENAI_VOICES},
}

# Every engine voice we ship, with a gender so cross-engine fallback can pick a similar one.
CATALOGUE: list[Voice] = [
    Voice("slt", "flite", "SLT (US English, female)", "en-US", "female"),
    Voice("rms", "flite", "RMS (US English, male)", "en-US", "male"),
    Voice("awb", "flite", "AWB (Scottish English, male)", "en-GB", "male"),
    Voice("kal", "flite", "Kal (US English, male, 8 kHz)", "en-US", "male"),
    Voice("kal16", "flite", "Kal16 (US English, male)", "en-US", "male"),
    Voice("en-US-AriaNeural", "edge", "Aria", "en-US", "female"),
    Voice("en-US-JennyNeural", "edge", "Jenny", "en-US", "female"),
    Voice("en-US-EmmaNeural", "edge", "Emma", "en-US", "female"),
    Voice("en-US-AvaNeural", "edge", "Ava", "en-US", "female"),
    Voice("en-GB-SoniaNeural", "edge", "Sonia", "en-GB", "female"),
    Voice("en-US-GuyNeural", "edge", "Guy", "en-US", "male"),
    Voice("en-US-DavisNeural", "edge", "Davis", "en-US", "male"),
    Voice("en-US-AndrewNeural", "edge", "Andrew", "en-US", "male"),
    Voice("en-US-BrianNeural", "edge", "Brian", "en-US", "male"),
    Voice("en-GB-RyanNeural", "edge", "Ryan", "en-GB", "male"),
    Voice("de-DE-KatjaNeural", "edge", "Katja", "de-DE", "female"),
    Voice("de-DE-ConradNeural", "edge", "Conrad", "de-DE", "male"),
    Voice("fr-FR-DeniseNeural", "edge", "Denise", "fr-FR", "female"),
    Voice("fr-FR-HenriNeural", "edge", "Henri", "fr-FR", "male"),
    Voice("es-ES-ElviraNeural", "edge", "Elvira", "es-ES", "female"),
    Voice("es-ES-AlvaroNeural", "edge", "Alvaro", "es-ES", "male"),
    Voice("it-IT-ElsaNeural", "edge", "Elsa", "it-IT", "female"),
    Voice("it-IT-DiegoNeural", "edge", "Diego", "it-IT", "male"),
    Voice("pt-BR-FranciscaNeural", "edge", "Francisca", "pt-BR", "female"),
    Voice("pt-BR-AntonioNeural", "edge", "Antonio", "pt-BR", "male"),
    Voice("ja-JP-NanamiNeural", "edge", "Nanami", "ja-JP", "female"),
    Voice("ja-JP-KeitaNeural", "edge", "Keita", "ja-JP", "male"),
    Voice("zh-CN-XiaoxiaoNeural", "edge", "Xiaoxiao", "zh-CN", "female"),
    Voice("zh-CN-YunxiNeural", "edge", "Yunxi", "zh-CN", "male"),
    Voice("default", "zonos", "Zonos default speaker", "en-US", None),
]

_GENDER_DEFAULT: dict[str, dict[str, str]] = {
    "flite": {"female": "slt", "male": "rms"},
    "edge": {"female": "en-US-AriaNeural", "male": "en-US-GuyNeural"},
}


def voices_for(engine: str) -> list[Voice]:
    """Catalogue entries of one engine."""
    return [v for v in CATALOGUE if v.engine == engine]


def is_clone_id(voice: str) -> bool:
    """True when `voice` has the shape of a registered clone id (whether or not it exists)."""
    return bool(CLONE_ID_PATTERN.match(voice))


def catalogued(voice: str) -> Voice | None:
    """The catalogue entry with id `voice` (case-insensitive), if any."""
    key = voice.lower()
    return next((v for v in CATALOGUE if v.id.lower() == key), None)


def gender_of(voice: str) -> str | None:
    """Gender of an OpenAI name or any catalogued voice, if known."""
    key = voice.lower()
    if key in OPENAI_VOICES:
        return OPENAI_VOICES[key]
    entry = catalogued(voice)
    return entry.gender if entry else None


def is_known_voice(voice: str, extra: set[str] | frozenset[str] = frozenset()) -> bool:
    """True for OpenAI names, catalogued engine voices and `extra` ids (registered clones)."""
    return voice.lower() in OPENAI_VOICES or catalogued(voice) is not None or voice in extra


def resolve_voice(engine: str, requested: str | None, available: list[str]) -> str:
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
    mapped = OPENAI_VOICE_MAP.get(engine, {}).get(key)
    if mapped and mapped.lower() in by_lower:
        return by_lower[mapped.lower()]
    gender = gender_of(requested)
    if gender is None and not is_known_voice(requested) and not is_clone_id(requested):
        raise InvalidInput(f"unknown voice '{requested[:60]}'")
    fallback = _GENDER_DEFAULT.get(engine, {}).get(gender or "", "")
    return by_lower.get(fallback.lower(), available[0])


def _primary(language: str) -> str:
    return language.replace("_", "-").split("-")[0].lower()


def prefer_language(engine: str, chosen: str, language: str | None, available: list[str]) -> str:
    """`chosen`, or a voice of `engine` speaking `language` with the same gender when it does not.

    Matching is on the full tag first (`pt-BR`), then on the primary subtag (`pt`); a language no
    catalogued voice speaks keeps `chosen` (the engine may still read it, with an accent).
    """
    if not language:
        return chosen
    current = catalogued(chosen)
    wanted = language.replace("_", "-").lower()
    if current is not None and (current.language.lower() == wanted or _primary(current.language) == wanted):
        return chosen
    offered = {v.lower() for v in available}
    candidates = [v for v in voices_for(engine) if v.id.lower() in offered]
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


def openai_voice_mapping() -> dict[str, dict[str, str]]:
    """For each OpenAI name, the voice each engine speaks it with (shown by the voice catalogue)."""
    return {name: {engine: table[name] for engine, table in OPENAI_VOICE_MAP.items()} for name in OPENAI_VOICES}
