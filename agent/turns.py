"""A turn: LLM text streamed in, PCM and word timings streamed out, cancellable at any moment.

`ServeSynthesizeStream` (agent/tts.py) speaks one agent turn through one `SpeechTurn`. Two kinds:

- `RealtimeTurn`: one WebSocket to `/v1/audio/speech/stream` (docs/realtime.md) per turn. The
  server cuts sentences and pipelines them (look-ahead), so sentence two is synthesized while
  sentence one plays and there is no gap between them.
- `RouterTurn`: the same pipelining in-process, over the engines' deployment handles
  (`FallbackRouter.stream`), for agents running inside the Ray cluster.

Both are made on the event loop of the turn that uses them and die with it: nothing here is
shared between turns, jobs or loops. Errors are livekit's (`APIError` and subclasses) so its
retry and fallback logic work: a `retryable` error with no audio out yet is retried by livekit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from config.logging import truncate
from serve_app.core.errors import AllEnginesFailed, InvalidInput

logger = logging.getLogger(__name__)

SOCKET_PATH = "/v1/audio/speech/stream"
# Error codes that say one of our messages carried no text the server could use, so nothing is lost
# by going on: logged. Every other error event means text was refused or not spoken (or the session
# cannot go on): the turn fails with it.
NON_FATAL_CODES = frozenset({"invalid_json", "unknown_message_type", "binary_not_supported"})
# OpenAI's error `type` -> the HTTP status livekit's APIStatusError carries (retry decisions use it).
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "rate_limit_error": 429,
    "service_unavailable": 503,
    "server_error": 500,
}
# Close codes the server uses: policy (auth, origin) and try-again-later / restarting (draining).
_CLOSE_STATUS = {1008: 401, 1013: 503, 1012: 503}


@dataclass(frozen=True)
class TurnWord:
    """A word heard in the turn's audio, seconds from the start of the turn (this stream)."""

    word: str
    start_s: float
    end_s: float


TurnEvent = bytes | TurnWord


class SpeechTurn(Protocol):
    """Text in, `TurnEvent`s out. `events()` ends once all audio of the finished input is out."""

    name: str

    async def append(self, text: str) -> None: ...

    async def flush(self) -> None: ...

    async def finish(self) -> None: ...

    def events(self) -> AsyncIterator[TurnEvent]: ...

    async def cancel(self) -> bool: ...

    async def aclose(self) -> None: ...


def socket_url(base_url: str) -> str:
    """The realtime socket's URL for the HTTP base URL of the API (http -> ws, https -> wss)."""
    base = base_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return base + SOCKET_PATH


def error_from_event(error: dict[str, Any]) -> APIStatusError:
    """An `error` event's body as livekit's error: status from OpenAI's type, retryable if 429/5xx."""
    code = str(error.get("code") or "error")[:64]
    status = _STATUS_BY_TYPE.get(str(error.get("type")), 500)
    message = truncate(str(error.get("message") or ""), 200)
    return APIStatusError(
        f"speech socket error {code}: {message}",
        status_code=status,
        body={"code": code, "param": error.get("param")},
        retryable=status == 429 or status >= 500,
    )


