"""Clips in one directory (VOICES_BACKEND=directory): for a single node, or a volume every node mounts.

Layout: `<id>.wav` (the clip), `<id>.json` (its record, written last: a voice exists once both do),
`<id>.<key digest>.emb` (embeddings). Files are written to a temporary name and renamed, so a
reader never sees half a file. File I/O runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from serve_app.voice_store.clips import StoredVoice, valid_id
from serve_app.voice_store.keys import embedding_suffix


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class DirectoryBackend:
    """`VoiceBackend` over a local (or mounted) directory."""

    name = "directory"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _meta(self, voice_id: str) -> Path:
        return self.root / f"{voice_id}.json"

    def _wav(self, voice_id: str) -> Path:
        return self.root / f"{voice_id}.wav"

    def _emb(self, voice_id: str, key: str) -> Path:
        return self.root / f"{voice_id}{embedding_suffix(key)}"

    # Each method's blocking part, run in a thread by the async method of the same name.

    def _put(self, voice: StoredVoice, wav: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._wav(voice.id), wav)
        _write_atomic(self._meta(voice.id), json.dumps(voice.record()).encode())

    def _get(self, voice_id: str) -> StoredVoice | None:
        return StoredVoice.parse(_read(self._meta(voice_id)))

    def _ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.stem for p in self.root.glob("clone-*.json") if valid_id(p.stem)]

    def _list(self) -> list[StoredVoice]:
        return [v for v in (self._get(i) for i in self._ids()) if v is not None]

    def _put_embedding(self, voice_id: str, key: str, data: bytes) -> None:
        if self._meta(voice_id).exists():
            _write_atomic(self._emb(voice_id, key), data)

    def _delete(self, voice_id: str) -> bool:
        meta = self._meta(voice_id)
        existed = meta.exists()
        meta.unlink(missing_ok=True)  # first: the voice stops being listed before its audio goes
        self._wav(voice_id).unlink(missing_ok=True)
        for emb in self.root.glob(f"{voice_id}.*.emb"):
            emb.unlink(missing_ok=True)
        return existed

    async def put(self, voice: StoredVoice, wav: bytes) -> None:
        await asyncio.to_thread(self._put, voice, wav)

    async def get(self, voice_id: str) -> StoredVoice | None:
        return await asyncio.to_thread(self._get, voice_id)

    async def list(self) -> list[StoredVoice]:
        return await asyncio.to_thread(self._list)

    async def count(self) -> int:
        return len(await asyncio.to_thread(self._ids))

    async def exists(self, voice_id: str) -> bool:
        return await asyncio.to_thread(lambda: self._meta(voice_id).exists() and self._wav(voice_id).exists())

    async def audio(self, voice_id: str) -> bytes | None:
        if not await self.exists(voice_id):
            return None
        return await asyncio.to_thread(_read, self._wav(voice_id))

    async def embedding(self, voice_id: str, key: str) -> bytes | None:
        return await asyncio.to_thread(_read, self._emb(voice_id, key))

    async def put_embedding(self, voice_id: str, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_embedding, voice_id, key, data)

    async def delete(self, voice_id: str) -> bool:
        return await asyncio.to_thread(self._delete, voice_id)

    async def aclose(self) -> None:
        return None
