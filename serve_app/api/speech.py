"""OpenAI-compatible speech: `POST /v1/audio/speech`, voices, models, engines.

The response streams as audio is made, as raw audio (`stream_format: "audio"`, the default) or as
server-sent events (`stream_format: "sse"`, what OpenAI's current models and LiveKit's OpenAI
plugin ask for). The first chunk is awaited before the response starts, so a request that cannot
be spoken at all gets a proper status (400 or 503 in OpenAI's error shape) instead of a 200 with
an empty body; after it, raw audio ends early (the client sees an incomplete transfer) and SSE
ends with an `error` event.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from config.logging import truncate
from serve_app.api.deps import DrainDep, RouterDep, StateDep, UsageDep, VoiceStoreDep, require_api_key
from serve_app.api.errors import error_body
from serve_app.core.audio import StreamEncoder
from serve_app.core.errors import AllEnginesFailed, Draining, InvalidInput, ServiceError, ServiceUnavailable
from serve_app.core.timing import WordMark
from serve_app.core.voices import OPENAI_VOICES, is_clone_id
from serve_app.db.lifecycle import UsageRecorder
from serve_app.drain.coordinator import RETRY_AFTER_S
from serve_app.engines import registry
from serve_app.router import AudioChunk, FallbackRouter, SpeechRequest
from serve_app.voice_store import VoiceStore

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
# Usage in `speech.audio.done`: characters of input are input tokens; output tokens are audio
# frames of 20 ms (50 per second of audio made), rounded up.
AUDIO_TOKENS_PER_SECOND = 50
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"

SPEECH_DESCRIPTION = f"""
OpenAI's speech endpoint. The audio streams as it is made.

