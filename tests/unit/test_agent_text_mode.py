"""The agent in livekit-agents' text mode: AgentSession + a scripted LLM, no LiveKit server.

The LLM answers from a script (tests/fakes/scripted_llm.py: livekit ships no public fake LLM).
The session's metrics feed the UsageTracker, and the cleanup callback finalizes the session on
the local sessions server with the usage it collected.
"""

from __future__ import annotations

from pathlib import Path

from livekit.agents.metrics import TTSMetrics

from agent.api_client import AgentApiClient, RetryPolicy
from agent.latency import LatencyMonitor
from agent.lifecycle import SessionRegistry, make_shutdown_callback, open_session
from agent.outbox import Outbox
from agent.worker import VoiceAgent, build_session
from tests.fakes.scripted_llm import ScriptedLLM
from tests.unit import test_agent_support as support
from tests.unit.test_agent_support import FakeSessionsServer

sessions_server = support.sessions_server
fake_api = support.fake_api


async def test_conversation_in_text_mode_then_cleanup_finalizes(fake_api: FakeSessionsServer, tmp_path: Path) -> None:
    scripted = ScriptedLLM(["Hello! I can hear you.", "It is sunny today."])
    api = AgentApiClient(fake_api.url, outbox=Outbox(tmp_path / "o.jsonl"), policy=RetryPolicy(1, 0.01, 0.02))
    monitor = LatencyMonitor(64)
    registry = SessionRegistry()
    info = await api.create_session("room-text", "alice", agent_name="voice-agent")
    assert info is not None
    active = open_session(session_id=info["id"], room="room-text", api=api, monitor=monitor, registry=registry)
    session = build_session(llm=scripted)
    active.tracker.attach(session.llm)
    try:
        await session.start(VoiceAgent("You are a test agent."))
        first = await session.run(user_input="Hi there")
        first.expect.next_event().is_message(role="assistant")
        second = await session.run(user_input="What is the weather?")
        message = second.expect.next_event().is_message(role="assistant").event().item
        assert message.text_content == "It is sunny today."
        second.expect.no_more_events()
    finally:
        await session.aclose()
    assert scripted.prompts == ["Hi there", "What is the weather?"]
    assert active.tracker.llm_requests == 2
    assert monitor.summary(active.key)["llm_ttft"]["count"] == 2

    # A TTS metric as ServeTTS emits it is accounted too (the text-mode session has no audio).
    active.tracker.on_metrics(
        TTSMetrics(label="ServeTTS", request_id="r", timestamp=0.0, ttfb=0.2, duration=0.5, audio_duration=1.5,
                   cancelled=False, characters_count=18, streamed=True)
    )
    on_shutdown = make_shutdown_callback(active, registry)
    await on_shutdown("participant left")
    await on_shutdown("again")  # a second call does not finalize twice
    await api.aclose()

    stored = fake_api.state.sessions[info["id"]]
    assert stored["status"] == "COMPLETED"
    assert fake_api.state.finalize_calls == 1
    usage = stored["usage"]
    assert usage["llm_requests"] == 2 and usage["llm_prompt_tokens"] == 14 and usage["llm_completion_tokens"] == 9
    assert usage["characters"] == 18 and usage["audio_seconds"] == 1.5
    assert usage["latency_ms"]["tts_ttfb"]["p50_ms"] == 200.0
    assert monitor.sessions() == [] and len(registry) == 0
