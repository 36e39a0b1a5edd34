"""A local websocket server that speaks Edge TTS's readaloud protocol well enough for edge-tts.

Edge's service is on the internet and tests must not be; this server answers the real edge-tts
client (pointed at it by EDGE_WSS_URL) with the same message sequence the service sends:
`turn.start`, `response`, `audio.metadata` messages, binary `audio` frames carrying MP3 (24 kHz
mono, 48 kbit/s, like `audio-24khz-48kbitrate-mono-mp3`), an empty end-of-audio frame, then
`turn.end`. The audio is real speech: the SSML's text is spoken by flite and encoded to MP3 with
PyAV, so what the client decodes can be checked (duration, speed, not silence).

Boundaries follow the client's `speech.config` like the service: with `wordBoundaryEnabled` one
`audio.metadata` message per word (`WordBoundary`: offset and duration in 100 ns ticks, the word
as written in the text), each sent just before the audio frame in which that word begins; else
one `SentenceBoundary` first. The times are flite's own (its utterance's segment times), so a
test can compare what a client reports with what the engine said (`words` of each request).

The SSML is parsed as XML, as the service does, and every request is recorded (`requests`), so
tests can see which voice, rate and text arrived and whether any markup got through.

Modes (`mode`, changeable while running): `normal`; `drop` (half the audio, then the TCP
connection is cut without a close frame or `turn.end`); `hang` (accepts the websocket, never
answers). `realtime_factor` (None: as fast as possible) paces the audio frames at that many times
real time, as the service streams, so a benchmark can catch a turn in flight; `closed` records
when each connection closed. Use `FakeEdgeServer` inside an event loop or `EdgeServerThread` from synchronous code.
Run `python -m tests.fakes.edge_server` to aim a manual `serve run` at it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import av
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from serve_app.core.audio import resample_pcm
from serve_app.core.timing import TimedWord, WordMark, align_marks
from serve_app.core.voices import Catalogue
from serve_app.engines.edge import VOICES as EDGE_VOICES
from serve_app.engines.flite import FliteEngine

MODES = ("normal", "drop", "hang")
SSML_NS = "{http://www.w3.org/2001/10/synthesis}"
EDGE_RATE = 24000
MP3_BITRATE = 48000
TICKS_PER_SECOND = 10_000_000


@dataclass
class EdgeRequest:
    """One SSML request as the server understood it."""

    voice: str
    rate: str
    text: str
    markup_inside: list[str]
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    pitch: str = "+0Hz"
    volume: str = "+0%"
    # The word boundaries sent (word, start s, end s), in the service's time (before MP3 coding).
    words: list[tuple[str, float, float]] = field(default_factory=list)
    pcm: bytes = field(default=b"", repr=False)  # the audio before MP3 coding (24 kHz s16 mono)


def parse_text_message(message: str) -> tuple[dict[str, str], str]:
    head, _, body = message.partition("\r\n\r\n")
    headers = {}
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        headers[key] = value
    return headers, body


@dataclass(frozen=True)
class Ssml:
    voice: str
    rate: str
    pitch: str
    volume: str
    text: str
    markup_inside: list[str]


def parse_ssml(ssml: str) -> Ssml:
    """Voice, prosody, spoken text and the tags found inside <prosody> of edge-tts's SSML template."""
    root = ET.fromstring(ssml)
    voice = root.find(f"{SSML_NS}voice")
    prosody = voice.find(f"{SSML_NS}prosody") if voice is not None else None
    if voice is None or prosody is None:
        raise ValueError("SSML without voice/prosody")
    inside = [element.tag.replace(SSML_NS, "") for element in prosody.iter()][1:]
    return Ssml(
        short_voice_name(voice.get("name", "")),
        prosody.get("rate", "+0%"),
        prosody.get("pitch", "+0Hz"),
        prosody.get("volume", "+0%"),
        "".join(prosody.itertext()),
        inside,
    )


