"""Voice cloning uploads: `POST /v1/audio/voices`, `GET` and `DELETE /v1/audio/voices/{voice_id}`.

A client uploads a reference clip (multipart field `file`, optional `name`); it is size-limited
(MAX_UPLOAD_BYTES, also enforced on the raw body by the ingress), decoded with PyAV to prove it is
audio, bounded in duration, and stored (`serve_app.voice_store`). The returned id (`clone-...`)
is then accepted as `voice` by `POST /v1/audio/speech`: Zonos speaks with the cloned timbre, and
the fallback engines with their default voice. The list of voices stays `GET /v1/audio/voices`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, UploadFile

from serve_app.api.deps import Services, get_services, require_api_key
from serve_app.api.errors import ApiError
from serve_app.engines.base import InvalidInput
from serve_app.voice_store import NAME_MAX_CHARS, VoiceLimitReached, VoiceStore

router = APIRouter(tags=["voices"], dependencies=[Depends(require_api_key)])
READ_CHUNK = 256 * 1024


def get_store() -> VoiceStore:
    store = get_services().extras.get("voice_store")
    if store is None:
        raise ApiError(503, "voice store is not ready", "not_ready")
    return store


async def _read_bounded(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file, refusing more than `limit` bytes without reading the rest."""
    data = bytearray()
    while chunk := await upload.read(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"file exceeds {limit} bytes", "request_too_large", "file")
    return bytes(data)


@router.post("/v1/audio/voices", status_code=201, responses={400: {}, 409: {}, 413: {}})
async def upload_voice(
    file: Annotated[UploadFile, File(description="Reference clip: 1-60 s of clean speech, any common format")],
    name: Annotated[str | None, Form(max_length=NAME_MAX_CHARS)] = None,
) -> dict[str, Any]:
    """Register a reference clip for voice cloning; returns the voice id to use in speech requests."""
    store = get_store()
    data = await _read_bounded(file, get_services().settings.max_upload_bytes)
    if not data:
        raise ApiError(400, "file is empty", "invalid_audio", "file")
    try:
        voice = await asyncio.to_thread(store.add, data, name)
    except VoiceLimitReached as exc:
        raise ApiError(409, str(exc), exc.code) from None
    except InvalidInput as exc:
        raise ApiError(400, str(exc), "invalid_audio", "file") from None
    return voice.to_dict()


@router.get("/v1/audio/voices/{voice_id}", responses={404: {}})
async def get_voice(voice_id: str) -> dict[str, Any]:
    voice = await asyncio.to_thread(get_store().get, voice_id)
    if voice is None:
        raise ApiError(404, f"voice '{voice_id[:64]}' not found", "voice_not_found")
    return voice.to_dict()


@router.delete("/v1/audio/voices/{voice_id}", responses={404: {}})
async def delete_voice(voice_id: str) -> dict[str, Any]:
    if not await asyncio.to_thread(get_store().delete, voice_id):
        raise ApiError(404, f"voice '{voice_id[:64]}' not found", "voice_not_found")
    return {"id": voice_id, "object": "voice", "deleted": True}


async def open_voice_store(services: Services) -> None:
    """Lifespan hook: the store, and the registered ids speech requests accept as voices."""
    settings = services.settings
    store = VoiceStore(settings.zonos_voices_dir, max_voices=settings.zonos_voices_max)
    services.extras["voice_store"] = store
    services.extra_voices = store.ids


def setup(app: FastAPI) -> None:
    from serve_app.ingress import register_lifespan_hook

    register_lifespan_hook(open_voice_store)
