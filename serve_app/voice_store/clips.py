"""What a registered reference clip is, and how an upload becomes one (backend-independent).

An upload is decoded with PyAV (which proves it is audio), bounded by duration, and kept as a
normalised mono 16-bit WAV. Storing the decoded PCM rather than the uploaded container means a
replica never parses user-supplied container formats again, and any replica reads a clip with the
standard library, whichever backend holds it.

Ids are `clone-<12 hex>` (`serve_app.core.voices.CLONE_ID_PATTERN`), generated here and checked on
every lookup, so an id can never name a path or object key outside the store.
"""

from __future__ import annotations

import io
import json
import secrets
import time
import wave
from dataclasses import asdict, dataclass
from typing import Any

import av
import numpy as np

from serve_app.core.audio import decode_audio, wav_header
from serve_app.core.errors import InvalidInput
from serve_app.core.voices import CLONE_ID_PATTERN, CLONE_PREFIX

# Cloning works well from 10-30 s of clean speech; below a second there is no voice to learn.
MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
NAME_MAX_CHARS = 64


class VoiceLimitReached(InvalidInput):
    """VOICES_MAX clips are stored already."""

    code = "voice_limit_reached"


@dataclass(frozen=True)
class StoredVoice:
    """The public record of one registered clip."""

    id: str
    name: str
    created_at: int
    duration_s: float
    sample_rate: int

    def to_dict(self) -> dict[str, Any]:
        return {"object": "voice", "cloned": True, **asdict(self)}

    def record(self) -> dict[str, Any]:
        """The fields a backend keeps next to the audio."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StoredVoice:
        return cls(**{k: record[k] for k in cls.__dataclass_fields__})

    @classmethod
    def parse(cls, data: bytes | None) -> StoredVoice | None:
        """A record stored as JSON; None when missing or unreadable (a half-written or foreign file)."""
        if data is None:
            return None
        try:
            return cls.from_record(json.loads(data))
        except (ValueError, KeyError, TypeError):
            return None


def valid_id(voice_id: str) -> bool:
    return bool(CLONE_ID_PATTERN.match(voice_id))


def wav_bytes(rate: int, samples: np.ndarray) -> bytes:
    pcm = samples.astype("<i2").tobytes()
    return wav_header(rate, len(pcm)) + pcm


def read_wav(data: bytes) -> tuple[int, np.ndarray]:
    """(sample rate, mono int16 samples) of a stored clip (always written by `wav_bytes`)."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return rate, samples


def normalise(data: bytes, name: str | None) -> tuple[StoredVoice, bytes]:
    """Validate `data` as audio (PyAV), bound its duration; the new record and its WAV bytes.

    CPU-bound (decoding): callers on an event loop run it in a thread. InvalidInput when unusable.
    """
    try:
        rate, samples = decode_audio(data, max_seconds=MAX_SECONDS)
    except (av.error.FFmpegError, IndexError, OSError) as exc:  # not audio, or no audio stream in it
        raise InvalidInput(f"file is not decodable audio ({type(exc).__name__})") from None
    except ValueError as exc:  # over MAX_SECONDS (PyAV's own errors, also ValueErrors, are caught above)
        raise InvalidInput(f"reference clip is too long: {exc}; use {MIN_SECONDS:g}-{MAX_SECONDS:g} s") from None
    duration = len(samples) / rate if rate else 0.0
    if duration < MIN_SECONDS:
        raise InvalidInput(f"reference clip is too short ({duration:.2f} s); use {MIN_SECONDS:g}-{MAX_SECONDS:g} s")
    if not np.any(samples):
        raise InvalidInput("reference clip is silent")
    voice = StoredVoice(
        id=f"{CLONE_PREFIX}{secrets.token_hex(6)}",
        name=(name or "").strip()[:NAME_MAX_CHARS] or "cloned voice",
        created_at=int(time.time()),
        duration_s=round(duration, 3),
        sample_rate=rate,
    )
    return voice, wav_bytes(rate, samples)
