"""Cloned voices in the sessions database (VOICES_BACKEND=database, the default).

The `voices` table holds each normalised WAV with its record, `voice_embeddings` the speaker
embeddings engines computed from it (per engine and model), deleted with their voice (ON DELETE
CASCADE; SQLite enforces it because the engine turns foreign keys on). Every call is one guarded
transaction through `Database.run`, on the caller's event loop and the process's pool: the
ingress shares its sessions pool; an engine replica opens its own `Database` from the same settings.
Listing never reads the audio column.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from serve_app.db.database import Database
from serve_app.db.models import ClipEmbedding, StoredClip
from serve_app.voice_store.clips import StoredVoice

_RECORD = (StoredClip.id, StoredClip.name, StoredClip.created_at, StoredClip.duration_s, StoredClip.sample_rate)


def _voice(row: tuple[str, str, datetime, float, int]) -> StoredVoice:
    voice_id, name, created_at, duration_s, sample_rate = row
    return StoredVoice(voice_id, name, int(created_at.timestamp()), duration_s, sample_rate)


class DatabaseBackend:
    """`VoiceBackend` over the `voices` tables of a `Database`."""

    name = "database"

    def __init__(self, database: Database, *, owned: bool = False) -> None:
        """`owned`: this backend opened the database and disposes of it on `aclose` (engine replicas)."""
        self.database = database
        self.owned = owned

    async def put(self, voice: StoredVoice, wav: bytes) -> None:
        async def work(s: AsyncSession) -> None:
            s.add(
                StoredClip(
                    id=voice.id, name=voice.name, created_at=datetime.fromtimestamp(voice.created_at, UTC),
                    duration_s=voice.duration_s, sample_rate=voice.sample_rate, audio=wav,
                )
            )  # fmt: skip

        await self.database.run(work)

    async def get(self, voice_id: str) -> StoredVoice | None:
        async def work(s: AsyncSession) -> StoredVoice | None:
            row = (await s.execute(select(*_RECORD).where(StoredClip.id == voice_id))).first()
            return None if row is None else _voice(row.tuple())

        return await self.database.run(work)

    async def list(self) -> list[StoredVoice]:
        async def work(s: AsyncSession) -> list[StoredVoice]:
            rows = await s.execute(select(*_RECORD).order_by(StoredClip.created_at, StoredClip.id))
            return [_voice(row.tuple()) for row in rows]

        return await self.database.run(work)

    async def count(self) -> int:
        async def work(s: AsyncSession) -> int:
            return int((await s.execute(select(func.count()).select_from(StoredClip))).scalar_one())

        return await self.database.run(work)

    async def exists(self, voice_id: str) -> bool:
        async def work(s: AsyncSession) -> bool:
            return (await s.execute(select(StoredClip.id).where(StoredClip.id == voice_id))).first() is not None

        return await self.database.run(work)

    async def audio(self, voice_id: str) -> bytes | None:
        async def work(s: AsyncSession) -> bytes | None:
            found = (await s.execute(select(StoredClip.audio).where(StoredClip.id == voice_id))).scalar_one_or_none()
            return bytes(found) if found is not None else None

        return await self.database.run(work)

    async def embedding(self, voice_id: str, key: str) -> bytes | None:
        async def work(s: AsyncSession) -> bytes | None:
            query = select(ClipEmbedding.data).where(ClipEmbedding.voice_id == voice_id, ClipEmbedding.key == key)
            found = (await s.execute(query)).scalar_one_or_none()
            return bytes(found) if found is not None else None

        return await self.database.run(work)

    async def put_embedding(self, voice_id: str, key: str, data: bytes) -> None:
        async def work(s: AsyncSession) -> None:
            if (await s.execute(select(StoredClip.id).where(StoredClip.id == voice_id))).first() is None:
                return  # the voice was deleted meanwhile: nothing to cache
            await s.execute(delete(ClipEmbedding).where(ClipEmbedding.voice_id == voice_id, ClipEmbedding.key == key))
            s.add(ClipEmbedding(voice_id=voice_id, key=key, data=data))

        # IntegrityError: another replica stored the same embedding first, or the voice went meanwhile.
        with contextlib.suppress(IntegrityError):
            await self.database.run(work)

    async def delete(self, voice_id: str) -> bool:
        async def work(s: AsyncSession) -> bool:
            await s.execute(delete(ClipEmbedding).where(ClipEmbedding.voice_id == voice_id))
            result = await s.execute(delete(StoredClip).where(StoredClip.id == voice_id))
            return bool(getattr(result, "rowcount", 0))

        return await self.database.run(work)

    async def aclose(self) -> None:
        if self.owned:
            await self.database.dispose()
