"""`VoiceStore`: registered clones as every replica sees them, over one pluggable backend.

The ingress writes (upload, delete) and lists; cloning engines read a clip and the speaker
embedding another replica may already have computed from it. Where the bytes live is the
backend's business (`VoiceBackend`): the sessions database by default, an S3-compatible bucket, or
a directory on one node. Everything here is async and runs on the caller's event loop; the
backends do their own I/O without blocking it.

Deletion across replicas: a replica trusts that a voice it has seen still exists for at most
`check_interval_s` (VOICES_CHECK_INTERVAL_S), then asks the backend again. So a deleted voice is
refused at once by the replica that deleted it and by every other replica within that interval;
not-found answers are never cached, so a new upload is usable everywhere at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from config.logging import truncate
from serve_app.core.errors import ServiceUnavailable
from serve_app.voice_store.clips import StoredVoice, VoiceLimitReached, normalise, read_wav, valid_id

logger = logging.getLogger(__name__)


class VoiceStoreUnavailable(ServiceUnavailable):
    """The backend did not answer (object store down, bucket missing); try again later."""

    code = "voice_store_unavailable"


class VoiceBackend(Protocol):
    """Raw storage of clips, their records and per-model embeddings; ids are already validated.

    Contract (tests/unit/test_voice_backends.py runs it against every backend): `put` makes the
    voice visible only once it is complete; `delete` removes the record first, so a half-deleted
    voice is never listed; embeddings of a voice go with it; `put_embedding` for a voice that is
    gone stores nothing (and may raise nothing).
    """

    name: str

    async def put(self, voice: StoredVoice, wav: bytes) -> None: ...
    async def get(self, voice_id: str) -> StoredVoice | None: ...
    async def list(self) -> list[StoredVoice]: ...
    async def count(self) -> int: ...
    async def exists(self, voice_id: str) -> bool: ...
    async def audio(self, voice_id: str) -> bytes | None: ...
    async def embedding(self, voice_id: str, key: str) -> bytes | None: ...
    async def put_embedding(self, voice_id: str, key: str, data: bytes) -> None: ...
    async def delete(self, voice_id: str) -> bool: ...
    async def aclose(self) -> None: ...


class VoiceStore:
    """Validation, the VOICES_MAX limit and the short existence cache, over a `VoiceBackend`."""

    def __init__(
        self,
        backend: VoiceBackend,
        *,
        max_voices: int = 1000,
        check_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.max_voices = max_voices
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._seen: dict[str, float] = {}  # id -> when the backend last said it exists

    @property
    def backend_name(self) -> str:
        return self.backend.name

    # --- reads --------------------------------------------------------------------------------

    async def exists(self, voice_id: str) -> bool:
        """Whether the voice is registered; a positive answer is trusted for `check_interval_s`."""
        if not valid_id(voice_id):
            return False
        seen = self._seen.get(voice_id)
        if seen is not None and self._clock() - seen < self.check_interval_s:
            return True
        found = await self.backend.exists(voice_id)
        if found:
            self._seen[voice_id] = self._clock()
            if len(self._seen) > 4 * self.max_voices:  # bounded: forget the oldest half
                for key in sorted(self._seen, key=self._seen.__getitem__)[: len(self._seen) // 2]:
                    del self._seen[key]
        else:
            self._seen.pop(voice_id, None)
        return found

    async def get(self, voice_id: str) -> StoredVoice | None:
        return await self.backend.get(voice_id) if valid_id(voice_id) else None

    async def list(self) -> list[StoredVoice]:
        return sorted(await self.backend.list(), key=lambda v: (v.created_at, v.id))

    async def load(self, voice_id: str) -> tuple[int, np.ndarray] | None:
        """(sample rate, mono int16 samples) of a registered clip, or None."""
        data = await self.backend.audio(voice_id) if valid_id(voice_id) else None
        return None if data is None else read_wav(data)

    async def embedding(self, voice_id: str, key: str) -> bytes | None:
        """A speaker embedding some replica computed for this voice with model `key`, if stored."""
        return await self.backend.embedding(voice_id, key) if valid_id(voice_id) else None

    async def save_embedding(self, voice_id: str, key: str, data: bytes) -> None:
        """Keep a computed embedding for the other replicas; best effort (a cache, not a record)."""
        if not valid_id(voice_id):
            return
        try:
            await self.backend.put_embedding(voice_id, key, data)
        except Exception as exc:
            logger.debug("embedding for %s not stored: %s", voice_id, truncate(str(exc), 120))

    # --- changes ------------------------------------------------------------------------------

    async def add(self, data: bytes, name: str | None = None) -> StoredVoice:
        """Validate, normalise and store an upload; InvalidInput when unusable, VoiceLimitReached when full."""
        if await self.backend.count() >= self.max_voices:
            raise VoiceLimitReached(f"{self.max_voices} voices are registered already; delete one first")
        voice, wav = await asyncio.to_thread(normalise, data, name)
        await self.backend.put(voice, wav)
        self._seen[voice.id] = self._clock()
        logger.info(
            "voice registered id=%s duration_s=%.1f backend=%s name=%s",
            voice.id, voice.duration_s, self.backend.name, truncate(voice.name, 40),
        )  # fmt: skip
        return voice

    async def delete(self, voice_id: str) -> bool:
        if not valid_id(voice_id):
            return False
        self._seen.pop(voice_id, None)
        existed = await self.backend.delete(voice_id)
        if existed:
            logger.info("voice deleted id=%s", voice_id)
        return existed

    async def aclose(self) -> None:
        await self.backend.aclose()
