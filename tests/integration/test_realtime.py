"""The realtime socket `/v1/audio/speech/stream` through the real Serve app, with a real client.

Engines are the session's: Zonos reported unavailable, Edge on the local fake Edge service
(word boundaries like the real one) and real Flite. Checks are on behaviour: what arrives, in
what order, what the engines were left doing; never on how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.fakes.edge_server import FakeEdgeServer

pytestmark = pytest.mark.integration

LONG = " ".join(f"This is sentence number {n} of a rather long answer that keeps going." for n in
                ("one", "two", "three", "four", "five", "six", "seven", "eight"))


def ws_url(serve_url: str) -> str:
    return serve_url.replace("http://", "ws://") + "/v1/audio/speech/stream"


@pytest.fixture
async def ws(serve_url: str) -> AsyncIterator[ClientConnection]:
    async with connect(ws_url(serve_url), max_size=None) as socket:
        yield socket


async def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


async def until(ws: ClientConnection, kind: str, timeout: float = 30.0) -> tuple[list[dict[str, Any]], bytes]:
    """Events and audio received up to and including the first event of `kind`."""
    got: list[dict[str, Any]] = []
    audio = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                audio += message
                continue
            event = json.loads(message)
            got.append(event)
            if event["type"] == kind:
                return got, bytes(audio)


def in_flight(serve_url: str) -> dict[str, int]:
    data = httpx.get(f"{serve_url}/v1/engines", timeout=10).json()["data"]
    return {e["name"]: e["in_flight"] for e in data}


async def settled(serve_url: str, timeout: float = 15.0) -> dict[str, int]:
    """Engine slots in use once the router has let go of everything (polled: cleanup is async)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await asyncio.to_thread(in_flight, serve_url)
        if not any(counts.values()) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def test_fragments_split_mid_word_then_flush(ws: ClientConnection, edge_server: FakeEdgeServer) -> None:
    await send(ws, "session.update", response_format="pcm", timestamps=True, engine="flite")
    text = "Hello there, my friend. How are you today"
    for i in range(0, len(text), 4):  # four-character fragments: most words arrive in pieces
        await send(ws, "input_text.append", text=text[i : i + 4])
    await send(ws, "input_text.flush")
    got, pcm = await until(ws, "flushed")
    starts = [e for e in got if e["type"] == "sentence.start"]
    assert [(s["index"], s["text"], s["engine"]) for s in starts] == [
        (0, "Hello there, my friend.", "flite"), (1, "How are you today", "flite"),
    ]
    words = [e for e in got if e["type"] == "word"]
    assert [w["word"] for w in words] == ["Hello", "there", "my", "friend", "How", "are", "you", "today"]
    times = [w["start_s"] for w in words]
    assert times == sorted(times) and words[-1]["end_s"] <= len(pcm) / 48000 + 0.05
    assert starts[1]["start_s"] <= words[4]["start_s"]
    assert len(pcm) / 48000 > 2.0  # 24 kHz s16 mono
    assert not [e for e in got if e["type"] == "error"]


NUMBERS = "Your total of $45.20 for 3 items was paid on March 21 at 3:30 pm, so nothing more is due today."
# How an LLM's tokens cut it: words with their leading space, digits in short groups, symbols alone.
NUMBER_TOKENS = ["Your", " total", " of", " $", "45", ".", "20", " for", " 3", " items", " was", " paid", " on",
                 " March", " 21", " at", " 3", ":", "30", " pm", ",", " so", " nothing", " more", " is", " due",
                 " today", ". "]


async def test_number_heavy_sentence_in_tokens_gets_spoken_words(ws: ClientConnection) -> None:
    """Streamed token by token with timestamps on (normalisation is the default): the words are the
    spoken ones, the sentence event keeps the text as written. The replica loads the normaliser in
    the background at start (text passes through until then), so a first try may come back as written."""
    assert "".join(NUMBER_TOKENS).strip() == NUMBERS
    await send(ws, "session.update", response_format="pcm", timestamps=True, engine="flite")
    words: list[str] = []
    for _ in range(30):
        for token in NUMBER_TOKENS:
            await send(ws, "input_text.append", text=token)
        await send(ws, "input_text.flush")
        got, pcm = await until(ws, "flushed")
        assert not [e for e in got if e["type"] == "error"]
        assert [e["text"] for e in got if e["type"] == "sentence.start"] == [NUMBERS]
        words = [e["word"].lower() for e in got if e["type"] == "word"]
        if not any(ch.isdigit() for w in words for ch in w):
            break
        await asyncio.sleep(0.5)  # the normaliser is still loading
    spoken = " ".join(words)
    for phrase in ("forty five dollars", "twenty cents", "three items", "march twenty first",
                   "three thirty", "nothing more is due today"):
        assert phrase in spoken, spoken
    assert not any(ch.isdigit() or ch in "$:" for ch in spoken)
    assert len(pcm) / 48000 > 3.0


async def test_edge_words_and_defaults_before_any_session_update(
    ws: ClientConnection, edge_server: FakeEdgeServer
) -> None:
    await send(ws, "input_text.append", text="No settings were sent. ")
    await send(ws, "input_text.flush")
    got, audio = await until(ws, "flushed")
    assert [e["engine"] for e in got if e["type"] == "sentence.start"] == ["edge"]
    assert audio[:3] == b"ID3" or audio[:2] in (b"\xff\xf3", b"\xff\xfb")  # mp3, as HTTP's default
    assert not [e for e in got if e["type"] == "word"]  # timestamps are opt-in