def short_voice_name(name: str) -> str:
    """edge-tts sends 'Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)': back to 'en-US-AriaNeural'."""
    match = re.fullmatch(r"Microsoft Server Speech Text to Speech Voice \((\S+), (\S+)\)", name)
    return f"{match.group(1)}-{match.group(2)}" if match else name


def speed_of(rate: str) -> float:
    return 1.0 + float(rate.rstrip("%")) / 100.0


def encode_mp3(pcm: bytes, rate: int = EDGE_RATE, bitrate: int = MP3_BITRATE) -> bytes:
    """Raw MP3 frames (no ID3 or Xing header), as Edge streams them."""
    encoder = av.CodecContext.create("libmp3lame", "w")
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = "s16p"
    encoder.bit_rate = bitrate
    encoder.open()
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    out = bytearray()
    for packet in encoder.encode(frame):  # type: ignore[arg-type]
        out += bytes(packet)
    for packet in encoder.encode(None):  # type: ignore[arg-type]
        out += bytes(packet)
    return bytes(out)


def _boundary(kind: str, text: str, start_s: float, end_s: float) -> dict[str, Any]:
    return {
        "Type": kind,
        "Data": {
            "Offset": int(start_s * TICKS_PER_SECOND),
            "Duration": int((end_s - start_s) * TICKS_PER_SECOND),
            "text": {"Text": escape(text), "Length": len(text), "BoundaryType": kind},
        },
    }


def _text_message(request_id: str, path: str, body: dict[str, Any]) -> str:
    return (
        f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
        f"Path:{path}\r\n\r\n{json.dumps(body)}"
    )


def _audio_message(request_id: str, stream_id: str, data: bytes) -> bytes:
    content_type = "Content-Type:audio/mpeg\r\n" if data else ""
    header = f"X-RequestId:{request_id}\r\n{content_type}X-StreamId:{stream_id}\r\nPath:audio\r\n".encode()
    return len(header).to_bytes(2, "big") + header + data


