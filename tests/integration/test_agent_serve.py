"""The agent against the real Serve app: ServeTTS over HTTP and over deployment handles,
the sessions API end to end, and Ray actors hosting LiveKit workers (no LiveKit server here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit.agents.metrics import TTSMetrics

from agent.api_client import AgentApiClient, RetryPolicy
from agent.outbox import Outbox
from agent.tts import ServeTTS, ServeTTSOptions
from tests.conftest import free_port

pytestmark = pytest.mark.integration
TEXT = "Hello from the agent. This is a second sentence."


def _collect_metrics(tts: ServeTTS) -> list[TTSMetrics]:
    collected: list[TTSMetrics] = []
    tts.on("metrics_collected", collected.append)
    return collected


async def _wait_for(metrics: list[TTSMetrics]) -> TTSMetrics:
    for _ in range(100):
        if metrics:
            return metrics[-1]
        await asyncio.sleep(0.02)
    raise AssertionError("no metrics_collected event")


@pytest.mark.parametrize("transport", ["http", "handle"])
async def test_synthesize_frames_and_metrics(serve_url: str, transport: str) -> None:
    tts = ServeTTS(ServeTTSOptions(voice="alloy", transport=transport, base_url=serve_url))
    metrics = _collect_metrics(tts)
    try:
        frames = [ev.frame async for ev in tts.synthesize(TEXT)]
        assert tts.transport == transport
    finally:
        await tts.aclose()
    assert frames and all(f.sample_rate == 24000 and f.num_channels == 1 for f in frames)
    audio = sum(f.duration for f in frames)
    assert audio > 1.0  # two spoken sentences
    m = await _wait_for(metrics)
    assert m.characters_count == len(TEXT)
    assert m.audio_duration == pytest.approx(audio, abs=1e-6)
    assert 0 < m.ttfb <= m.duration
    assert m.streamed is False and m.metadata is not None and m.metadata.model_provider == "voice-tts-serve"


async def test_stream_speaks_sentences_as_tokens_arrive(serve_url: str) -> None:
    tts = ServeTTS(ServeTTSOptions(transport="auto", base_url=serve_url))  # in the driver: handles
    metrics = _collect_metrics(tts)
    try:
        stream = tts.stream()
        for word in TEXT.split(" "):
            stream.push_text(word + " ")
        stream.end_input()
        events = [ev async for ev in stream]
        await stream.aclose()
        assert tts.transport == "handle"
    finally:
        await tts.aclose()
    frames = [ev.frame for ev in events]
    assert events[-1].is_final and sum(ev.is_final for ev in events) == 1
    assert all(f.sample_rate == 24000 for f in frames)
    m = await _wait_for(metrics)
    assert m.streamed is True
    assert m.characters_count == len(TEXT) + 1  # everything pushed, the trailing space included
    assert m.audio_duration == pytest.approx(sum(f.duration for f in frames), abs=1e-6)
    assert m.ttfb > 0


async def test_http_errors_surface_as_livekit_api_errors(serve_url: str) -> None:
    from livekit.agents import APIStatusError

    tts = ServeTTS(ServeTTSOptions(voice="no-such-voice", transport="http", base_url=serve_url))
    try:
        with pytest.raises(APIStatusError) as info:
            await tts.synthesize("Hello.", conn_options=_no_retry()).collect()
    finally:
        await tts.aclose()
    assert info.value.status_code == 400 and info.value.retryable is False


def _no_retry() -> Any:
    from livekit.agents import APIConnectOptions

    return APIConnectOptions(max_retry=0)


async def test_sessions_api_end_to_end(serve_url: str, tmp_path: Path) -> None:
    api = AgentApiClient(serve_url, outbox=Outbox(tmp_path / "o.jsonl"), policy=RetryPolicy(2, 0.05, 0.2))
    async with api:
        session = await api.create_session("room-int", "alice", agent_name="voice-agent", metadata={"job": "j1"})
        assert session is not None and session["id"]
        assert await api.heartbeat(session["id"]) is True
        usage = {"characters": 42, "audio_seconds": 3.5, "requests": 2, "llm_requests": 2}
        assert await api.finalize_session(session["id"], usage) == "delivered"
        assert await api.finalize_session(session["id"], usage) == "delivered"  # idempotent
        stored = await api.get_session(session["id"])
    assert stored is not None and stored["status"] == "COMPLETED"
    assert not (tmp_path / "o.jsonl").exists()


async def test_agent_actors_start_report_and_drain(ray_cluster: None) -> None:
    """Two actors host LiveKit workers pointed at a LiveKit URL where nothing listens: they
    start, serve their health port, report that they are not registered, and drain on stop."""
    import ray

    from agent.worker import drain_actors, spawn_actors

    env = {
        "LIVEKIT_URL": f"ws://127.0.0.1:{free_port()}",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "AGENT_JOB_EXECUTOR": "thread",
        "AGENT_NUM_IDLE_PROCESSES": "0",
    }
    actors = await asyncio.to_thread(spawn_actors, 2, env=env, num_cpus=0.1)
    try:
        statuses = await asyncio.gather(*(a.status.remote() for a in actors))
        assert [s["state"] for s in statuses] == ["running", "running"]
        assert len({s["pid"] for s in statuses}) == 2
        for status in statuses:
            assert status["registered"] is False and status["health_port"] > 0
            async with httpx.AsyncClient() as client:
                worker = await client.get(f"http://127.0.0.1:{status['health_port']}/worker")
            assert worker.status_code == 200 and worker.json()["agent_name"] == "voice-agent"
        final = await drain_actors(actors, 5)
        assert [s["state"] for s in final] == ["stopped", "stopped"]
        assert all(s["draining"] for s in final)
    finally:
        for actor in actors:
            ray.kill(actor)
