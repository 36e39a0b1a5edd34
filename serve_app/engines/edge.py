"""Edge TTS: Microsoft's neural voices over the edge-tts websocket, the first fallback.

The one Edge implementation of the project (the seed asked to consolidate its duplicates):
- streaming: MP3 arrives in small websocket messages and is decoded to PCM as it arrives
  (`Mp3StreamDecoder`, PyAV's parser + decoder), so the first audio leaves before the last byte;
- text safety: edge-tts XML-escapes the text before it puts it inside its SSML template, so a text
  like `</voice><speak>` is spoken, never interpreted; we never build SSML ourselves (escaping again
  would make the service read `&lt;` aloud);
- typed errors: refused connections, DNS failures and closed sockets are `EngineUnavailable`,
  silence past the timeouts is `EngineTimeout`, a turn without audio is `EngineUnavailable`, so
  the router counts them as strikes;
- a truncated turn (the socket closed before `turn.end`) ends the library's stream quietly; we
  compare the audio received with the end of the last word boundary Edge announced, and the words
  announced with the words of the text, and raise instead of passing half a sentence on as a
  success (the router then goes on from the first word not heard);
- word timing: we ask for Edge's WordBoundary events (offset and duration in 100 ns ticks from the
  start of the turn's audio) and yield each as a `WordMark` where it arrives in the stream;
- `instructions`: speed cues reach us as `speed` (the router applies them); pitch and volume cues
  ("cheerful", "deep", "whisper") become the prosody's pitch and volume;
- `EDGE_WSS_URL` points the library at another endpoint (tests use a local fake server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import av
import edge_tts
import edge_tts.communicate
import edge_tts.constants
from edge_tts.exceptions import EdgeTTSException, NoAudioReceived
from pydantic import Field

from config.settings import settings_config
from serve_app.core.audio import SAMPLE_WIDTH
from serve_app.core.errors import EngineTimeout, EngineUnavailable, InvalidInput
from serve_app.core.style import parse_instructions
from serve_app.core.timing import WordAligner, WordMark
from serve_app.core.voices import Catalogue, Voice, VoiceTable
from serve_app.engines.base import Engine, EngineCheck
from serve_app.engines.spec import DeploymentDefaults, EngineContext, EngineSettings, EngineSpec

logger = logging.getLogger(__name__)

SPEED_RANGE = (0.25, 4.0)
# Edge's prosody rate is reliable between half and double speed; requests outside are clamped.
EDGE_RATE_RANGE = (0.5, 2.0)
TICKS_PER_SECOND = 10_000_000  # Edge reports offsets and durations in 100 ns ticks
# Edge's word offsets are times in the audio before MP3 coding; decoded PCM starts later by the
# codec's delay (an encoder's 576 samples plus the decoder's 529, at 24 kHz: measured 1105 through
# PyAV on LAME-encoded frames), so a word is heard this much after its announced offset.
MP3_DELAY_S = 1105 / 24000
TRUNCATION_TOLERANCE_S = 0.1


def _voice(short: str, name: str, gender: str) -> Voice:
    return Voice(short, "edge", name, short[:5], gender)


VOICES = VoiceTable(
    voices=(
        _voice("en-US-AriaNeural", "Aria", "female"),
        _voice("en-US-JennyNeural", "Jenny", "female"),
        _voice("en-US-EmmaNeural", "Emma", "female"),
        _voice("en-US-AvaNeural", "Ava", "female"),
        _voice("en-US-MichelleNeural", "Michelle", "female"),
        _voice("en-GB-SoniaNeural", "Sonia", "female"),
        _voice("en-US-GuyNeural", "Guy", "male"),
        _voice("en-US-DavisNeural", "Davis", "male"),
        _voice("en-US-AndrewNeural", "Andrew", "male"),
        _voice("en-US-BrianNeural", "Brian", "male"),
        _voice("en-US-ChristopherNeural", "Christopher", "male"),
        _voice("en-GB-RyanNeural", "Ryan", "male"),
        _voice("de-DE-KatjaNeural", "Katja", "female"),
        _voice("de-DE-ConradNeural", "Conrad", "male"),
        _voice("fr-FR-DeniseNeural", "Denise", "female"),
        _voice("fr-FR-HenriNeural", "Henri", "male"),
        _voice("es-ES-ElviraNeural", "Elvira", "female"),
        _voice("es-ES-AlvaroNeural", "Alvaro", "male"),
        _voice("it-IT-ElsaNeural", "Elsa", "female"),
        _voice("it-IT-DiegoNeural", "Diego", "male"),
        _voice("pt-BR-FranciscaNeural", "Francisca", "female"),
        _voice("pt-BR-AntonioNeural", "Antonio", "male"),
        _voice("ja-JP-NanamiNeural", "Nanami", "female"),
        _voice("ja-JP-KeitaNeural", "Keita", "male"),
        _voice("zh-CN-XiaoxiaoNeural", "Xiaoxiao", "female"),
        _voice("zh-CN-YunxiNeural", "Yunxi", "male"),
    ),
    openai={
        "alloy": "en-US-AriaNeural", "ash": "en-US-AndrewNeural", "ballad": "en-GB-RyanNeural",
        "cedar": "en-US-ChristopherNeural", "coral": "en-US-JennyNeural", "echo": "en-US-GuyNeural",
        "fable": "en-GB-RyanNeural", "marin": "en-US-MichelleNeural", "nova": "en-US-EmmaNeural",
        "onyx": "en-US-DavisNeural", "sage": "en-GB-SoniaNeural", "shimmer": "en-US-AvaNeural",
        "verse": "en-US-BrianNeural",
    },
    by_gender={"female": "en-US-AriaNeural", "male": "en-US-GuyNeural"},
)


class EdgeSettings(EngineSettings):
    """`EDGE_*`: voice, timeouts, proxy, and the endpoint (tests point it at a local server)."""

    model_config = settings_config(env_prefix="EDGE_")

    default_voice: str = "en-US-AriaNeural"
    connect_timeout_s: float = Field(5.0, gt=0)
    receive_timeout_s: float = Field(10.0, gt=0)
    proxy: str | None = None
    wss_url: str | None = Field(None, pattern=r"^wss?://")
    check_ttl_s: float = Field(30.0, ge=0)


def edge_rate(speed: float) -> str:
    """OpenAI's `speed` (1.0 = normal) as Edge's relative prosody rate, e.g. 1.5 -> '+50%'."""
    clamped = min(max(speed, EDGE_RATE_RANGE[0]), EDGE_RATE_RANGE[1])
    percent = round((clamped - 1.0) * 100)
    return f"{percent:+d}%"


def edge_prosody(instructions: str | None) -> tuple[str, str]:
    """(pitch, volume) for edge-tts from the tone cues of `instructions`, e.g. ('+8Hz', '-20%')."""
    style = parse_instructions(instructions)
    return f"{style.pitch_hz:+d}Hz", f"{style.volume_percent:+d}%"


def with_token(url: str) -> str:
    """edge-tts appends `&ConnectionId=...`, so the endpoint must already carry a query string."""
    if "?" in url:
        return url
    return f"{url}?TrustedClientToken={edge_tts.constants.TRUSTED_CLIENT_TOKEN}"


class Mp3StreamDecoder:
    """Incremental MP3 -> s16 mono PCM at `rate`: feed bytes as they arrive, get PCM as frames complete."""

    def __init__(self, rate: int) -> None:
        self._codec = av.CodecContext.create("mp3", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self.bytes_out = 0
        self.bad_packets = 0

    def _convert(self, frames: list[av.AudioFrame]) -> bytes:
        out = bytearray()
        for frame in frames:
            for converted in self._resampler.resample(frame):
                out += bytes(converted.planes[0])[: converted.samples * SAMPLE_WIDTH]
        self.bytes_out += len(out)
        return bytes(out)

    def _decode(self, packets: list[av.Packet]) -> list[av.AudioFrame]:
        frames: list[av.AudioFrame] = []
        for packet in packets:
            try:
                frames.extend(self._codec.decode(packet))  # type: ignore[arg-type]
            except av.error.InvalidDataError:
                # A damaged frame is skipped like a player would; a turn with no good frame is "no audio".
                self.bad_packets += 1
        return frames

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        return self._convert(self._decode(list(self._codec.parse(data))))

    def flush(self) -> bytes:
        frames = self._decode(list(self._codec.parse(None)))
        with contextlib.suppress(av.error.EOFError):
            frames.extend(self._codec.decode(None))  # type: ignore[arg-type]
        out = self._convert(frames)
        tail = bytearray()
        for converted in self._resampler.resample(None):
            tail += bytes(converted.planes[0])[: converted.samples * SAMPLE_WIDTH]
        self.bytes_out += len(tail)
        return out + bytes(tail)


def _typed(exc: BaseException, timeout_s: float) -> EngineUnavailable:
    """The router's error for whatever the library or the network raised."""
    if isinstance(exc, TimeoutError):  # asyncio's and aiohttp's socket timeouts alike
        return EngineTimeout(f"edge did not answer within {timeout_s:g}s")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return EngineUnavailable(f"edge endpoint name does not resolve: {exc.host}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return EngineUnavailable(f"edge endpoint unreachable ({exc.host}:{exc.port}): {exc.strerror or exc}")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return EngineUnavailable(f"edge refused the websocket (HTTP {exc.status})")
    if isinstance(exc, NoAudioReceived):
        return EngineUnavailable("edge returned no audio")
    if isinstance(exc, EdgeTTSException):
        return EngineUnavailable(f"edge protocol error: {type(exc).__name__}: {str(exc)[:200]}")
    return EngineUnavailable(f"edge connection failed: {type(exc).__name__}: {str(exc)[:200]}")


_NETWORK_ERRORS = (TimeoutError, aiohttp.ClientError, EdgeTTSException, OSError)


class EdgeEngine(Engine):
    """edge-tts as an `Engine`: 24 kHz mono PCM, streamed as the MP3 arrives."""

    name = "edge"
    sample_rate = 24000
    accepts_instructions = True

    def __init__(
        self,
        *,
        default_voice: str = "en-US-AriaNeural",
        connect_timeout_s: float = 5.0,
        receive_timeout_s: float = 10.0,
        proxy: str | None = None,
        wss_url: str | None = None,
        check_ttl_s: float = 30.0,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.catalogue = catalogue or Catalogue({self.name: VOICES})
        self.default_voice = default_voice
        self.connect_timeout_s = connect_timeout_s
        self.receive_timeout_s = receive_timeout_s
        self.proxy = proxy
        self.check_ttl_s = check_ttl_s
        if wss_url:
            # edge-tts reads this module global each time it connects; there is no parameter for it.
            edge_tts.communicate.WSS_URL = with_token(wss_url)
        self._check: tuple[float, EngineCheck] | None = None
        self._check_lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return str(edge_tts.communicate.WSS_URL)

    def voices(self) -> list[Voice]:
        catalogue = self.catalogue.voices_for(self.name)
        first = [v for v in catalogue if v.id == self.default_voice] or [
            Voice(self.default_voice, self.name, self.default_voice)
        ]
        return first + [v for v in catalogue if v.id != self.default_voice]

    # --- dependency check -------------------------------------------------------------------

    async def check(self) -> EngineCheck:
        """Reachability of the endpoint (DNS, TCP, TLS), without synthesizing; cached for EDGE_CHECK_TTL_S."""
        async with self._check_lock:
            now = time.monotonic()
            if self._check is not None and now - self._check[0] < self.check_ttl_s:
                return self._check[1]
            result = await self._probe()
            self._check = (time.monotonic(), result)
            return result

    async def _probe(self) -> EngineCheck:
        url = urllib.parse.urlsplit(self.proxy or self.endpoint)
        secure = url.scheme in ("wss", "https")
        host = url.hostname or ""
        port = url.port or (443 if secure else 80)
        details: dict[str, Any] = {"endpoint": f"{host}:{port}", "via_proxy": bool(self.proxy)}
        started = time.perf_counter()
        tls = ssl.create_default_context() if secure and not self.proxy else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        except TimeoutError:
            reason = f"{host}:{port} did not answer within {self.connect_timeout_s:g}s"
            return EngineCheck(self.name, False, reason, details)
        except OSError as exc:  # gaierror, refused, unreachable, TLS failures
            return EngineCheck(self.name, False, f"{host}:{port} unreachable: {type(exc).__name__}: {exc}", details)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        details["connect_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return EngineCheck(self.name, True, None, details)

    # --- synthesis --------------------------------------------------------------------------

    def _voice_for(self, voice: str | None, language: str | None) -> str:
        return self.prefer_language(self.resolve_voice(voice), language)

    async def _next(self, stream: AsyncIterator[Any], timeout_s: float) -> dict[str, Any] | None:
        """The next message of the library's stream, None at its end; errors typed for the router."""
        try:
            async with asyncio.timeout(timeout_s):
                return await anext(stream)
        except StopAsyncIteration:
            return None
        except _NETWORK_ERRORS as exc:
            raise _typed(exc, timeout_s) from exc

    async def synthesize(
        self,
        text: str,
        voice: str | None = None,
        *,
        language: str | None = None,
        speed: float = 1.0,
        instructions: str | None = None,
    ) -> AsyncIterator[bytes | WordMark]:
        if not text.strip():
            raise InvalidInput("text is empty")
        self.check_speed(speed, SPEED_RANGE)
        chosen = self._voice_for(voice, language)
        pitch, volume = edge_prosody(instructions)
        # Lengths only: per-sentence excerpts would add up to the whole user text in a DEBUG log.
        logger.debug(
            "edge synthesize voice=%s rate=%s pitch=%s volume=%s chars=%d",
            chosen, edge_rate(speed), pitch, volume, len(text),
        )
        try:
            communicate = edge_tts.Communicate(
                text,
                chosen,
                rate=edge_rate(speed),
                pitch=pitch,
                volume=volume,
                boundary="WordBoundary",
                proxy=self.proxy,
                connect_timeout=max(1, math.ceil(self.connect_timeout_s)),
                receive_timeout=max(1, math.ceil(self.receive_timeout_s)),
            )
        except ValueError as exc:  # only a misconfigured EDGE_DEFAULT_VOICE gets here: the engine cannot serve
            raise EngineUnavailable(f"edge-tts rejected the request: {exc}") from exc
        stream = communicate.stream()
        decoder = Mp3StreamDecoder(self.sample_rate)
        announced_end_s = 0.0
        announced = WordAligner(text)  # which of the text's words Edge said it spoke
        words_announced = False
        timeout_s = self.connect_timeout_s + self.receive_timeout_s  # the first message includes the connect
        try:
            while (message := await self._next(stream, timeout_s)) is not None:
                timeout_s = self.receive_timeout_s
                if message["type"] == "audio":
                    pcm = decoder.feed(message["data"])
                    if pcm:
                        yield pcm
                elif message["type"] in ("SentenceBoundary", "WordBoundary"):
                    start = message["offset"] / TICKS_PER_SECOND
                    end = (message["offset"] + message["duration"]) / TICKS_PER_SECOND
                    announced_end_s = max(announced_end_s, end)
                    if message["type"] == "WordBoundary":
                        word = str(message.get("text", ""))
                        mark = WordMark(word, round(start + MP3_DELAY_S, 4), round(end + MP3_DELAY_S, 4))
                        announced.feed(mark)
                        words_announced = True
                        yield mark
            tail = decoder.flush()
            if tail:
                yield tail
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        received_s = decoder.bytes_out / (SAMPLE_WIDTH * self.sample_rate)
        if decoder.bytes_out == 0:
            raise EngineUnavailable("edge returned no decodable audio")
        if received_s + TRUNCATION_TOLERANCE_S < announced_end_s:
            raise EngineUnavailable(
                f"edge stream ended early: {received_s:.2f}s of audio, {announced_end_s:.2f}s announced"
            )
        if words_announced and announced.unstarted:
            raise EngineUnavailable(
                f"edge stream ended early: {announced.unstarted} of {len(announced.tokens)} words never announced"
            )


def _build(settings: EdgeSettings, context: EngineContext) -> EdgeEngine:
    return EdgeEngine(
        default_voice=settings.default_voice,
        connect_timeout_s=settings.connect_timeout_s,
        receive_timeout_s=settings.receive_timeout_s,
        proxy=settings.proxy,
        wss_url=settings.wss_url,
        check_ttl_s=settings.check_ttl_s,
        catalogue=context.catalogue,
    )


ENGINE = EngineSpec(
    name="edge",
    title="Microsoft Edge neural voices over the internet (first fallback)",
    model_id="edge-tts",
    settings=EdgeSettings,
    build=_build,
    voices=VOICES,
    speed_range=SPEED_RANGE,
    word_timing="exact",
    deployment=DeploymentDefaults(num_cpus=0.1, max_ongoing_requests=64, max_queued_requests=64),
    honours={
        "speed": "prosody rate (clamped to 0.5-2.0)",
        "language": "voice of that language",
        "instructions": "speed cues as rate; pitch and volume cues (cheerful, calm, deep, whisper, loud) as prosody",
    },
)
