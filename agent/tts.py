"""ServeTTS: a livekit-agents `tts.TTS` plugin that speaks through this project's Serve app.

Transports (`AGENT_TTS_TRANSPORT`), all reaching the same fallback chain (TTS_ENGINE_CHAIN):

- `handle`: inside the Ray cluster (an agent actor, or any driver connected to it) the plugin
  builds its own in-process `FallbackRouter` over the engines' `DeploymentHandle`s, exactly like
  the ingress does: audio streams from the engine replica straight to the agent, no HTTP hop.
- `websocket`: `stream()` opens one realtime socket (`/v1/audio/speech/stream`) per turn; the
  server cuts the LLM's tokens into sentences and pipelines them. `synthesize()` uses HTTP.
- `http`: `POST /v1/audio/speech` with `response_format=pcm`; `stream()` cuts sentences here and
  sends one request per sentence (no look-ahead, no word timings).
- `auto` (default): `handle` when Ray is initialised in this process and the Serve app has
  engine deployments, otherwise `websocket` for `stream()` and HTTP for `synthesize()`.

`stream()` (one `SynthesizeStream` per agent turn) over `handle` or `websocket` is a `SpeechTurn`
(agent/turns.py): tokens go in as they come, PCM comes out with word timings, which reach livekit
as `TimedString`s (aligned transcripts); closing the stream mid-turn (an interruption) cancels
the turn on the server, which stops the engines. `synthesize()` returns a `ChunkedStream` (one
request for the text); its chunks go through `push_pcm` into livekit's `AudioEmitter`, which cuts
frames and computes TTS metrics (time to first byte, audio duration, characters).

Everything a stream or a request uses lives on the event loop that made it: a `ServeTTS` belongs
to one job (one loop), and each turn opens its own socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    tokenize,
    tts,
    utils,
)
from livekit.agents.types import TimedString

from agent.turns import RealtimeTurn, RouterTurn, SpeechTurn, TurnWord, livekit_errors
from config.logging import truncate
from config.settings import Settings

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
NUM_CHANNELS = 1
PROVIDER = "voice-tts-serve"
TRANSPORTS = ("auto", "handle", "websocket", "http")


@dataclass
class ServeTTSOptions:
    """Everything one synthesis request needs; `session_id` lets the server attribute usage."""

    voice: str = "alloy"
    model: str = "tts-1"
    language: str | None = None
    speed: float = 1.0
    sample_rate: int = SAMPLE_RATE
    transport: str = "auto"  # one of TRANSPORTS
    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    app_name: str = "tts"
    session_id: str | None = None
    instructions: str | None = None
    # How long an interrupted turn waits for the server's `cancelled` before closing the socket.
    cancel_timeout_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ServeTTSOptions:
        opts = cls(
            voice=settings.agent.tts_voice,
            model=settings.agent.tts_model,
            language=settings.agent.tts_language,
            transport=settings.agent.tts_transport,
            base_url=settings.agent.api_base_url,
            api_key=settings.agent.api_key,
            instructions=settings.agent.tts_instructions,
            cancel_timeout_s=settings.agent.tts_cancel_timeout_s,
        )
        return replace(opts, **overrides)


class SpeechSource(Protocol):
    """A transport: text in, PCM s16le mono at `opts.sample_rate` out, livekit errors raised."""

    name: str

    def pcm(self, text: str, opts: ServeTTSOptions, timeout_s: float) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class HttpSpeechSource:
    """`POST /v1/audio/speech` (pcm), streamed with httpx."""

    name = "http"

    def __init__(
        self, base_url: str, api_key: str | None = None, client: httpx.AsyncClient | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers)

    async def pcm(self, text: str, opts: ServeTTSOptions, timeout_s: float) -> AsyncIterator[bytes]:
        body: dict[str, Any] = {
            "model": opts.model,
            "input": text,
            "voice": opts.voice,
            "response_format": "pcm",
            "speed": opts.speed,
            "sample_rate": opts.sample_rate,
        }
        if opts.language:
            body["language"] = opts.language
        if opts.session_id:
            body["session_id"] = opts.session_id
        timeout = httpx.Timeout(timeout_s, read=timeout_s)
        try:
            async with self._client.stream("POST", "/v1/audio/speech", json=body, timeout=timeout) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:300].decode("utf-8", "replace")
                    raise APIStatusError(
                        f"speech request failed: HTTP {resp.status_code}",
                        status_code=resp.status_code,
                        request_id=resp.headers.get("x-request-id"),
                        body=detail,
                        retryable=resp.status_code in (408, 429) or resp.status_code >= 500,
                    )
                rate = resp.headers.get("x-sample-rate")
                if rate is not None and int(rate) != opts.sample_rate:
                    raise APIError(f"server sent {rate} Hz, expected {opts.sample_rate}", retryable=False)
                async for chunk in resp.aiter_bytes():
                    if chunk:
                        yield chunk
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"speech request timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"speech request failed: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


class RouterSpeechSource:
    """An in-process `FallbackRouter` (over deployment handles in the cluster)."""

    name = "handle"

    def __init__(self, router: Any) -> None:
        self.router = router

    @classmethod
    def from_cluster(cls, settings: Settings, app_name: str = "tts") -> RouterSpeechSource:
        """Compose the router like the ingress does: the running app's engine deployments through
        their handles, and the engines declared in-process (Flite) built in this process."""
        from ray import serve

        from serve_app.engines import registry
        from serve_app.router import compose_router_from_handles

        deployed = set(serve.status().applications[app_name].deployments)
        handles: dict[str, Any] = {}
        unavailable: dict[str, str] = {}
        in_process: list[str] = []
        for engine in settings.router.engine_chain:
            declared = registry.spec(engine)
            if declared.deployment_name in deployed:
                handles[engine] = serve.get_deployment_handle(declared.deployment_name, app_name=app_name)
            elif declared.hosted_in_process(registry.engine_settings(engine)):
                in_process.append(engine)
            else:
                unavailable[engine] = f"not deployed in Serve app '{app_name}'"
        local, failed = _process_engines(tuple(in_process), settings)
        if not handles and not local:
            raise RuntimeError(f"Serve app '{app_name}' has no engine deployments")
        # The breakers follow the app's breaker board: a new conversation starts knowing what the
        # cluster knows, and its strikes count for everyone.
        return cls(
            compose_router_from_handles(
                settings, handles, {**unavailable, **failed}, app_name=app_name, local=local
            )
        )

    async def pcm(self, text: str, opts: ServeTTSOptions, timeout_s: float) -> AsyncIterator[bytes]:
        from serve_app.router import SpeechRequest

        request = SpeechRequest(
            text=text, voice=opts.voice, language=opts.language, speed=opts.speed,
            sample_rate=opts.sample_rate,
        )
        stream = self.router.synthesize(request)
        try:
            with livekit_errors():
                async for chunk in stream:
                    yield chunk.pcm
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.router.aclose()


# The in-process engines of this agent process, shared by all its conversations: libflite is one
# per process anyway (serialised by its lock), and its helper processes serve whichever
# conversation needs them, instead of each conversation starting (and leaking) its own.
_PROCESS_ENGINES: dict[tuple[str, ...], tuple[dict[str, Any], dict[str, str]]] = {}


def _process_engines(names: tuple[str, ...], settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    if names not in _PROCESS_ENGINES:
        from serve_app.engines import registry

        _PROCESS_ENGINES[names] = registry.host_in_process(names, settings)
    return _PROCESS_ENGINES[names]


def _serve_app_running(app_name: str) -> bool:
    try:
        import ray

        if not ray.is_initialized():
            return False
        from ray import serve

        app = serve.status().applications.get(app_name)
        from serve_app.engines import registry

        return app is not None and any(s.deployment_name in app.deployments for s in registry.specs().values())
    except Exception:  # no Serve controller, no cluster: not inside
        return False


async def push_pcm(
    source: SpeechSource, text: str, opts: ServeTTSOptions, emitter: tts.AudioEmitter, timeout_s: float
) -> int:
    """The one chunk->frames path of both transports: every PCM chunk goes to the emitter.

    Returns the number of PCM bytes pushed. An odd byte at a chunk boundary is harmless: the
    emitter's byte stream keeps partial samples until the next chunk completes them.
    """
    pushed = 0
    async for chunk in source.pcm(text, opts, timeout_s):
        emitter.push(chunk)
        pushed += len(chunk)
    if pushed == 0:
        raise APIError(f"no audio for text: {truncate(text)}", retryable=True)
    logger.debug("servetts %s: %d bytes for %d chars", source.name, pushed, len(text))
    return pushed


class ServeTTS(tts.TTS):
    """livekit TTS over the project's Serve app; streaming turns with word timings (see module doc)."""

    def __init__(
        self,
        opts: ServeTTSOptions | None = None,
        *,
        settings: Settings | None = None,
        source: SpeechSource | None = None,
        sentence_tokenizer: tokenize.SentenceTokenizer | None = None,
    ) -> None:
        if opts is None:
            from config.settings import get_settings

            settings = settings or get_settings()
            opts = ServeTTSOptions.from_settings(settings)
        if opts.transport not in TRANSPORTS:
            raise ValueError(f"unknown ServeTTS transport '{opts.transport[:32]}' ({', '.join(TRANSPORTS)})")
        super().__init__(
            # Word timings come with every streaming transport except plain HTTP.
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=opts.transport != "http"),
            sample_rate=opts.sample_rate,
            num_channels=NUM_CHANNELS,
        )
        self._opts = opts
        self._settings = settings
        self._source = source
        self._source_lock = asyncio.Lock()
        self._tokenizer = sentence_tokenizer or tokenize.blingfire.SentenceTokenizer(min_sentence_len=8)

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def options(self) -> ServeTTSOptions:
        return self._opts

    @property
    def transport(self) -> str | None:
        """The transport of `synthesize()` (`handle` or `http`), None until the first request picks one."""
        return None if self._source is None else self._source.name

    @property
    def stream_transport(self) -> str | None:
        """The transport of `stream()` (`handle`, `websocket` or `http`), None until one is picked."""
        if self._source is None:
            return None
        if isinstance(self._source, RouterSpeechSource):
            return "handle"
        return "http" if self._opts.transport == "http" else "websocket"

    def update_options(self, **changes: Any) -> None:
        """Change voice, speed, language, instructions or session_id for later requests."""
        self._opts = replace(self._opts, **changes)

    async def get_source(self) -> SpeechSource:
        if self._source is not None:
            return self._source
        async with self._source_lock:
            if self._source is None:
                self._source = self._pick_source()
                logger.info("ServeTTS transport: stream=%s synthesize=%s", self.stream_transport, self._source.name)
        return self._source

    def _pick_source(self) -> SpeechSource:
        mode = self._opts.transport
        if mode == "handle" or (mode == "auto" and _serve_app_running(self._opts.app_name)):
            from config.settings import get_settings

            try:
                return RouterSpeechSource.from_cluster(self._settings or get_settings(), self._opts.app_name)
            except Exception as exc:
                if mode == "handle":
                    raise APIConnectionError(f"no Serve handles: {str(exc)[:200]}") from exc
                logger.warning("ServeTTS: handle transport unavailable (%s); using the API", type(exc).__name__)
        return HttpSpeechSource(self._opts.base_url, self._opts.api_key)

    async def open_turn(self, opts: ServeTTSOptions, timeout_s: float) -> SpeechTurn | None:
        """A turn for `stream()` on the running loop: the router's (handle) or a new socket's
        (websocket); None for plain HTTP (sentences are then sent one request each)."""
        source = await self.get_source()
        if isinstance(source, RouterSpeechSource):
            from serve_app.router import SpeechRequest

            request = SpeechRequest(
                text="", voice=opts.voice, language=opts.language, speed=opts.speed,
                sample_rate=opts.sample_rate, instructions=opts.instructions, timestamps=True,
            )
            return RouterTurn(source.router, request)
        if self.stream_transport == "http":
            return None
        session: dict[str, Any] = {"voice": opts.voice, "model": opts.model, "sample_rate": opts.sample_rate,
                                   "speed": opts.speed}
        if opts.language:
            session["language"] = opts.language
        if opts.instructions:
            session["instructions"] = opts.instructions
        return await RealtimeTurn.connect(
            opts.base_url, session, api_key=opts.api_key, timeout_s=timeout_s, cancel_timeout_s=opts.cancel_timeout_s
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ServeChunkedStream:
        return ServeChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ServeSynthesizeStream:
        return ServeSynthesizeStream(tts=self, conn_options=conn_options)

    async def aclose(self) -> None:
        if self._source is not None:
            await self._source.aclose()
            self._source = None


class ServeChunkedStream(tts.ChunkedStream):
    """One text, one request; frames are emitted as audio arrives."""

    def __init__(self, *, tts: ServeTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: ServeTTS = tts
        self._opts = tts.options

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        source = await self._tts.get_source()
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._opts.sample_rate,
            num_channels=NUM_CHANNELS,
            mime_type="audio/pcm",
        )
        await push_pcm(source, self._input_text, self._opts, output_emitter, self._conn_options.timeout)
        output_emitter.flush()


class ServeSynthesizeStream(tts.SynthesizeStream):
    """One agent turn: tokens in (from the LLM), audio and word timings out, one segment.

    Over `handle`/`websocket` the turn is a `SpeechTurn` that pipelines sentences; when the stream
    is closed before the turn ends (an interruption), the turn is cancelled on the server (bounded
    wait for its acknowledgement) and its socket closed; the interruption raises nothing.
    """

    def __init__(self, *, tts: ServeTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: ServeTTS = tts
        self._opts = tts.options
        # After an interrupted turn: whether the server acknowledged the cancel (None: not cancelled).
        self.cancel_acknowledged: bool | None = None

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        turn = await self._tts.open_turn(self._opts, self._conn_options.timeout)
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self._opts.sample_rate,
            num_channels=NUM_CHANNELS,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        if turn is None:
            await self._run_sentences(output_emitter, await self._tts.get_source())
        else:
            await self._run_turn(output_emitter, turn)
        output_emitter.end_segment()

    async def _run_turn(self, output_emitter: tts.AudioEmitter, turn: SpeechTurn) -> None:
        async def send_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    await turn.flush()
                else:
                    self._mark_started()  # time to first byte counts from the first text sent
                    await turn.append(data)
            await turn.finish()

        async def receive() -> None:
            async for event in turn.events():
                if isinstance(event, TurnWord):
                    output_emitter.push_timed_transcript(
                        TimedString(event.word + " ", start_time=event.start_s, end_time=event.end_s)
                    )
                else:
                    output_emitter.push(event)

        tasks = [asyncio.create_task(send_input()), asyncio.create_task(receive())]
        finished = False
        try:
            await asyncio.gather(*tasks)
            finished = True
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            if not finished:  # interrupted or failed: stop the server's work for this turn
                self.cancel_acknowledged = await turn.cancel()
                logger.debug("servetts %s turn cancelled (acknowledged=%s)", turn.name, self.cancel_acknowledged)
            await turn.aclose()

    async def _run_sentences(self, output_emitter: tts.AudioEmitter, source: SpeechSource) -> None:
        """Plain HTTP: sentences cut here, one request each, in order."""
        sentences = self._tts._tokenizer.stream()

        async def forward_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    sentences.flush()
                else:
                    sentences.push_text(data)
            sentences.end_input()

        async def speak() -> None:
            async for event in sentences:
                text = event.token.strip()
                if not text:
                    continue
                self._mark_started()
                await push_pcm(source, text, self._opts, output_emitter, self._conn_options.timeout)
                output_emitter.flush()

        tasks = [asyncio.create_task(forward_input()), asyncio.create_task(speak())]
        try:
            await asyncio.gather(*tasks)
        finally:
            await sentences.aclose()
            await utils.aio.cancel_and_wait(*tasks)