class FakeEdgeServer:
    """The fake service; `url` is what EDGE_WSS_URL should be set to."""

    def __init__(
        self, mode: str = "normal", *, host: str = "127.0.0.1", port: int = 0, chunk_bytes: int = 1440
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.host = host
        self.port = port
        self.chunk_bytes = chunk_bytes
        self.requests: list[EdgeRequest] = []
        self.connections = 0
        self.closed: list[float] = []  # time.monotonic() when each connection ended
        self.realtime_factor: float | None = None
        self._server: Server | None = None
        self._flite = FliteEngine()
        self.catalogue = Catalogue({"edge": EDGE_VOICES})
        self.voices = {v.id for v in self.catalogue.voices_for("edge")}

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/consumer/speech/synthesize/readaloud/edge/v1?TrustedClientToken=fake"

    async def start(self) -> FakeEdgeServer:
        self._server = await serve(self._handle, self.host, self.port)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeEdgeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        mode = self.mode
        if mode == "hang":
            await connection.wait_closed()
            return
        query = connection.request.path if connection.request is not None else ""
        word_boundaries = False
        # When the connection closes, as the protocol library sees it (not when this handler next
        # notices, which may be after a long synthesis).
        watcher = asyncio.ensure_future(connection.wait_closed())
        watcher.add_done_callback(lambda _: self.closed.append(time.monotonic()))
        try:
            async for message in connection:
                if isinstance(message, bytes):
                    continue
                headers, body = parse_text_message(message)
                if headers.get("Path") == "speech.config":
                    word_boundaries = '"wordBoundaryEnabled":"true"' in body
                elif headers.get("Path") == "ssml":
                    await self._answer(connection, headers, body, query, mode, word_boundaries)
        except ConnectionClosed:
            return  # the client left, or `drop` cut the connection on purpose

    async def _speak(self, text: str, voice: str, speed: float) -> tuple[bytes, list[TimedWord]]:
        """Flite's speech for `text` at Edge's rate, and its words (as written) with flite's times."""
        flite_voice = "rms" if self.catalogue.gender_of(voice) == "male" else "slt"
        pcm = b""
        marks: list[WordMark] = []
        async for piece in self._flite.synthesize(text, flite_voice, speed=min(max(speed, 0.25), 4.0)):
            if isinstance(piece, WordMark):
                marks.append(piece)
            else:
                pcm += piece
        return resample_pcm(pcm, self._flite.sample_rate, EDGE_RATE), align_marks(text, marks)

    async def _answer(
        self,
        connection: ServerConnection,
        headers: dict[str, str],
        ssml: str,
        query: str,
        mode: str,
        word_boundaries: bool = False,
    ) -> None:
        request_id = headers.get("X-RequestId", uuid.uuid4().hex)
        stream_id = uuid.uuid4().hex.upper()
        parsed = parse_ssml(ssml)
        voice, text = parsed.voice, parsed.text
        request = EdgeRequest(
            voice, parsed.rate, text, parsed.markup_inside, query, headers, parsed.pitch, parsed.volume
        )
        self.requests.append(request)
        await connection.send(_text_message(request_id, "turn.start", {"context": {"serviceTag": "fake"}}))
        await connection.send(
            _text_message(request_id, "response", {"context": {"serviceTag": "fake"}, "audio": {"type": "inline"}})
        )
        # Like the service, a voice it does not have gets a turn without audio.
        if voice not in self.voices or not text.strip():
            await connection.send(_text_message(request_id, "turn.end", {}))
            return
        pcm, words = await self._speak(text, voice, speed_of(parsed.rate))
        seconds = len(pcm) / (2 * EDGE_RATE)
        pending: list[dict[str, Any]] = []
        if word_boundaries:
            request.words = [(w.word, w.start_s, w.end_s) for w in words]
            pending = [_boundary("WordBoundary", w.word, w.start_s, w.end_s) for w in words]
        else:
            lead = 0.05
            sentence = _boundary("SentenceBoundary", text, lead, seconds)
            await connection.send(_text_message(request_id, "audio.metadata", {"Metadata": [sentence]}))
        request.pcm = pcm
        mp3 = encode_mp3(pcm)
        chunks = [mp3[i : i + self.chunk_bytes] for i in range(0, len(mp3), self.chunk_bytes)]
        loop = asyncio.get_running_loop()
        began = loop.time()
        for index, chunk in enumerate(chunks):
            if self.realtime_factor:
                due = began + index * self.chunk_bytes * 8 / MP3_BITRATE / self.realtime_factor
                await asyncio.sleep(max(0.0, due - loop.time()))
            if mode == "drop" and index >= len(chunks) // 2:
                connection.transport.abort()  # no close frame, no turn.end: a cut connection
                return
            # Words that begin in this frame are announced before it (48 kbit/s CBR: bytes -> time).
            chunk_end_ticks = (index + 1) * self.chunk_bytes * 8 * TICKS_PER_SECOND // MP3_BITRATE
            while pending and pending[0]["Data"]["Offset"] < chunk_end_ticks:
                await connection.send(_text_message(request_id, "audio.metadata", {"Metadata": [pending.pop(0)]}))
            await connection.send(_audio_message(request_id, stream_id, chunk))
            await asyncio.sleep(0)
        for boundary in pending:
            await connection.send(_text_message(request_id, "audio.metadata", {"Metadata": [boundary]}))
        await connection.send(_audio_message(request_id, stream_id, b""))
        await connection.send(_text_message(request_id, "turn.end", {}))


class EdgeServerThread:
    """Runs a `FakeEdgeServer` on its own event loop in a daemon thread (for session fixtures)."""

    def __init__(self, mode: str = "normal") -> None:
        self.server = FakeEdgeServer(mode)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-edge", daemon=True)

    def __enter__(self) -> FakeEdgeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        return self.server

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Edge TTS websocket server (speaks with flite)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="normal")
    args = parser.parse_args()

    async def run() -> None:
        async with FakeEdgeServer(args.mode, port=args.port) as server:
            print(f"EDGE_WSS_URL={server.url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
