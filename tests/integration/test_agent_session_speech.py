"""A livekit `AgentSession` that really speaks through ServeTTS over the realtime WebSocket.

No LiveKit server: the session's outputs are what a room would give it, made here
(tests/fakes/agent_outputs.py): livekit's own `TranscriptSynchronizer` in front of a speaker
that plays on the wall clock, and text sinks on both sides of the synchronizer (the word timings
ServeTTS delivered, and the transcript a user is shown). The LLM is scripted
(tests/fakes/scripted_llm.py) and streams its answer token by token; there is no STT or VAD, so
turns start with `generate_reply` and a barge-in is `session.interrupt()`, which is what livekit
itself calls when VAD hears the user. The Serve app is the session's live one (Flite pinned).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, AgentSession, APIConnectOptions
from livekit.agents.types import TimedString
from livekit.agents.voice.transcription import TranscriptSynchronizer

from agent.tts import ServeSynthesizeStream, ServeTTS, ServeTTSOptions
from agent.worker import VoiceAgent, build_session
from tests.fakes.agent_outputs import PlayoutAudioOutput, RecordingTextOutput
from tests.fakes.scripted_llm import ScriptedLLM
from tests.integration.test_realtime import settled

pytestmark = pytest.mark.integration

NO_RETRY = APIConnectOptions(max_retry=0)
SENTENCES = ["The first sentence is short.", "A second one follows it.", "And the third ends the turn."]
LONG = " ".join(f"This is sentence number {n} of a rather long answer that keeps going." for n in
                ("one", "two", "three", "four", "five", "six", "seven", "eight"))
AFTER = "Still here after the interruption."


def words_of(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text)


class ObservedServeTTS(ServeTTS):
    """ServeTTS that keeps the turns livekit opens, so a test can read how each one ended."""

    def __init__(self, opts: ServeTTSOptions) -> None:
        super().__init__(opts)
        self.turns: list[ServeSynthesizeStream] = []

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> ServeSynthesizeStream:
        turn = super().stream(conn_options=conn_options)
        self.turns.append(turn)
        return turn


@dataclass
class SpeakingSession:
    session: AgentSession
    tts: ObservedServeTTS
    speaker: PlayoutAudioOutput
    timed: RecordingTextOutput  # what reached the transcript from ServeTTS (word timings)
    shown: RecordingTextOutput  # what the synchronizer released as the audio played


@pytest.fixture
async def speaking(serve_url: str, request: pytest.FixtureRequest) -> AsyncIterator[SpeakingSession]:
    llm: ScriptedLLM = request.param
    tts = ObservedServeTTS(ServeTTSOptions(transport="websocket", base_url=serve_url, model="flite"))
    session = build_session(llm=llm, tts=tts)  # the worker's own session factory
    speaker = PlayoutAudioOutput()
    shown = RecordingTextOutput("shown")
    sync = TranscriptSynchronizer(next_in_chain_audio=speaker, next_in_chain_text=shown)
    timed = RecordingTextOutput("timed", next_in_chain=sync.text_output)
    session.output.audio = sync.audio_output  # as RoomIO wires a room's track and transcription
    session.output.transcription = timed
    await session.start(VoiceAgent("You are a test agent."))
    try:
        yield SpeakingSession(session, tts, speaker, timed, shown)
    finally:
        await session.aclose()
        await sync.aclose()
        await speaker.aclose()
        await tts.aclose()


def _timed_words(pieces: list[Any]) -> list[TimedString]:
    return [p for p in pieces if isinstance(p, TimedString) and p.strip()]


def _shown_words(pieces: list[str]) -> list[str]:
    return words_of("".join(pieces))


@pytest.mark.parametrize("speaking", [ScriptedLLM([" ".join(SENTENCES)])], indirect=True)
async def test_a_turn_is_spoken_through_servetts_with_aligned_transcript(speaking: SpeakingSession) -> None:
    handle = speaking.session.generate_reply(user_input="Tell me three things.")
    await asyncio.wait_for(handle.wait_for_playout(), 60)
    assert not handle.interrupted and handle.exception() is None

    [turn] = speaking.tts.turns
    assert turn.cancel_acknowledged is None  # ended normally: nothing to cancel
    [segment] = speaking.speaker.segments
    assert {(f.sample_rate, f.num_channels) for f in segment.frames} == {(24000, 1)}
    assert segment.finished is not None and not segment.finished.interrupted
    # Pipelined: the turn's audio is the sentences' own audio back to back, nothing added between.
    alone = [sum(ev.frame.duration for ev in [e async for e in speaking.tts.synthesize(s, conn_options=NO_RETRY)])
             for s in SENTENCES]
    assert segment.duration == pytest.approx(sum(alone), rel=0.03)

    # The transcript came from ServeTTS's word timings (TimedStrings), not from the LLM's text.
    [timed] = speaking.timed.texts
    words = _timed_words(timed)
    assert [w.strip() for w in words] == words_of(" ".join(SENTENCES))
    spans = [(w.start_time, w.end_time) for w in words]
    assert all(isinstance(t, int | float) for span in spans for t in span)  # every word has its times
    starts = [cast(float, start) for start, _ in spans]
    assert starts == sorted(starts) and cast(float, spans[-1][1]) <= segment.duration + 0.05
    [shown] = speaking.shown.texts
    assert _shown_words(shown) == words_of(" ".join(SENTENCES))
    message = speaking.session.history.messages()[-1]
    assert message.role == "assistant" and words_of(message.text_content or "") == words_of(" ".join(SENTENCES))


@pytest.mark.parametrize("speaking", [ScriptedLLM([LONG, AFTER], token_delay_s=0.05)], indirect=True)
async def test_barge_in_cancels_the_turn_on_the_server_and_the_session_goes_on(
    speaking: SpeakingSession, serve_url: str
) -> None:
    handle = speaking.session.generate_reply(user_input="Tell me a long story.")
    await asyncio.wait_for(speaking.speaker.first_frame.wait(), 60)  # the answer starts playing
    async with asyncio.timeout(30):  # the user hears (is shown) its first words, the LLM still writing...
        while len(_shown_words(speaking.shown.segments[-1])) < 3:  # noqa: ASYNC110 (a list, no event)
            await asyncio.sleep(0.02)
    await asyncio.wait_for(speaking.session.interrupt(), 30)  # ...and talks over it
    await asyncio.wait_for(handle.wait_for_playout(), 30)
    assert handle.interrupted

    [turn] = speaking.tts.turns
    async with asyncio.timeout(10):  # the stream closes in livekit's tts task, after the interruption
        while turn.cancel_acknowledged is None:  # noqa: ASYNC110 (a plain attribute, no event to wait on)
            await asyncio.sleep(0.05)
    assert turn.cancel_acknowledged is True  # the plugin sent `cancel`, the server said `cancelled`
    assert set((await settled(serve_url)).values()) == {0}  # no engine is still working for it
    [interrupted] = speaking.speaker.segments
    heard = len(interrupted.frames)
    assert interrupted.finished is not None and interrupted.finished.interrupted
    assert 0 < interrupted.finished.playback_position < interrupted.duration + 1e-6
    # The transcript stops where the audio stopped: a prefix of the answer, kept in the history
    # as the interrupted assistant message (what the LLM will believe it said; livekit counts a
    # word there once its pacing delay has passed, so it may lag the shown words by one).
    shown_words = _shown_words(speaking.shown.texts[0])
    assert 3 <= len(shown_words) < len(words_of(LONG)) and shown_words == words_of(LONG)[: len(shown_words)]
    message = speaking.session.history.messages()[-1]
    assert message.role == "assistant" and message.interrupted
    said = words_of(message.text_content or "")
    assert said and said == shown_words[: len(said)]

    # The session stays usable: the next turn is spoken in full, by a new turn of the same TTS.
    second = speaking.session.generate_reply(user_input="Are you still there?")
    await asyncio.wait_for(second.wait_for_playout(), 60)
    assert not second.interrupted and second.exception() is None
    assert len(speaking.tts.turns) == 2 and speaking.tts.turns[1].cancel_acknowledged is None
    first, after = speaking.speaker.segments
    assert len(first.frames) == heard  # nothing of the cancelled turn arrived later
    assert after.finished is not None and not after.finished.interrupted and after.duration > 0.5
    assert [w.strip() for w in _timed_words(speaking.timed.texts[-1])] == words_of(AFTER)
    assert _shown_words(speaking.shown.texts[-1]) == words_of(AFTER)
    assert set((await settled(serve_url)).values()) == {0}