async def test_settings_change_mid_utterance_applies_to_the_next_sentence(ws: ClientConnection) -> None:
    await send(ws, "session.update", response_format="pcm", engine="edge", timestamps=True)
    await send(ws, "input_text.append", text="The first sentence is done. The second")
    await send(ws, "session.update", engine="flite")
    await send(ws, "input_text.append", text=" one follows.")
    await send(ws, "input_text.flush")
    got, _ = await until(ws, "flushed")
    assert [(e["text"], e["engine"]) for e in got if e["type"] == "sentence.start"] == [
        ("The first sentence is done.", "edge"), ("The second one follows.", "flite"),
    ]
    words = [e for e in got if e["type"] == "word"]
    assert [w["start_s"] for w in words] == sorted(w["start_s"] for w in words)  # one turn, one clock


async def test_cancel_mid_sentence_stops_audio_and_frees_every_engine(ws: ClientConnection, serve_url: str) -> None:
    await send(ws, "session.update", response_format="pcm", engine="flite")
    await send(ws, "input_text.append", text=LONG)
    async with asyncio.timeout(30):
        while not isinstance(await ws.recv(), bytes):  # the first audio: speech is under way
            pass
    await send(ws, "cancel")
    await until(ws, "cancelled")
    await send(ws, "input_text.flush")  # nothing is buffered any more: flushed comes at once
    after, audio = await until(ws, "flushed")
    assert audio == b"" and [e["type"] for e in after] == ["flushed"]
    assert set((await settled(serve_url)).values()) == {0}
    await send(ws, "input_text.append", text="Still usable after a barge-in.")
    await send(ws, "input_text.flush")
    got, audio = await until(ws, "flushed")
    assert audio and [e["text"] for e in got if e["type"] == "sentence.start"] == ["Still usable after a barge-in."]


async def test_cancel_with_nothing_in_flight_is_acknowledged(ws: ClientConnection) -> None:
    await send(ws, "cancel")
    got, audio = await until(ws, "cancelled")
    assert [e["type"] for e in got] == ["cancelled"] and audio == b""


async def test_client_vanishing_mid_stream_leaks_no_engine_slot(serve_url: str) -> None:
    socket = await connect(ws_url(serve_url))
    await send(socket, "session.update", response_format="pcm", engine="edge")
    await send(socket, "input_text.append", text=LONG)
    async with asyncio.timeout(30):
        while not isinstance(await socket.recv(), bytes):
            pass
    socket.transport.abort()  # no close frame: the client is simply gone
    assert set((await settled(serve_url)).values()) == {0}


async def test_bad_input_gets_error_events_and_the_socket_stays_usable(ws: ClientConnection) -> None:
    await ws.send("this is not json")
    await ws.send(b"\x00\x01binary")
    await send(ws, "input_text.remove")
    await ws.send(json.dumps({"type": "input_text.append", "text": "x" * 70_000}))
    await send(ws, "session.update", voice="no-such-voice")
    await send(ws, "session.update", speed=9)
    await send(ws, "input_text.append", text="bell \x07 ring")
    await send(ws, "input_text.append", text=42)
    codes: list[str] = []
    async with asyncio.timeout(30):
        while len(codes) < 8:
            event = json.loads(await ws.recv())
            assert event["type"] == "error" and set(event["error"]) == {"message", "type", "param", "code"}
            codes.append(event["error"]["code"])
    assert codes == ["invalid_json", "binary_not_supported", "unknown_message_type", "message_too_large",
                     "invalid_voice", "invalid_value", "invalid_input", "invalid_value"]
    await send(ws, "session.update", response_format="pcm", engine="flite")
    await send(ws, "input_text.append", text="Everything still works.")
    await send(ws, "input_text.flush")
    got, audio = await until(ws, "flushed")
    assert audio and not [e for e in got if e["type"] == "error"]


async def test_pending_text_is_capped_and_the_refusal_is_said(ws: ClientConnection) -> None:
    await send(ws, "session.update", response_format="pcm", engine="flite")
    chunk = "word " * 800  # 4000 characters, no sentence end: it all waits in the buffer
    for _ in range(4):
        await send(ws, "input_text.append", text=chunk)
    await send(ws, "input_text.append", text=chunk)
    got, _ = await until(ws, "error")
    assert got[-1]["error"]["code"] == "buffer_full"
    await send(ws, "cancel")
    await until(ws, "cancelled")


async def test_a_hundred_concurrent_sockets(serve_url: str) -> None:
    """100 sockets open at once on one replica, each answered on its own. They speak in waves of 20:
    one Flite replica on 2 cores speaks about 30 short sentences a second, and 100 at once would
    queue past the test's 3 s first-byte budget (that is engine capacity, not the socket's)."""
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(connect(ws_url(serve_url))) for _ in range(100)]
        for socket in sockets:
            await send(socket, "session.update", response_format="pcm", engine="flite")
            await send(socket, "cancel")
        acks = await asyncio.gather(*(until(socket, "cancelled") for socket in sockets))
        assert all(not [e for e in got if e["type"] == "error"] for got, _ in acks)  # all 100 live at once

        async def speak(n: int) -> tuple[int, list[str]]:
            await send(sockets[n], "input_text.append", text=f"Hi {'abcdefghij'[n % 10]}.")
            await send(sockets[n], "input_text.flush")
            got, audio = await until(sockets[n], "flushed", timeout=60)
            return len(audio), [e["error"]["message"][:200] for e in got if e["type"] == "error"]

        results: list[tuple[int, list[str]]] = []
        for wave in range(0, 100, 20):
            results += await asyncio.gather(*(speak(n) for n in range(wave, wave + 20)))
    failed = [(n, size, errors) for n, (size, errors) in enumerate(results) if size < 4800 or errors]
    assert not failed, failed  # 4800 bytes: 0.1 s of audio
    assert set((await settled(serve_url)).values()) == {0}
