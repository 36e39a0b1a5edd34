"""OpenAI's `instructions` ("Speak slowly and calmly") read as the few cues our engines can follow.

Why a cue table and not a model: the engines here take a handful of numeric controls (rate,
pitch, volume; an emotion vector), and a request must never fail or slow down because of
its instructions. So instructions are accepted on every model, matched against simple cues, and
whatever is not understood is ignored. The speed factor is applied by the router to every
engine; pitch, volume and emotion reach only engines that accept instructions (`Engine.
accepts_instructions`). Which engine follows what is declared in each engine's `honours`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Cue -> speed factor. "very"/"extremely" before a cue makes it stronger.
_SPEED_CUES: dict[str, float] = {
    "slowly": 0.85, "slow": 0.85, "slower": 0.85, "unhurried": 0.9, "leisurely": 0.9, "deliberately": 0.9,
    "quickly": 1.15, "fast": 1.15, "faster": 1.15, "rapidly": 1.2, "briskly": 1.1, "hurried": 1.2,
    "urgently": 1.15, "quick": 1.15,
}
# Cue -> (pitch in Hz, volume in percent, emotion).
_TONE_CUES: dict[str, tuple[int, int, str | None]] = {
    "cheerful": (8, 0, "happiness"), "cheerfully": (8, 0, "happiness"), "happy": (8, 0, "happiness"),
    "happily": (8, 0, "happiness"), "excited": (12, 10, "happiness"), "enthusiastic": (10, 5, "happiness"),
    "upbeat": (8, 0, "happiness"), "calm": (-4, -5, "neutral"), "calmly": (-4, -5, "neutral"),
    "soothing": (-6, -10, "neutral"), "gentle": (-4, -10, "neutral"), "gently": (-4, -10, "neutral"),
    "sad": (-8, -10, "sadness"), "sadly": (-8, -10, "sadness"), "somber": (-8, -10, "sadness"),
    "angry": (4, 15, "anger"), "angrily": (4, 15, "anger"), "stern": (-2, 10, "anger"),
    "surprised": (12, 5, "surprise"), "fearful": (6, -5, "fear"), "scared": (6, -5, "fear"),
    "whisper": (0, -40, None), "whispering": (0, -40, None), "softly": (0, -20, None), "quietly": (0, -20, None),
    "loud": (0, 20, None), "loudly": (0, 20, None), "high-pitched": (20, 0, None), "deep": (-15, 0, None),
    "low-pitched": (-15, 0, None),
}
_INTENSIFIERS = frozenset({"very", "extremely", "really", "much", "super"})
_NEGATIONS = frozenset({"not", "don't", "dont", "never", "no", "without"})
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
SPEED_FACTOR_RANGE = (0.6, 1.5)


@dataclass(frozen=True)
class Style:
    """What the cues in `instructions` ask for; the neutral style changes nothing."""

    speed: float = 1.0  # factor on the request's speed
    pitch_hz: int = 0
    volume_percent: int = 0
    emotion: str | None = None

    @property
    def neutral(self) -> bool:
        return self == Style()


def parse_instructions(instructions: str | None) -> Style:
    """The style asked for by simple cue words; anything else in the text is ignored."""
    if not instructions:
        return Style()
    words = _WORD.findall(instructions.lower()[:4096])
    speed, pitch, volume = 1.0, 0, 0
    emotion: str | None = None
    for index, word in enumerate(words):
        before = words[max(0, index - 3) : index]
        if any(w in _NEGATIONS for w in before):
            continue  # "not too fast": better to ignore than to do the opposite
        strength = 1.5 if any(w in _INTENSIFIERS for w in before) else 1.0
        if word in _SPEED_CUES:
            factor = _SPEED_CUES[word]
            speed *= 1.0 + (factor - 1.0) * strength
        elif word in _TONE_CUES:
            hz, percent, mood = _TONE_CUES[word]
            pitch += round(hz * strength)
            volume += round(percent * strength)
            emotion = emotion or mood
    low, high = SPEED_FACTOR_RANGE
    return Style(
        speed=round(min(max(speed, low), high), 3),
        pitch_hz=max(-50, min(50, pitch)),
        volume_percent=max(-50, min(50, volume)),
        emotion=emotion,
    )
