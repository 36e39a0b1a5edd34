"""One voice catalogue across engines, so a fallback keeps a similar voice.

A request names an OpenAI voice (`alloy`, `onyx`, ...) or any engine's own voice id. Each engine
resolves that to its nearest voice: OpenAI names through `OPENAI_VOICE_MAP`, another engine's voice
through its gender, so a male Edge voice falls back to a male Flite voice rather than a default.
"""

from __future__ import annotations

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
    Voice("default", "zonos", "Zonos default speaker", "en-US", None),
]

_GENDER_DEFAULT: dict[str, dict[str, str]] = {
    "flite": {"female": "slt", "male": "rms"},
    "edge": {"female": "en-US-AriaNeural", "male": "en-US-GuyNeural"},
}


def voices_for(engine: str) -> list[Voice]:
    """Catalogue entries of one engine."""
    return [v for v in CATALOGUE if v.engine == engine]


def gender_of(voice: str) -> str | None:
    """Gender of an OpenAI name or any catalogued voice, if known."""
    key = voice.lower()
    if key in OPENAI_VOICES:
        return OPENAI_VOICES[key]
    for v in CATALOGUE:
        if v.id.lower() == key:
            return v.gender
    return None


def is_known_voice(voice: str, extra: set[str] | frozenset[str] = frozenset()) -> bool:
    """True for OpenAI names, catalogued engine voices and `extra` ids (registered clones)."""
    key = voice.lower()
    return key in OPENAI_VOICES or any(v.id.lower() == key for v in CATALOGUE) or voice in extra


def resolve_voice(engine: str, requested: str | None, available: list[str]) -> str:
    """Nearest voice of `engine` for `requested`; the engine's first voice when nothing is asked."""
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
    if gender is None and not is_known_voice(requested):
        raise InvalidInput(f"unknown voice '{requested[:60]}'")
    fallback = _GENDER_DEFAULT.get(engine, {}).get(gender or "", "")
    return by_lower.get(fallback.lower(), available[0])