class RealtimeTurn:
    """One turn over the realtime socket (session.update, appends, flushes; audio and words back).

    Word times on the socket count from the start of the server's turn, which restarts after each
    `flushed`; they are shifted here onto this stream's own clock (the audio received before).
    """

    name = "websocket"

    def __init__(
        self, ws: ClientConnection, *, sample_rate: int, idle_timeout_s: float, cancel_timeout_s: float
    ) -> None:
        self._ws = ws
        self._bytes_per_s = 2 * sample_rate  # PCM s16le mono
        self._idle_timeout_s = idle_timeout_s
        self._cancel_timeout_s = cancel_timeout_s
        self._flushes_sent = 0
        self._flushes_seen = 0
        self._finished = False
        self._audio_bytes = 0
        self._offset_s = 0.0  # where the server's current turn starts in this stream's audio

    @classmethod
    async def connect(
        cls,
        base_url: str,
        session: dict[str, Any],
        *,
        api_key: str | None,
        timeout_s: float,
        cancel_timeout_s: float,
    ) -> RealtimeTurn:
        """Open the socket and send `session.update` (`session` holds its fields; pcm is forced)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            ws = await connect(
                socket_url(base_url), additional_headers=headers, open_timeout=timeout_s, max_size=None
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise APIStatusError(
                f"speech socket refused: HTTP {status}", status_code=status,
                retryable=status in (408, 429) or status >= 500,
            ) from exc
        except TimeoutError as exc:
            raise APITimeoutError("speech socket: connect timed out") from exc
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise APIConnectionError(f"speech socket: connect failed ({type(exc).__name__})") from exc
        turn = cls(ws, sample_rate=int(session["sample_rate"]), idle_timeout_s=timeout_s,
                   cancel_timeout_s=cancel_timeout_s)
        await turn._send({"type": "session.update", **session, "response_format": "pcm", "timestamps": True})
        return turn

    async def append(self, text: str) -> None:
        if text:
            await self._send({"type": "input_text.append", "text": text})

    async def flush(self) -> None:
        self._flushes_sent += 1
        await self._send({"type": "input_text.flush"})

    async def finish(self) -> None:
        """End of input: flush what is buffered; `events()` ends after its `flushed`."""
        self._finished = True
        await self.flush()

    async def events(self) -> AsyncIterator[TurnEvent]:
        while not (self._finished and self._flushes_seen >= self._flushes_sent):
            message = await self._receive()
            if isinstance(message, bytes):
                self._audio_bytes += len(message)
                yield message
                continue
            event = json.loads(message)
            kind = event.get("type")
            if kind == "word":
                yield TurnWord(
                    str(event["word"]), self._offset_s + float(event["start_s"]), self._offset_s + float(event["end_s"])
                )
            elif kind == "flushed":
                self._flushes_seen += 1
                self._offset_s = self._audio_bytes / self._bytes_per_s
            elif kind == "error":
                error = event.get("error") or {}
                if error.get("code") in NON_FATAL_CODES:
                    logger.warning("speech socket: %s", truncate(str(error.get("message")), 120))
                    continue
                raise error_from_event(error)
            # sentence.start, cancelled (of an earlier cancel): nothing to do

    async def _receive(self) -> str | bytes:
        # Before the input ends the server may wait for the LLM's next sentence as long as it likes;
        # after it, silence for longer than the request timeout means the server is stuck.
        timeout = self._idle_timeout_s if self._finished else None
        try:
            async with asyncio.timeout(timeout):
                return await self._ws.recv()
        except TimeoutError as exc:
            raise APITimeoutError(f"speech socket: no answer within {self._idle_timeout_s:g}s") from exc
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc

    async def cancel(self) -> bool:
        """Barge-in: `cancel`, wait (bounded) for `cancelled`. True when the server acknowledged it.

        Only call it when nobody else reads the socket (the turn's reader task has ended)."""
        try:
            async with asyncio.timeout(self._cancel_timeout_s):
                await self._ws.send(json.dumps({"type": "cancel"}))
                while True:
                    message = await self._ws.recv()
                    if isinstance(message, str) and json.loads(message).get("type") == "cancelled":
                        return True
        except (TimeoutError, ConnectionClosed, OSError) as exc:
            logger.debug("speech socket: cancel not acknowledged (%s)", type(exc).__name__)
            return False

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), self._cancel_timeout_s)

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self._ws.send(json.dumps(message, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc


@contextlib.contextmanager
def livekit_errors() -> Iterator[None]:
    """The in-cluster router's errors as livekit's, so its retry and fallback logic applies: the
    caller's mistakes are not retried, no engine left is a retryable 503, anything else is a broken
    connection to Serve (a replica died, a handle failed)."""
    try:
        yield
    except InvalidInput as exc:
        raise APIError(f"invalid speech request: {str(exc)[:200]}", retryable=False) from exc
    except AllEnginesFailed as exc:
        raise APIStatusError(str(exc)[:300], status_code=503, retryable=True) from exc
    except APIError:
        raise
    except Exception as exc:
        raise APIConnectionError(f"router failed: {type(exc).__name__}") from exc


def _closed_error(exc: ConnectionClosed) -> APIError:
    code = exc.rcvd.code if exc.rcvd is not None else None
    status = _CLOSE_STATUS.get(code) if code is not None else None
    if status is not None:
        return APIStatusError(
            f"speech socket closed by the server ({code})", status_code=status, retryable=status >= 500
        )
    return APIConnectionError(f"speech socket closed ({code if code is not None else 'no close frame'})")


class RouterTurn:
    """The same turn in-process: sentences cut as text arrives, `FallbackRouter.stream` pipelines them.

    `router` is the in-process `FallbackRouter` over deployment handles; `request` a `SpeechRequest`
    with timestamps on. Imports of serve_app stay inside: agents outside the cluster never load it.
    """

    name = "handle"

    def __init__(self, router: Any, request: Any) -> None:
        from serve_app.core.text import SentenceBuffer

        self._router = router
        self._request = request
        self._buffer = SentenceBuffer(max_chars=router.config.sentence_max_chars)
        self._sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self._stream: Any = None

    async def append(self, text: str) -> None:

        try:
            self._queue(self._buffer.append(text))
        except InvalidInput as exc:
            raise APIError(f"invalid speech text: {str(exc)[:200]}", retryable=False) from exc

    async def flush(self) -> None:
        self._queue(self._buffer.flush())

    async def finish(self) -> None:
        await self.flush()
        self._sentences.put_nowait(None)

    def _queue(self, sentences: list[str]) -> None:
        for sentence in sentences:
            self._sentences.put_nowait(sentence)

    async def _iterate(self) -> AsyncIterator[str]:
        while (sentence := await self._sentences.get()) is not None:
            yield sentence

    async def events(self) -> AsyncIterator[TurnEvent]:

        self._stream = self._router.stream(self._request, self._iterate())
        with livekit_errors():
            async for chunk in self._stream:
                if chunk.pcm:
                    yield chunk.pcm
                for word in chunk.words:
                    yield TurnWord(word.word, word.start_s, word.end_s)

    async def cancel(self) -> bool:
        """Closing the router stream cancels every sentence in flight (and the replicas' generators)."""
        await self.aclose()
        return True

    async def aclose(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
            self._stream = None
