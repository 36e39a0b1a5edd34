"""Clips in an S3-compatible object store (VOICES_BACKEND=s3): AWS S3, MinIO, Ceph, R2, GCS interop.

Objects under VOICES_S3_PREFIX: `<id>.wav` (the clip), `<id>.json` (its record, written last and
deleted first, so a listed voice is always complete), `<id>.<key digest>.emb` (embeddings).
aiobotocore is asynchronous, so no call blocks the event loop; the client is opened on the first
call, on the loop that makes it (a replica's), and closed by `aclose`. Credentials come from
VOICES_S3_ACCESS_KEY_ID / VOICES_S3_SECRET_ACCESS_KEY when set, else botocore's usual chain
(AWS_* variables, an instance or pod role).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import VoiceSettings
from serve_app.voice_store.clips import StoredVoice, valid_id
from serve_app.voice_store.keys import embedding_suffix
from serve_app.voice_store.store import VoiceStoreUnavailable

_MISSING = {"404", "NoSuchKey", "NotFound"}
_LIST_CONCURRENCY = 16


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


class S3Backend:
    """`VoiceBackend` over one bucket and key prefix."""

    name = "s3"

    def __init__(self, settings: VoiceSettings) -> None:
        if not settings.s3_bucket:
            raise ValueError("VOICES_S3_BUCKET is required when VOICES_BACKEND=s3")
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self._client_args: dict[str, Any] = {
            "endpoint_url": settings.s3_endpoint_url or None,
            "region_name": settings.s3_region,
            "config": Config(
                connect_timeout=settings.s3_timeout_s,
                read_timeout=settings.s3_timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        }
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            self._client_args["aws_access_key_id"] = settings.s3_access_key_id
            self._client_args["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    from aiobotocore.session import get_session

                    stack = contextlib.AsyncExitStack()
                    client = get_session().create_client("s3", **self._client_args)
                    self._client = await stack.enter_async_context(client)
                    self._stack = stack
        return self._client

    def _key(self, voice_id: str, suffix: str) -> str:
        return f"{self.prefix}{voice_id}{suffix}"

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One S3 call; None when the object is missing, VoiceStoreUnavailable when S3 does not answer."""
        client = await self._s3()
        try:
            return await getattr(client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise VoiceStoreUnavailable(f"voice store (s3) {method} failed: {str(exc)[:200]}") from None
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise VoiceStoreUnavailable(f"voice store (s3) unreachable: {type(exc).__name__}") from None

    async def _read(self, key: str) -> bytes | None:
        answer = await self._call("get_object", Key=key)
        if answer is None:
            return None
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data

    async def _json_keys(self) -> list[str]:
        client = await self._s3()
        keys: list[str] = []
        try:
            async for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix) :]
                    if name.endswith(".json") and valid_id(name[: -len(".json")]):
                        keys.append(item["Key"])
        except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
            raise VoiceStoreUnavailable(f"voice store (s3) list failed: {type(exc).__name__}") from None
        return keys

    async def put(self, voice: StoredVoice, wav: bytes) -> None:
        await self._call("put_object", Key=self._key(voice.id, ".wav"), Body=wav, ContentType="audio/wav")
        record = json.dumps(voice.record()).encode()
        await self._call("put_object", Key=self._key(voice.id, ".json"), Body=record, ContentType="application/json")

    async def get(self, voice_id: str) -> StoredVoice | None:
        return StoredVoice.parse(await self._read(self._key(voice_id, ".json")))

    async def list(self) -> list[StoredVoice]:
        limit = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def one(key: str) -> StoredVoice | None:
            async with limit:
                return await self.get(key[len(self.prefix) : -len(".json")])

        found = await asyncio.gather(*(one(k) for k in await self._json_keys()))
        return [v for v in found if v is not None]

    async def count(self) -> int:
        return len(await self._json_keys())

    async def exists(self, voice_id: str) -> bool:
        return await self._call("head_object", Key=self._key(voice_id, ".json")) is not None

    async def audio(self, voice_id: str) -> bytes | None:
        listed, data = await asyncio.gather(self.exists(voice_id), self._read(self._key(voice_id, ".wav")))
        return data if listed else None

    async def embedding(self, voice_id: str, key: str) -> bytes | None:
        return await self._read(self._key(voice_id, embedding_suffix(key)))

    async def put_embedding(self, voice_id: str, key: str, data: bytes) -> None:
        if await self.exists(voice_id):
            await self._call("put_object", Key=self._key(voice_id, embedding_suffix(key)), Body=data)

    async def delete(self, voice_id: str) -> bool:
        existed = await self.exists(voice_id)
        await self._call("delete_object", Key=self._key(voice_id, ".json"))  # first: no longer listed
        await self._call("delete_object", Key=self._key(voice_id, ".wav"))
        client = await self._s3()
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(voice_id, ".")):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".emb"):
                    await self._call("delete_object", Key=item["Key"])
        return existed

    async def aclose(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack, self._client = None, None
