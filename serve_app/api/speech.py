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
from serve_app.api.deps import DrainDep, RouterDep, UsageDep, VoiceStoreDep, require_api_key
from serve_app.core.audio import StreamEncoder
from serve_app.core.errors import AllEnginesFailed, Draining, InvalidInput, ServiceUnavailable
from serve_app.core.voices import OPENAI_VOICES
from serve_app.db.lifecycle import UsageRecorder
from serve_app.drain.coordinator import RETRY_AFTER_S
from serve_app.engines import registry
from serve_app.router import AudioChunk, SpeechRequest

logger = logging.getLogger(__name__)

router = APIRouter(tags=["audio"], dependencies=[Depends(require_api_key)])

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
# OpenAI's model names speak through the whole chain; each engine adds one that pins it.
CHAIN_MODELS: dict[str, str] = {
    "tts-1": "The fallback chain, tuned for latency",
    "tts-1-hd": "The fallback chain (quality is each engine's own)",
    "gpt-4o-mini-tts": "The fallback chain, for clients that default to it",
}
SUPPORTED_MODELS: dict[str, str] = {
    **CHAIN_MODELS,
    **{s.model_id: f"{s.title}, pinned (no fallback)" for s in registry.specs().values()},
}
# The API's engine names come from the registry (an enum in the OpenAPI schema).
EngineName: Any = Literal[tuple(registry.specs())]
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
    engine: EngineName | None = None  # type: ignore[valid-type]
    session_id: str | None = Field(None, max_length=64)
    sample_rate: int | None = Field(None, ge=8000, le=48000)


async def _voice_exists(voice: str, tts: RouterDep, store: VoiceStoreDep) -> bool:
    """OpenAI names, catalogued voices and clones answer at once; otherwise ask the engines, which
    may offer voices found at run time (a directory of extra voices)."""
    if registry.catalogue().is_known_voice(voice, store.ids()):
        return True
    return any(v["id"].lower() == voice.lower() for v in await tts.voices())


async def _first_and_rest(stream: AsyncIterator[AudioChunk]) -> tuple[AudioChunk, AsyncIterator[AudioChunk]]:
    first = await stream.__anext__()
    return first, stream


@router.post(
    "/v1/audio/speech",
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/mpeg": {}, "audio/wav": {}, "audio/pcm": {}}}, 400: {}, 503: {}},
)
async def create_speech(
    body: SpeechBody, tts: RouterDep, drain: DrainDep, voices: VoiceStoreDep, usage: UsageDep
) -> Response:
    if drain.draining:  # shutting down: streams in flight finish, new ones go to another instance
        raise Draining("the service is shutting down; retry on another instance", retry_after_s=RETRY_AFTER_S)
    if body.model not in SUPPORTED_MODELS:
        raise InvalidInput(f"model '{body.model[:64]}' does not exist", code="model_not_found", param="model")
    if not await _voice_exists(body.voice, tts, voices):
        raise InvalidInput(f"unknown voice '{body.voice[:64]}'", code="invalid_voice", param="voice")
    engine = body.engine or registry.pinned_models().get(body.model)
    rate = StreamEncoder.rate_for(body.response_format, body.sample_rate or PCM_RATE)
    request = SpeechRequest(
        text=body.input, voice=body.voice, language=body.language, speed=body.speed, sample_rate=rate, engine=engine
    )
    started = time.perf_counter()
    stream = tts.synthesize(request)
    try:
        first, rest = await _first_and_rest(stream)
    except StopAsyncIteration:
        raise ServiceUnavailable("no audio was produced", code="empty_audio") from None
    except AllEnginesFailed as exc:
        logger.warning("speech failed before first byte: %s", str(exc)[:300])
        raise
    ttfb_s = time.perf_counter() - started
    encoder = StreamEncoder(body.response_format, rate)
    logger.debug(
        "speech start engine=%s format=%s ttfb_ms=%.1f text=%s",
        first.engine, body.response_format, ttfb_s * 1000, truncate(body.input),
    )
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
    usage: UsageRecorder | None,
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
async def list_voices(tts: RouterDep, store: VoiceStoreDep) -> dict[str, Any]:
    """Every engine's voices, OpenAI's names (mapped to each engine's nearest voice), and clones."""
    voices = await tts.voices()
    maps_to = registry.catalogue().openai_mapping()
    openai = [
        {"id": name, "engine": "any", "name": name, "gender": gender, "maps_to": maps_to[name]}
        for name, gender in OPENAI_VOICES.items()
    ]
    cloned = [{**v.to_dict(), "cloned": True} for v in store.list()]
    return {"object": "list", "data": openai + voices + cloned}


@router.get("/v1/models")
async def list_models() -> dict[str, Any]:
    """OpenAI's model list shape; each pinned model says which engine and what it honours."""
    engines = {d["model"]: d for d in registry.describe()}
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "voice-tts-serve",
                "description": desc,
                **({"engine": engines[name]["name"], "honours": engines[name]["honours"]} if name in engines else {}),
            }
            for name, desc in SUPPORTED_MODELS.items()
        ],
    }


@router.get("/v1/engines")
async def list_engines(tts: RouterDep) -> dict[str, Any]:
    """This replica's view of each engine: availability, breaker, counters, TTFB, capabilities."""
    status = await tts.engines_status()
    about = {d["name"]: d for d in registry.describe([e["name"] for e in status])}
    return {"object": "list", "chain": list(tts.chain), "data": [{**about[e["name"]], **e} for e in status]}
