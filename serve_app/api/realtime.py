"""The realtime speech socket, `/v1/audio/speech/stream`: text in as it is written, audio out, barge-in.

Why a socket next to `POST /v1/audio/speech`: a voice agent gets its answer from an LLM token by
token. Over HTTP it must either wait for whole sentences and pay a request per sentence, or wait
for the whole answer. Here the agent appends fragments as they come; every sentence is synthesized
as soon as it is complete (with the router's look-ahead over the sentences that follow), and a
barge-in (`cancel`) stops every sentence in flight in every engine at once.

Protocol (JSON text frames; audio in binary frames):
- client: `session.update` {voice, response_format, sample_rate, engine, model, language, speed,
  instructions, timestamps, normalize} (all optional, defaults as HTTP; applies from the next
  sentence), `input_text.append` {text}, `input_text.flush` (speak what is buffered, end of turn),
  `cancel` (drop buffered text and everything in flight).
- server: binary frames of audio in `response_format`; `sentence.start` {index, text, engine,
  start_s}; `word` {word, start_s, end_s} (with timestamps: seconds from the start of the turn's
  audio, i.e. since the last `flushed`/`cancelled`); `flushed` once all audio of the text flushed so
  far has been sent; `cancelled` once nothing more of the cancelled text will be sent; `error`
  {error: {message, type, param, code}} in OpenAI's shape. Problems with one message are error
  events and the socket stays usable; nothing buffered is dropped without an error event saying so.

How it is built:
- One `RealtimeSession` per socket: a receiver (this coroutine) and a player task. Sentences go into
  segments: consecutive sentences spoken with the same settings, each one `FallbackRouter.stream`
  (sentences join it while it plays) with its own encoder. A flush or a settings change closes the
  open segment; the player plays segments in order.
- Cancel cancels the player task: the router stream it is reading is closed, which cancels every
  sentence task, which closes each engine's stream (through a Serve handle: the replica's
  generator is cancelled, so the engine stops). `cancelled` is sent after that cleanup.
- Back-pressure: inside Ray Serve a replica's `send` only appends to an unbounded queue (the proxy
  forwards at the client's pace), so a slow reader would never slow us down. The player therefore
  paces itself like a real-time listener: it never runs more than `AUDIO_LEAD_S` of audio ahead of
  real time. Text waiting to be spoken is capped (`pending_limit`: an append past it is refused
  with `buffer_full`), and the router synthesizes at most its look-ahead of sentences ahead.
- Spoken form (`normalize`, on by default): while a sentence is still arriving, the parts of it no
  later text can change are normalised in a worker thread (`serve_app.core.spoken_stream`); when it
  is complete only its tail is left, and the router gets it with its spoken form (`Sentence`), so
  normalisation adds little to the time from a sentence's last token to its first audio.
- Auth is the HTTP API's: a bearer header, or an `api_key` query parameter (browsers cannot set
  headers on a WebSocket). Browser origins are checked against the CORS policy (browsers do not
  apply CORS to WebSockets). A draining replica refuses new sockets and closes idle ones (1012).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from config.cors import allowed_origins
from config.logging import truncate
from serve_app.api.deps import require_api_key_ws, state_of, voice_store_of
from serve_app.api.errors import error_body, validation_error
from serve_app.api.speech import (
    LANGUAGE_PATTERN,
    PCM_RATE,
    SUPPORTED_MODELS,
    EngineName,
    ResponseFormat,
    VoiceName,
    VoiceRef,
    voice_exists,
    word_event,
)
from serve_app.core.audio import StreamEncoder, pcm_duration
from serve_app.core.errors import InvalidInput, PayloadTooLarge, ServiceError, ServiceUnavailable, Unauthorized
from serve_app.core.spoken import SpokenNormalizer, get_normalizer, language_key
from serve_app.core.spoken_stream import SpokenFeed
from serve_app.core.text import SentenceBuffer
from serve_app.engines import registry
from serve_app.router import FallbackRouter, Sentence, SpeechRequest
from serve_app.state import AppState

logger = logging.getLogger(__name__)

router = APIRouter(tags=["audio"])

PATH = "/v1/audio/speech/stream"
# A text frame longer than this is refused whole (one append may still carry MAX_INPUT_CHARS).
MAX_MESSAGE_CHARS = 65_536
# The player keeps at most this much audio ahead of a real-time listener (see the module docstring).
AUDIO_LEAD_S = 5.0
# Text waiting to be spoken, in multiples of MAX_INPUT_CHARS (one HTTP request's worth).
PENDING_INPUTS = 4
DRAIN_POLL_S = 0.5
# Close codes: policy violation (auth, origin), try again later (starting, draining), restarting.
CLOSE_POLICY, CLOSE_TRY_LATER, CLOSE_RESTART = 1008, 1013, 1012


class SessionUpdate(BaseModel):
    """`session.update`: any subset of the settings; a field set to null goes back to its default."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["session.update"]
    voice: VoiceName | VoiceRef | None = None
    response_format: ResponseFormat | None = None
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    engine: EngineName | None = None  # type: ignore[valid-type]
    model: str | None = Field(None, max_length=64)
    language: str | None = Field(None, max_length=16, pattern=LANGUAGE_PATTERN)
    speed: float | None = Field(None, ge=0.25, le=4.0)
    instructions: str | None = Field(None, max_length=4096)
    timestamps: bool | None = None
    normalize: bool | None = None


