"""Registered reference clips for voice cloning, stored under VOICES_DIR.

An upload is decoded with PyAV (which proves it is audio), bounded by duration, and stored as a
normalised mono 16-bit WAV next to a small JSON record: `<id>.wav`, `<id>.json`. Storing the
decoded PCM rather than the uploaded container means a replica never parses user-supplied
container formats again, and any replica can read a clip with the standard library.

Ids are `clone-<12 hex>` (see `serve_app.core.voices.CLONE_ID_PATTERN`), generated here and checked on
every lookup, so an id can never name a path outside the directory. The ingress writes, cloning
engines read: on a multi-node cluster VOICES_DIR must be shared storage (NFS, a mounted
bucket); on one node it is just a directory.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from config.logging import truncate
from serve_app.core.audio import decode_audio, wav_header
from serve_app.core.errors import InvalidInput
from serve_app.core.voices import CLONE_ID_PATTERN, CLONE_PREFIX

logger = logging.getLogger(__name__)

# Cloning works well from 10-30 s of clean speech; below a second there is no voice to learn.
MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
NAME_MAX_CHARS = 64
IDS_CACHE_S = 1.0


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


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _wav_bytes(rate: int, samples: np.ndarray) -> bytes:
    pcm = samples.astype("<i2").tobytes()
    return wav_header(rate, len(pcm)) + pcm


class VoiceStore:
    """Reference clips in one directory; safe for concurrent readers and one writer per clip."""

    def __init__(self, root: str | Path, *, max_voices: int = 1000) -> None:
        self.root = Path(root)
        self.max_voices = max_voices
        self._ids_cache: tuple[int, float, set[str]] | None = None

    # --- lookups ----------------------------------------------------------------------------

    @staticmethod
    def valid_id(voice_id: str) -> bool:
        return bool(CLONE_ID_PATTERN.match(voice_id))

    def _paths(self, voice_id: str) -> tuple[Path, Path]:
        if not self.valid_id(voice_id):
            raise KeyError(voice_id)
        return self.root / f"{voice_id}.wav", self.root / f"{voice_id}.json"

    def ids(self) -> set[str]:
        """Registered ids. Speech requests call this, so the listing is reused while the directory's
        mtime is unchanged, for at most IDS_CACHE_S (mtime ticks are coarse, and other replicas write too).
        """
        try:
            stamp = self.root.stat().st_mtime_ns
        except FileNotFoundError:
            return set()
        cached = self._ids_cache
        if cached is None or cached[0] != stamp or time.monotonic() - cached[1] > IDS_CACHE_S:
            found = {p.stem for p in self.root.glob(f"{CLONE_PREFIX}*.json") if self.valid_id(p.stem)}
            cached = self._ids_cache = (stamp, time.monotonic(), found)
        return set(cached[2])

    def get(self, voice_id: str) -> StoredVoice | None:
        try:
            _, meta = self._paths(voice_id)
            record = json.loads(meta.read_text())
        except (KeyError, FileNotFoundError, ValueError):
            return None
        return StoredVoice(**{k: record[k] for k in StoredVoice.__dataclass_fields__})

    def exists(self, voice_id: str) -> bool:
        try:
            wav, meta = self._paths(voice_id)
        except KeyError:
            return False
        return wav.exists() and meta.exists()

    def list(self) -> list[StoredVoice]:
        voices = [v for v in (self.get(i) for i in self.ids()) if v is not None]
        return sorted(voices, key=lambda v: (v.created_at, v.id))

    def load(self, voice_id: str) -> tuple[int, np.ndarray]:
        """(sample rate, mono int16 samples) of a registered clip; KeyError when it is not there."""
        wav_path, _ = self._paths(voice_id)
        try:
            with wave.open(str(wav_path), "rb") as wav:
                rate = wav.getframerate()
                samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        except FileNotFoundError:
            raise KeyError(voice_id) from None
        return rate, samples

    # --- changes ----------------------------------------------------------------------------

    def add(self, data: bytes, name: str | None = None) -> StoredVoice:
        """Validate `data` as audio (PyAV), bound its duration, store it; InvalidInput when unusable."""
        if len(self.ids()) >= self.max_voices:
            raise VoiceLimitReached(f"{self.max_voices} voices are registered already; delete one first")
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
        self.root.mkdir(parents=True, exist_ok=True)
        wav_path, meta_path = self._paths(voice.id)
        _write_atomic(wav_path, _wav_bytes(rate, samples))
        _write_atomic(meta_path, json.dumps(asdict(voice)).encode())  # last: a voice exists once both do
        self._ids_cache = None
        logger.info("voice registered id=%s duration_s=%.1f name=%s", voice.id, duration, truncate(voice.name, 40))
        return voice

    def delete(self, voice_id: str) -> bool:
        try:
            wav_path, meta_path = self._paths(voice_id)
        except KeyError:
            return False
        existed = meta_path.exists()
        meta_path.unlink(missing_ok=True)  # first: the voice stops being listed before its audio goes
        wav_path.unlink(missing_ok=True)
        self._ids_cache = None
        if existed:
            logger.info("voice deleted id=%s", voice_id)
        return existed
