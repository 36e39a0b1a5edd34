"""Voice cloning uploads: `POST /v1/audio/voices`, `GET` and `DELETE /v1/audio/voices/{voice_id}`.

A client uploads a reference clip (multipart field `file`, optional `name`); it is size-limited
(MAX_UPLOAD_BYTES, also enforced on the raw body by the ingress), decoded with PyAV to prove it is
audio, bounded in duration, and stored (`serve_app.voice_store`: the sessions database by default, or
an S3-compatible bucket; every replica sees it). The returned id (`clone-...`)
is then accepted as `voice` by `POST /v1/audio/speech`: engines that clone speak with the cloned
timbre, the others with their default voice. The list of voices stays `GET /v1/audio/voices`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from serve_app.api.deps import SettingsDep, VoiceStoreDep, require_api_key
from serve_app.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from serve_app.voice_store import NAME_MAX_CHARS, VoiceLimitReached

router = APIRouter(tags=["voices"], dependencies=[Depends(require_api_key)])
READ_CHUNK = 256 * 1024


async def _read_bounded(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file, refusing more than `limit` bytes without reading the rest."""
    data = bytearray()
    while chunk := await upload.read(READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"file exceeds {limit} bytes", param="file")
    return bytes(data)


@router.post("/v1/audio/voices", status_code=201, responses={400: {}, 409: {}, 413: {}})
async def upload_voice(
    file: Annotated[UploadFile, File(description="Reference clip: 1-60 s of clean speech, any common format")],
    store: VoiceStoreDep,
    settings: SettingsDep,
    name: Annotated[str | None, Form(max_length=NAME_MAX_CHARS)] = None,
) -> dict[str, Any]:
    """Register a reference clip for voice cloning; returns the voice id to use in speech requests."""
    data = await _read_bounded(file, settings.http.max_upload_bytes)
    if not data:
        raise InvalidInput("file is empty", code="invalid_audio", param="file")
    try:
        voice = await store.add(data, name)
    except VoiceLimitReached as exc:
        raise Conflict(str(exc), code=exc.code) from None
    except InvalidInput as exc:
        raise InvalidInput(str(exc), code="invalid_audio", param="file") from None
    return voice.to_dict()


@router.get("/v1/audio/voices/{voice_id}", responses={404: {}})
async def get_voice(voice_id: str, store: VoiceStoreDep) -> dict[str, Any]:
    voice = await store.get(voice_id)
    if voice is None:
        raise NotFound(f"voice '{voice_id[:64]}' not found", code="voice_not_found")
    return voice.to_dict()


@router.delete("/v1/audio/voices/{voice_id}", responses={404: {}})
async def delete_voice(voice_id: str, store: VoiceStoreDep) -> dict[str, Any]:
    if not await store.delete(voice_id):
        raise NotFound(f"voice '{voice_id[:64]}' not found", code="voice_not_found")
    return {"id": voice_id, "object": "voice", "deleted": True}