class TextAppend(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text.append"]
    text: str


@dataclass(frozen=True)
class Voicing:
    """How sentences are spoken: the session's settings when a sentence is complete."""

    voice: str = "alloy"
    response_format: str = "mp3"
    sample_rate: int | None = None
    engine: str | None = None
    model: str | None = None
    language: str | None = None
    speed: float = 1.0
    instructions: str | None = None
    timestamps: bool = False
    normalize: bool = True

    @property
    def rate(self) -> int:
        return StreamEncoder.rate_for(self.response_format, self.sample_rate or PCM_RATE)

    def request(self) -> SpeechRequest:
        engine = self.engine or (registry.pinned_models().get(self.model) if self.model else None)
        return SpeechRequest(
            text="", voice=self.voice, language=self.language, speed=self.speed, sample_rate=self.rate,
            engine=engine, instructions=self.instructions, timestamps=self.timestamps, normalize=self.normalize,
        )


@dataclass
class Segment:
    """Consecutive sentences spoken with one voicing: one router stream, one encoder."""

    voicing: Voicing
    # The spoken form of a complete sentence, mostly computed while it arrived (None: the router
    # normalises, or not, as the voicing says).
    spoken: Callable[[str], Awaitable[str]] | None = None
    flush: bool = False  # send `flushed` once its audio is out
    closed: bool = False
    texts: list[tuple[int, str]] = field(default_factory=list)  # (session sentence index, text)
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)

    def add(self, index: int, sentence: str) -> None:
        self.texts.append((index, sentence))
        self.queue.put_nowait(sentence)

    def close(self, *, flush: bool) -> None:
        self.flush = self.flush or flush
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    async def sentences(self) -> AsyncIterator[str | Sentence]:
        while (sentence := await self.queue.get()) is not None:
            yield sentence if self.spoken is None else Sentence(sentence, await self.spoken(sentence))


class Pacer:
    """A model of a real-time listener: how far the audio sent is ahead of its playback."""

    def __init__(self, lead_s: float) -> None:
        self.lead_s = lead_s
        self._plays_until = 0.0

    async def before(self, seconds: float) -> None:
        """Wait until `seconds` more audio keep us within the lead, then count them as sent."""
        loop = asyncio.get_running_loop()
        ahead = self._plays_until - loop.time()
        if ahead > self.lead_s:
            await asyncio.sleep(ahead - self.lead_s)
        self._plays_until = max(self._plays_until, loop.time()) + seconds

    def reset(self) -> None:
        """A barge-in: the listener drops what it had buffered."""
        self._plays_until = 0.0


class SocketGone(Exception):
    """The client left while we were sending."""


def _origin_allowed(websocket: WebSocket, origins: list[str]) -> bool:
    """Browsers send Origin on a WebSocket and do not apply CORS to it: check it here. Clients that
    are not browsers send none; a page served by this service (same host) is always allowed."""
    origin = websocket.headers.get("origin")
    if not origin or "*" in origins or origin.rstrip("/") in origins:
        return True
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()


