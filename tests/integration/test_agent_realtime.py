"""ServeTTS streaming turns over the realtime WebSocket, against the live Serve app.

Real parts only: the session's Serve app (Flite pinned through its model name where a check needs
one engine), livekit's own SynthesizeStream machinery, a real websockets client. Checks are on
what arrives (audio, words, what the engines are left doing), never on how fast.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit.agents import APIConnectOptions
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

from agent.tts import ServeSynthesizeStream, ServeTTS, ServeTTSOptions
from tests.conftest import free_port
from tests.integration.test_realtime import settled

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NO_RETRY = APIConnectOptions(max_retry=0)
LONG = " ".join(f"This is sentence number {n} of a rather long answer that keeps going." for n in
                ("one", "two", "three", "four", "five", "six", "seven", "eight"))


def ws_tts(serve_url: str, **options: Any) -> ServeTTS:
    return ServeTTS(ServeTTSOptions(transport="websocket", base_url=serve_url, model="flite", **options))


def words_of(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


async def speak(tts: ServeTTS, fragments: list[str]) -> tuple[float, list[Any], int]:
    """Push the fragments as LLM tokens, end the turn; (audio seconds, timed words, final frames)."""
    stream = tts.stream(conn_options=NO_RETRY)
    try:
        for fragment in fragments:
            stream.push_text(fragment)
        stream.end_input()
        events = [ev async for ev in stream]
    finally:
        await stream.aclose()
    words = [w for ev in events for w in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
    return sum(ev.frame.duration for ev in events), words, sum(ev.is_final for ev in events)


async def test_tokens_split_mid_word_give_audio_and_aligned_words(serve_url: str) -> None:
    text = "Hello there, my friend. How are you doing today? I hope the weather is kind."
    tts = ws_tts(serve_url)
    try:
        assert tts.capabilities.streaming and tts.capabilities.aligned_transcript
        audio_s, words, finals = await speak(tts, [text[i : i + 3] for i in range(0, len(text), 3)])
        assert tts.stream_transport == "websocket" and tts.transport == "http"
    finally:
        await tts.aclose()
    assert finals == 1 and audio_s > 2.0
    assert [w.strip() for w in words] == words_of(text)
    starts = [w.start_time for w in words]
    assert starts == sorted(starts)
    assert all(w.start_time <= w.end_time for w in words)
    assert words[-1].end_time <= audio_s + 0.05


async def test_sentences_are_pipelined_without_gaps(serve_url: str) -> None:
    """The turn's audio is the sentences' own audio back to back: nothing is added between them."""
    sentences = ["The first sentence is short.", "A second one follows it.", "And the third ends the turn."]
    tts = ws_tts(serve_url)
    try:
        turn_s, words, _ = await speak(tts, [w + " " for w in " ".join(sentences).split(" ")])
        alone = [sum(ev.frame.duration for ev in [e async for e in tts.synthesize(s, conn_options=NO_RETRY)])
                 for s in sentences]
    finally:
        await tts.aclose()
    assert turn_s == pytest.approx(sum(alone), rel=0.03)
    assert [w.strip() for w in words] == words_of(" ".join(sentences))


async def test_interrupt_mid_turn_cancels_on_the_server_and_frees_the_engines(serve_url: str) -> None:
    tts = ws_tts(serve_url)
    try:
        stream = tts.stream(conn_options=NO_RETRY)
        assert isinstance(stream, ServeSynthesizeStream)
        stream.push_text(LONG)  # no end of input: the LLM is still "writing"
        first = await asyncio.wait_for(stream.__anext__(), 30)
        assert first.frame.duration > 0
        await stream.aclose()  # the user barged in
        assert stream.cancel_acknowledged is True
        assert set((await settled(serve_url)).values()) == {0}
        # The same TTS speaks the next turn normally.
        audio_s, words, _ = await speak(tts, ["Still here after the interruption."])
    finally:
        await tts.aclose()
    assert audio_s > 0.5 and [w.strip() for w in words] == words_of("Still here after the interruption.")


async def test_concurrent_streams_each_get_their_own_turn(serve_url: str) -> None:
    texts = [f"Stream {name} says hello. Then stream {name} says goodbye." for name in
             ("alpha", "bravo", "charlie", "delta")]
    tts = ws_tts(serve_url)
    try:
        results = await asyncio.gather(*(speak(tts, [w + " " for w in t.split(" ")]) for t in texts))
    finally:
        await tts.aclose()
    for text, (audio_s, words, finals) in zip(texts, results, strict=True):
        assert finals == 1 and audio_s > 1.0
        assert [w.strip() for w in words] == words_of(text)
    assert set((await settled(serve_url)).values()) == {0}


async def test_refused_settings_raise_livekit_status_errors(serve_url: str) -> None:
    from livekit.agents import APIStatusError

    tts = ws_tts(serve_url, voice="no-such-voice")
    try:
        with pytest.raises(APIStatusError) as info:
            await speak(tts, ["Hello there."])
    finally:
        await tts.aclose()
    assert info.value.status_code == 400 and info.value.retryable is False


@pytest.mark.parametrize(
    ("executor", "transport", "expected"),
    [("process", "auto", "websocket"), ("thread", "websocket", "websocket"), ("thread", "auto", "handle")],
)
async def test_worker_jobs_run_on_their_own_loops_in_each_executor(
    serve_url: str, tmp_path: Path, executor: str, transport: str, expected: str
) -> None:
    """Three concurrent jobs in one agent actor, through livekit's own executor (simulated jobs: no
    LiveKit server here). Process jobs have no Ray, so `auto` streams over the socket; thread jobs
    share the actor's process, where Ray is initialised, so `auto` uses handles there."""
    import ray

    from agent.worker import drain_actors, spawn_actors

    env = {
        "LIVEKIT_URL": f"ws://127.0.0.1:{free_port()}",  # nothing listens: the worker stays unregistered
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "AGENT_JOB_EXECUTOR": executor,
        "AGENT_NUM_IDLE_PROCESSES": "0",
        "AGENT_VAD": "none",
        "AGENT_TTS_TRANSPORT": transport,
        "AGENT_TTS_MODEL": "flite",
        "API_BASE_URL": serve_url,
        "AGENT_JOB_RESULTS": str(tmp_path),
        "PYTHONPATH": str(REPO),  # job processes import the test entrypoint by name
    }
    actors = await asyncio.to_thread(
        spawn_actors, 1, env=env, num_cpus=0.1, job_entrypoint="tests.integration.agent_jobs:speak_one_turn"
    )
    rooms = [f"{executor}-{transport}-{i}" for i in range(3)]
    try:
        await asyncio.gather(*(actors[0].simulate_job.remote(room) for room in rooms))
        reports = await _reports(tmp_path, rooms)
        final = await drain_actors(actors, 30)
    finally:
        for actor in actors:
            ray.kill(actor)
    assert [s["state"] for s in final] == ["stopped"]
    for report in reports:
        assert report["transport"] == expected
        assert report["audio_s"] > 1.0 and report["words"] == words_of(report["text"])
    assert len({r["loop"] for r in reports}) == 3 if executor == "thread" else len({r["pid"] for r in reports}) == 3
    async with httpx.AsyncClient(base_url=serve_url) as client:
        for report in reports:  # each job's shutdown finalized its own session with its own client
            assert await _status_when_final(client, report["session_id"]) == "COMPLETED"


async def _status_when_final(client: httpx.AsyncClient, session_id: str, timeout_s: float = 30) -> str:
    """The session's status once it is no longer ACTIVE (finalize runs as the job shuts down)."""
    async with asyncio.timeout(timeout_s):
        while (status := (await client.get(f"/v1/sessions/{session_id}")).json()["status"]) == "ACTIVE":  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return str(status)


async def _reports(directory: Path, rooms: list[str], timeout_s: float = 180) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout_s):
        while not all((directory / f"{room}.json").exists() for room in rooms):  # noqa: ASYNC110 (files)
            await asyncio.sleep(0.2)
    return [json.loads((directory / f"{room}.json").read_text()) for room in rooms]