- `stream_format: "audio"` (default): the body is the audio in `response_format`.
- `stream_format: "sse"` (any model): `text/event-stream` of `data: {{json}}` events:
  `{{"type": "speech.audio.delta", "audio": "<base64 of response_format bytes>"}}` as audio is made;
  with `timestamps: true` also `{{"type": "speech.word", "word", "start_s", "end_s"}}` (seconds from the
  start of the response's audio, monotonic, across sentences and failovers); then
  `{{"type": "speech.audio.done", "usage": {{"input_tokens", "output_tokens", "total_tokens"}}}}` where
  input tokens are the input's characters and output tokens are 20 ms audio frames
  ({AUDIO_TOKENS_PER_SECOND} per second of audio). An error after the first event is an
  `{{"type": "error", "error": {{...}}}}` event (OpenAI's error shape); before it, a 4xx/503 JSON answer.
- `voice`: a name (OpenAI's voices map to each engine's nearest) or `{{"id": "..."}}` (a registered clone).
- `instructions`: accepted on every model; speed cues ("slowly", "quickly") apply to every engine,
  other cues where an engine can follow them (see `honours` in `GET /v1/models`); the rest is ignored.
- Extensions: `engine` (pin one), `language`, `session_id`, `sample_rate` (pcm/wav), `timestamps` (sse),
  `normalize` (numbers, dates, symbols spoken as words; default true).
"""


VoiceName = Annotated[str, Field(min_length=1, max_length=128)]


class VoiceRef(BaseModel):
    """OpenAI's custom voice object: `{"id": "voice_1234"}` (here: a voice id or a registered clone)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., min_length=1, max_length=128)


class SpeechBody(BaseModel):
    """OpenAI's speech request, plus optional `language`, `engine`, `session_id`, `sample_rate`,
    `timestamps` and `normalize`."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field("tts-1", max_length=64)
    input: str = Field(..., max_length=100_000, description="Text to speak (limit: MAX_INPUT_CHARS)")
    voice: VoiceName | VoiceRef = Field("alloy", description="A voice name, or {\"id\": ...}")
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(None, max_length=4096)
    stream_format: Literal["audio", "sse"] | None = None
    language: str | None = Field(None, max_length=16, pattern=LANGUAGE_PATTERN)
    engine: EngineName | None = None  # type: ignore[valid-type]
    session_id: str | None = Field(None, max_length=64)
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    timestamps: bool = Field(False, description="speech.word events (stream_format sse)")
    normalize: bool = Field(True, description="Speak numbers, dates, symbols ... as words")

    @property
    def voice_id(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


async def voice_exists(voice: str, tts: FallbackRouter, store: VoiceStore) -> bool:
    """OpenAI names and catalogued voices answer at once, clones from the voice store; otherwise ask
    the engines, which may offer voices found at run time (a directory of extra voices)."""
    if not voice or len(voice) > 128:
        return False
    if registry.catalogue().is_known_voice(voice):
        return True
    if is_clone_id(voice):
        return await store.exists(voice)  # every replica asks the shared store (briefly cached)
    return any(v["id"].lower() == voice.lower() for v in await tts.voices())


def usage_of(characters: int, audio_seconds: float) -> dict[str, int]:
    """OpenAI's usage object for an answer (see AUDIO_TOKENS_PER_SECOND)."""
    output = math.ceil(audio_seconds * AUDIO_TOKENS_PER_SECOND)
    return {"input_tokens": characters, "output_tokens": output, "total_tokens": characters + output}


def word_event(word: WordMark, kind: str = "speech.word") -> dict[str, Any]:
    return {"type": kind, "word": word.word, "start_s": word.start_s, "end_s": word.end_s}


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _first_and_rest(stream: AsyncIterator[AudioChunk]) -> tuple[AudioChunk, AsyncIterator[AudioChunk]]:
    first = await stream.__anext__()
    return first, stream


@router.post(
    "/v1/audio/speech",
    response_class=StreamingResponse,
    description=SPEECH_DESCRIPTION,
    responses={
        200: {"content": {"audio/mpeg": {}, "audio/wav": {}, "audio/pcm": {}, "text/event-stream": {}}},
        400: {},
        503: {},
    },
)
async def create_speech(
    body: SpeechBody, tts: RouterDep, drain: DrainDep, voices: VoiceStoreDep, usage: UsageDep
) -> Response:
    if drain.draining:  # shutting down: streams in flight finish, new ones go to another instance
        raise Draining("the service is shutting down; retry on another instance", retry_after_s=RETRY_AFTER_S)
    if body.model not in SUPPORTED_MODELS:
        raise InvalidInput(f"model '{body.model[:64]}' does not exist", code="model_not_found", param="model")
    voice = body.voice_id
    if not await voice_exists(voice, tts, voices):
        raise InvalidInput(f"unknown voice '{voice[:64]}'", code="invalid_voice", param="voice")
    engine = body.engine or registry.pinned_models().get(body.model)
    rate = StreamEncoder.rate_for(body.response_format, body.sample_rate or PCM_RATE)
    sse = body.stream_format == "sse"
    request = SpeechRequest(
        text=body.input, voice=voice, language=body.language, speed=body.speed, sample_rate=rate, engine=engine,
        instructions=body.instructions, timestamps=sse and body.timestamps, normalize=body.normalize,
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
        "speech start engine=%s format=%s stream=%s ttfb_ms=%.1f text=%s",
        first.engine, body.response_format, body.stream_format or "audio", ttfb_s * 1000, truncate(body.input),
    )
    headers = {"X-TTS-Engine": first.engine, "X-Sample-Rate": str(rate), "Cache-Control": "no-store"}
    delivery = _Delivery(first, rest, encoder, body, usage, started, ttfb_s)
    if sse:
        return StreamingResponse(
            _events(delivery),
            media_type="text/event-stream",
            headers={**headers, "X-Accel-Buffering": "no", "X-Audio-Content-Type": encoder.content_type},
        )
    return StreamingResponse(_encode(delivery), media_type=encoder.content_type, headers=headers)


class _Delivery:
    """One response's audio on its way out: encoded as it comes, counted, and at the end added to
    its session's usage (time to first byte as the router delivered it, audio seconds, chunks per
    engine). Both body formats (raw audio, SSE events) send through it."""

    def __init__(
        self,
        first: AudioChunk,
        rest: AsyncIterator[AudioChunk],
        encoder: StreamEncoder,
        body: SpeechBody,
        usage: UsageRecorder | None,
        started: float,
        ttfb_s: float,
    ) -> None:
        self.first, self.rest, self.encoder = first, rest, encoder
        self.body, self.usage, self.started, self.ttfb_s = body, usage, started, ttfb_s
        self.pcm_bytes = 0
        self.engines: dict[str, int] = {}
        self.ok = False

    @property
    def seconds(self) -> float:
        return self.pcm_bytes / (2 * self.encoder.sample_rate)

    async def encoded(self) -> AsyncIterator[tuple[bytes, tuple[WordMark, ...]]]:
        """(encoded bytes, words the chunk completes) per chunk, then the encoder's tail."""
        chunk: AudioChunk | None = self.first
        while chunk is not None:
            self.pcm_bytes += len(chunk.pcm)
            if chunk.pcm:
                self.engines[chunk.engine] = self.engines.get(chunk.engine, 0) + 1
            yield self.encoder.feed(chunk.pcm), chunk.words
            chunk = await anext(self.rest, None)
        yield self.encoder.finish(), ()

    async def close(self) -> None:
        self.encoder.close()
        with contextlib.suppress(Exception):
            await self.rest.aclose()  # type: ignore[attr-defined]
        if self.usage is not None and self.body.session_id:
            with contextlib.suppress(Exception):
                await self.usage(
                    self.body.session_id, characters=len(self.body.input), audio_seconds=self.seconds,
                    engines=self.engines, ttfb_s=self.ttfb_s, ok=self.ok, elapsed_s=time.perf_counter() - self.started,
                )


async def _encode(delivery: _Delivery) -> AsyncIterator[bytes]:
    """The raw audio body."""
    try:
        async for data, _ in delivery.encoded():
            if data:
                yield data
        delivery.ok = True
    except AllEnginesFailed as exc:
        # Headers are gone: all we can do is end the stream early and say so in the log.
        logger.error("speech stream aborted after %d bytes: %s", delivery.pcm_bytes, str(exc)[:300])
        raise
    finally:
        await delivery.close()


async def _events(delivery: _Delivery) -> AsyncIterator[bytes]:
    """The SSE body: audio deltas (and words) as made, then `speech.audio.done`, or an `error` event."""
    try:
        async for data, words in delivery.encoded():
            if data:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            for word in words:
                yield _sse(word_event(word))
        yield _sse({"type": "speech.audio.done", "usage": usage_of(len(delivery.body.input), delivery.seconds)})
        delivery.ok = True
    except ServiceError as exc:
        # The stream has started: the error travels in-band, and the stream ends cleanly after it.
        logger.error("speech events ended after %d bytes: %s", delivery.pcm_bytes, str(exc)[:300])
        yield _sse({"type": "error", **error_body(exc)})
    except Exception as exc:
        logger.exception("speech events failed: %s", type(exc).__name__)
        yield _sse({"type": "error", **error_body(ServiceError("internal error"))})
    finally:
        await delivery.close()


@router.get("/v1/audio/voices")
async def list_voices(tts: RouterDep, store: VoiceStoreDep) -> dict[str, Any]:
    """Every engine's voices, OpenAI's names (mapped to each engine's nearest voice), and clones."""
    voices = await tts.voices()
    maps_to = registry.catalogue().openai_mapping()
    openai = [
        {"id": name, "engine": "any", "name": name, "gender": gender, "maps_to": maps_to[name]}
        for name, gender in OPENAI_VOICES.items()
    ]
    cloned = [{**v.to_dict(), "cloned": True} for v in await store.list()]
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
async def list_engines(tts: RouterDep, state: StateDep) -> dict[str, Any]:
    """This replica's view of each engine: availability, breaker, counters, TTFB, capabilities.

    `replica` names the ingress replica that answered (None outside Serve): each replica has its
    own router, counters and breaker cache, so two answers can differ, and this says whose is whose.
    """
    status = await tts.engines_status()
    about = {d["name"]: d for d in registry.describe([e["name"] for e in status])}
    return {
        "object": "list",
        "replica": state.replica,
        "chain": list(tts.chain),
        "data": [{**about[e["name"]], **e} for e in status],
    }