@router.websocket(PATH)
async def speech_stream(websocket: WebSocket) -> None:
    """Text in (fragments, flush, cancel), audio and events out; see the module docstring."""
    await websocket.accept()
    try:
        state = state_of(websocket.app)
        if not _origin_allowed(websocket, allowed_origins(state.settings)):
            raise Unauthorized("origin not allowed", status=403, code="origin_not_allowed")
        require_api_key_ws(websocket, state.settings)
        if state.drain.draining:
            raise ServiceUnavailable("the service is shutting down; reconnect to another instance", code="draining")
    except ServiceError as exc:
        with contextlib.suppress(Exception):
            await websocket.send_text(json.dumps({"type": "error", **error_body(exc)}))
            await websocket.close(CLOSE_POLICY if exc.status in (401, 403) else CLOSE_TRY_LATER, exc.message[:120])
        return
    state.drain.in_flight += 1  # the drain waits for this socket (it is closed as soon as it idles)
    try:
        await RealtimeSession(websocket, state).run()
    finally:
        state.drain.in_flight -= 1


class RealtimeSession:
    """One socket: the receiver (`run`), the player task, and the drain watcher."""

    def __init__(
        self,
        websocket: WebSocket,
        state: AppState,
        normalizers: Callable[[str | None], SpokenNormalizer | None] = get_normalizer,
    ) -> None:
        self.ws = websocket
        self.normalizers = normalizers
        self.feed: SpokenFeed | None = None  # spoken form of the sentence being written, as it arrives
        self.feed_language: str | None = None
        self.state = state
        self.tts: FallbackRouter = state.router
        self.voicing = Voicing()
        self.max_text = state.settings.http.max_input_chars
        self.pending_limit = PENDING_INPUTS * state.settings.http.max_input_chars
        self.buffer = SentenceBuffer(max_chars=self.tts.config.sentence_max_chars)
        self.segments: asyncio.Queue[Segment] = asyncio.Queue()
        self.open: Segment | None = None
        self.queued_chars = 0  # text of sentences not spoken yet
        self.sentence_count = 0
        self.turn_audio_s = 0.0
        self.pacer = Pacer(AUDIO_LEAD_S)
        self.send_lock = asyncio.Lock()
        self.player: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    # ------------------------------------------------------------------ receiving
    async def run(self) -> None:
        self.player = asyncio.create_task(self._play_segments())
        receiver = asyncio.current_task()
        watcher = asyncio.create_task(self._watch_drain(receiver))
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    await self._error(InvalidInput("binary frames are not accepted; send JSON text frames",
                                                   code="binary_not_supported"))
                    continue
                await self._handle(message.get("text") or "")
        except (WebSocketDisconnect, SocketGone, asyncio.CancelledError):
            pass  # the client left, or the drain closed the socket
        finally:
            watcher.cancel()
            await self._stop_player()
            if self.feed is not None:
                self.feed.close()
            logger.debug("realtime socket closed after %.1fs, %d sentences", time.monotonic() - self.started,
                          self.sentence_count)

    async def _handle(self, raw: str) -> None:
        """One client message; its problems become error events (the socket stays usable)."""
        try:
            if len(raw) > MAX_MESSAGE_CHARS:
                raise PayloadTooLarge(f"message of {len(raw)} characters; the limit is {MAX_MESSAGE_CHARS}",
                                      code="message_too_large")
            try:
                message = json.loads(raw)
            except json.JSONDecodeError:
                raise InvalidInput("message is not valid JSON", code="invalid_json") from None
            if not isinstance(message, dict):
                raise InvalidInput("message must be a JSON object with a 'type'", code="invalid_json")
            kind = message.get("type")
            if kind == "input_text.append":
                await self._append(_parse(TextAppend, message).text)
            elif kind == "input_text.flush":
                self._flush()
            elif kind == "cancel":
                await self._cancel()
            elif kind == "session.update":
                await self._update(_parse(SessionUpdate, message))
            else:
                raise InvalidInput(f"unknown message type '{str(kind)[:40]}'", code="unknown_message_type",
                                   param="type")
        except ServiceError as exc:
            await self._error(exc)
        except (SocketGone, WebSocketDisconnect):
            raise
        except Exception as exc:  # a bug must not end the conversation; it is logged without text
            logger.exception("realtime message failed: %s", type(exc).__name__)
            await self._error(ServiceError("internal error"))

    async def _append(self, text: str) -> None:
        if len(text) > self.max_text:
            raise PayloadTooLarge(f"text of {len(text)} characters; one append takes at most {self.max_text}",
                                  code="text_too_long", param="text")
        pending = len(self.buffer) + self.queued_chars
        if pending + len(text) > self.pending_limit:
            raise ServiceError(
                f"{pending} characters are waiting to be spoken; this append would pass the limit of "
                f"{self.pending_limit}; it was not added (wait for audio, or cancel)",
                status=429, code="buffer_full", param="text",
            )
        for sentence in self.buffer.append(text):  # InvalidInput leaves the buffer as it was
            self._queue(sentence)
        feed = self._feed()
        if feed is not None:  # normalise what is stable of the sentence being written, meanwhile
            feed.update(self.buffer.text)

    def _feed(self) -> SpokenFeed | None:
        """The incremental normaliser for the current voicing (None: normalisation off, or no
        normaliser for its language); a language change starts a new one."""
        if not self.voicing.normalize:
            return None
        language = language_key(self.voicing.language)
        if self.feed is None or self.feed_language != language:
            if self.feed is not None:
                self.feed.close()
            normalizer = self.normalizers(self.voicing.language)
            self.feed = SpokenFeed(normalizer) if normalizer is not None else None
            self.feed_language = language
        return self.feed

    def _new_segment(self) -> Segment:
        feed = self._feed()
        segment = Segment(self.voicing, spoken=feed.spoken if feed is not None else None)
        self.segments.put_nowait(segment)
        return segment

    def _queue(self, sentence: str) -> None:
        if self.open is None:
            self.open = self._new_segment()
        self.open.add(self.sentence_count, sentence)
        self.sentence_count += 1
        self.queued_chars += len(sentence)

    def _flush(self) -> None:
        for sentence in self.buffer.flush():
            self._queue(sentence)
        if self.open is None:  # nothing new to speak: `flushed` still follows what is queued
            self.open = self._new_segment()
        self.open.close(flush=True)
        self.open = None

    async def _update(self, update: SessionUpdate) -> None:
        changes: dict[str, Any] = {}
        for name in update.model_fields_set - {"type"}:
            value = getattr(update, name)
            changes[name] = value if value is not None else getattr(Voicing(), name)
        if isinstance(changes.get("voice"), VoiceRef):
            changes["voice"] = changes["voice"].id
        voicing = replace(self.voicing, **changes)
        if voicing.model is not None and voicing.model not in SUPPORTED_MODELS:
            raise InvalidInput(f"model '{voicing.model[:64]}' does not exist", code="model_not_found", param="model")
        if "voice" in changes and not await voice_exists(voicing.voice, self.tts, voice_store_of(self.state)):
            raise InvalidInput(f"unknown voice '{voicing.voice[:64]}'", code="invalid_voice", param="voice")
        self.tts.validate(voicing.request())  # engine, speed range, a pinned engine that is not deployed
        self.voicing = voicing
        if self.open is not None:  # the sentences from here on are spoken the new way
            self.open.close(flush=False)
            self.open = None

    async def _cancel(self) -> None:
        """Barge-in: drop the buffer and every segment, stop the engines, then say so."""
        dropped = len(self.buffer.clear())
        self.open = None
        if self.feed is not None:
            self.feed.close()
        while not self.segments.empty():
            self.segments.get_nowait()
        await self._stop_player()
        self.queued_chars = 0
        self.turn_audio_s = 0.0
        self.pacer.reset()
        self.player = asyncio.create_task(self._play_segments())
        logger.debug("realtime cancel: %d buffered characters dropped", dropped)
        await self._send_json({"type": "cancelled"})

    async def _stop_player(self) -> None:
        if self.player is not None:
            self.player.cancel()
            await asyncio.wait([self.player])  # its router stream is closed, the engines cancelled
            self.player = None

    async def _watch_drain(self, receiver: asyncio.Task[Any] | None) -> None:
        """While the replica drains, close this socket as soon as nothing is left to say."""
        while True:
            await asyncio.sleep(DRAIN_POLL_S)
            idle = not self.queued_chars and not len(self.buffer) and self.segments.empty()
            if self.state.drain.draining and idle:
                await self._error(ServiceUnavailable("the service is shutting down; reconnect", code="draining"))
                with contextlib.suppress(Exception):
                    await self.ws.close(CLOSE_RESTART, "service restarting")
                if receiver is not None:
                    receiver.cancel()
                return

    # ------------------------------------------------------------------ playing
    async def _play_segments(self) -> None:
        try:
            while True:
                await self._play(await self.segments.get())
        except SocketGone:
            return

    async def _play(self, segment: Segment) -> None:
        """Speak a segment: audio frames, sentence starts and words, then `flushed` if asked."""
        voicing = segment.voicing
        offset = self.turn_audio_s  # word times count from the start of the turn's audio
        sent_s = 0.0
        encoder = StreamEncoder(voicing.response_format, voicing.rate)
        stream = self.tts.stream(voicing.request(), segment.sentences())
        current = -1
        done = 0  # sentences of the segment whose audio is all out
        try:
            async for chunk in stream:
                if chunk.sentence != current:
                    done = self._spoken(segment, done, chunk.sentence)
                    current = chunk.sentence
                    index, text = segment.texts[current]
                    await self._send_json({
                        "type": "sentence.start", "index": index, "text": text, "engine": chunk.engine,
                        "start_s": round(offset + sent_s, 3),
                    })
                if chunk.pcm:
                    seconds = pcm_duration(len(chunk.pcm), voicing.rate)
                    data = encoder.feed(chunk.pcm)
                    if data:
                        await self.pacer.before(seconds)
                        await self._send_bytes(data)
                    sent_s += seconds
                for word in chunk.words:
                    event = word_event(word, "word")
                    event["start_s"] = round(word.start_s + offset, 3)
                    event["end_s"] = round(word.end_s + offset, 3)
                    await self._send_json(event)
            tail = encoder.finish()
            if tail:
                await self._send_bytes(tail)
            self._spoken(segment, done, len(segment.texts))
        except ServiceError as exc:
            # This segment's stream is over: what it had not spoken is dropped, and the error says
            # so. Sentences that arrive from now on start a new segment.
            if self.open is segment:
                self.open = None
            segment.close(flush=False)
            failed = exc.sentence if exc.sentence is not None else max(done, 0)
            lost = segment.texts[failed:]
            self._spoken(segment, done, len(segment.texts))
            where = f" from sentence {lost[0][0]} on" if lost else ""
            await self._error(ServiceError(
                f"{exc.message}; {len(lost)} sentence(s){where} were not spoken in full",
                code=exc.code, status=exc.status, param=exc.param, retry_after_s=exc.retry_after_s,
            ))
        finally:
            encoder.close()
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        self.turn_audio_s = offset + sent_s
        if segment.flush:
            self.turn_audio_s = 0.0
            await self._send_json({"type": "flushed"})

    def _spoken(self, segment: Segment, done: int, upto: int) -> int:
        """Sentences before `upto` are out: their text no longer counts as pending."""
        for _, text in segment.texts[done:upto]:
            self.queued_chars = max(0, self.queued_chars - len(text))
        return max(done, upto)

    # ------------------------------------------------------------------ sending
    async def _send_json(self, event: dict[str, Any]) -> None:
        await self._send(text=json.dumps(event, separators=(",", ":")))

    async def _send_bytes(self, data: bytes) -> None:
        await self._send(data=data)

    async def _send(self, *, text: str | None = None, data: bytes | None = None) -> None:
        if self.ws.application_state != WebSocketState.CONNECTED:
            raise SocketGone()
        try:
            async with self.send_lock:
                if text is not None:
                    await self.ws.send_text(text)
                else:
                    await self.ws.send_bytes(data or b"")
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise SocketGone() from exc

    async def _error(self, exc: ServiceError) -> None:
        logger.debug("realtime error event: %s %s", exc.code, truncate(exc.message, 200))
        with contextlib.suppress(SocketGone):
            await self._send_json({"type": "error", **error_body(exc)})


def _parse(model: type[SessionUpdate] | type[TextAppend], message: dict[str, Any]) -> Any:
    """A message as its model; a bad field is an `invalid_value` error naming it."""
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        from fastapi.exceptions import RequestValidationError

        raise validation_error(RequestValidationError(exc.errors())) from None
