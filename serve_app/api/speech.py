"""OpenAI-compatible speech: `POST /v1/audio/speech`, voices, models, engines.

The response streams as audio is made. The first chunk is awaited before the response starts, so
a request that cannot be spoken at all gets a proper status (400 or 503 in OpenAI's error shape)
instead of a 200 with an empty body.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from config.logging import truncate
from serve_app.api.deps import get_router, get_services, require_api_key
from serve_app.api.errors import ApiError, error_response
from serve_app.audio import StreamEncoder
from serve_app.drain import RETRY_AFTER_S, is_draining
from serve_app.router import AllEnginesFailed, AudioChunk, SpeechRequest
from serve_app.voices import OPENAI_VOICES, is_known_voice, openai_voice_mapping

logger = logging.getLogger(__name__)

router = APIRouter(tags=["audio"], dependencies=[Depends(require_api_key)])

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SUPPORTED_MODELS: dict[str, str] = {
    "tts-1": "Fallback chain (Zonos, Edge TTS, Flite), tuned for latency",
    "tts-1-hd": "Fallback chain, same engines (quality is the engine's own)",
    "gpt-4o-mini-tts": "Alias of tts-1 for clients that default to it",
    "zonos-v0.1": "Zyphra Zonos, pinned (no fallback)",
    "edge-tts": "Microsoft Edge neural voices, pinned (no fallback)",
    "flite": "CMU Flite, pinned (no fallback)",
}
_MODEL_ENGINE = {"zonos-v0.1": "zonos", "edge-tts": "edge", "flite": "flite"}
PCM_RATE = 24000  # OpenAI's pcm is 24 kHz s16le mono


class SpeechBody(BaseModel):
    """OpenAI's speech request, plus optional `language`, `engine`, `session_id`, `sample_rate`."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("tts-1", max_length=64)
    input: str = Field(..., max_length=100_000, description="Text to speak (limit: MAX_INPUT_CHARS)")
    voice: str = Field("alloy", min_length=1, max_length=128)
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(None, max_length=4096)
    stream_format: Literal["audio"] | None = None
    language: str | None = Field(None, max_length=16, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
    engine: Literal["zonos", "edge", "flite"] | None = None
    session_id: str | None = Field(None, max_length=64)
    sample_rate: int | None = Field(None, ge=8000, le=48000)


async def _first_and_rest(stream: AsyncIterator[AudioChunk]) -> tuple[AudioChunk, AsyncIterator[AudioChunk]]:
    first = await stream.__anext__()
    return first, stream


@router.post(
    "/v1/audio/speech",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}, "audio/pcm": {}}}, 400: {}, 503: {}},
)
async def create_speech(body: SpeechBody) -> Response:
    if is_draining():  # shutting down: streams in flight finish, new ones go to another instance
        return error_response(
            503, "the service is shutting down; retry on another instance", "draining", retry_after_s=RETRY_AFTER_S
        )
    services = get_services()
    tts = get_router()
    if body.model not in SUPPORTED_MODELS:
        raise ApiError(400, f"model '{body.model[:64]}' does not exist", "model_not_found", "model")
    if not is_known_voice(body.voice, services.extra_voices()):
        raise ApiError(400, f"unknown voice '{body.voice[:64]}'", "invalid_voice", "voice")
    engine = body.engine or _MODEL_ENGINE.get(body.model)
    rate = StreamEncoder.rate_for(body.response_format, body.sample_rate or PCM_RATE)
    request = SpeechRequest(
        text=body.input, voice=body.voice, language=body.language, speed=body.speed, sample_rate=rate, engine=engine
    )
    started = time.perf_counter()
    stream = tts.synthesize(request)
    try:
        first, rest = await _first_and_rest(stream)
    except StopAsyncIteration:
        raise ApiError(503, "no audio was produced", "empty_audio") from None
    except AllEnginesFailed as exc:
        logger.warning("speech failed before first byte: %s", str(exc)[:300])
        raise ApiError(503, str(exc)[:500], exc.code, retry_after_s=exc.retry_after_s) from None
    ttfb_s = time.perf_counter() - started
    encoder = StreamEncoder(body.response_format, rate)
    logger.debug(
        "speech start engine=%s format=%s ttfb_ms=%.1f text=%s",
        first.engine, body.response_format, ttfb_s * 1000, truncate(body.input),
    )
    usage = services.extras.get("usage_recorder")
    return StreamingResponse(
        _encode(first, rest, encoder, body, usage, started, ttfb_s),
        media_type=encoder.content_type,
        headers={"X-TTS-Engine": first.engine, "X-Sample-Rate": str(rate), "Cache-Control": "no-store"},
    )


async def _encode(
    first: AudioChunk,
    rest: AsyncIterator[AudioChunk],
    encoder: StreamEncoder,
    body: SpeechBody,
    usage: Any,
    started: float,
    ttfb_s: float,
) -> AsyncIterator[bytes]:
    """Encode and send; at the end, add this request to its session's usage (time to first byte
    as the router delivered it, audio seconds, chunks per engine)."""
    pcm_bytes = 0
    engines: dict[str, int] = {}
    ok = False
    try:
        chunk: AudioChunk | None = first
        while chunk is not None:
            pcm_bytes += len(chunk.pcm)
            engines[chunk.engine] = engines.get(chunk.engine, 0) + 1
            data = encoder.feed(chunk.pcm)
            if data:
                yield data
            try:
                chunk = await rest.__anext__()
            except StopAsyncIteration:
                chunk = None
        tail = encoder.finish()
        if tail:
            yield tail
        ok = True
    except AllEnginesFailed as exc:
        # Headers are gone: all we can do is end the stream early and say so in the log.
        logger.error("speech stream aborted after %d bytes: %s", pcm_bytes, str(exc)[:300])
        raise
    finally:
        encoder.close()
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]
        if usage is not None and body.session_id:
            with contextlib.suppress(Exception):
                await usage(
                    body.session_id, characters=len(body.input), audio_seconds=pcm_bytes / (2 * encoder.sample_rate),
                    engines=engines, ttfb_s=ttfb_s, ok=ok, elapsed_s=time.perf_counter() - started,
                )


@router.get("/v1/audio/voices")
async def list_voices() -> dict[str, Any]:
    """Every engine's voices plus OpenAI's names (mapped to the nearest voice of each engine)."""
    services = get_services()
    tts = get_router()
    voices = await tts.voices()
    maps_to = openai_voice_mapping()
    openai = [
        {"id": name, "engine": "any", "name": name, "gender": gender, "maps_to": maps_to[name]}
        for name, gender in OPENAI_VOICES.items()
    ]
    store = services.extras.get("voice_store")  # registered clones with their names (voice_upload)
    cloned = (
        [v.to_dict() for v in store.list()]
        if store is not None
        else [{"id": v, "engine": "zonos", "name": v, "cloned": True} for v in sorted(services.extra_voices())]
    )
    return {"object": "list", "data": openai + voices + cloned}


@router.get("/v1/models")
async def list_models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "voice-tts-serve", "description": desc}
            for name, desc in SUPPORTED_MODELS.items()
        ],
    }


@router.get("/v1/engines")
async def list_engines() -> dict[str, Any]:
    """This replica's view of each engine: availability, breaker, counters, TTFB percentiles."""
    return {"object": "list", "chain": list(get_router().chain), "data": await get_router().engines_status()}

