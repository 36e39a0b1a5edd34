"""The router's word timings, mid-sentence resumption and streamed text, over fault-injecting engines.

The fault engines' audio encodes the text each was asked to speak (`tests.fakes.faulty`), so a test
can see that a failover resumed at the first unheard word (the next engine got only the rest of the
sentence) instead of saying the sentence again. No assertion depends on wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.core.timing import WordMark
from serve_app.router import AudioChunk, FallbackRouter, RouterConfig, Sentence, SpeechRequest
from serve_app.router.clients import LocalEngineClient
from tests.fakes.faulty import SAMPLE_RATE, FaultPlan, FaultyEngine, LocalControl, decode_runs, token_for
from tests.support import eventually

CHAIN = ("zonos", "edge", "flite")


class Rig:
    def __init__(self, **config: object) -> None:
        self.controls = {name: LocalControl(FaultPlan(code=i)) for i, name in enumerate(CHAIN)}
        clients = {name: LocalEngineClient(FaultyEngine(name, self.controls[name])) for name in CHAIN}
        defaults: dict[str, object] = {"ttfb_timeout_s": 0.5, "stall_timeout_s": 0.5, "cooldown_s": 5.0}
        self.router = FallbackRouter(clients, RouterConfig(**{**defaults, **config}))  # type: ignore[arg-type]

    def plan(self, name: str, **plan: object) -> None:
        plan.setdefault("code", CHAIN.index(name))
        self.controls[name].set(FaultPlan(**plan))  # type: ignore[arg-type]

    async def chunks(self, text: str, **kwargs: object) -> list[AudioChunk]:
        request = SpeechRequest(text, sample_rate=SAMPLE_RATE, timestamps=True, normalize=False, **kwargs)  # type: ignore[arg-type]
        return [chunk async for chunk in self.router.synthesize(request)]

    async def in_flight(self) -> list[int]:
        return [e["in_flight"] for e in await self.router.engines_status()]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    yield made
    await made.router.aclose()


def words_of(chunks: list[AudioChunk]) -> list[WordMark]:
    return [w for c in chunks for w in c.words]


def assert_monotonic(words: list[WordMark], audio_s: float) -> None:
    starts = [w.start_s for w in words]
    assert starts == sorted(starts), starts
    assert all(w.start_s <= w.end_s <= audio_s + 1e-6 for w in words)


async def test_estimated_words_for_every_sentence_in_stream_time(rig: Rig) -> None:
    text = "One apple here. Two pears there. Three plums."
    chunks = await rig.chunks(text)
    audio_s = sum(len(c.pcm) for c in chunks) / (2 * SAMPLE_RATE)
    words = words_of(chunks)
    assert [w.word for w in words] == ["One", "apple", "here", "Two", "pears", "there", "Three", "plums"]
    assert_monotonic(words, audio_s)
    assert words[3].start_s >= 0.3 - 1e-6  # the second sentence starts after the first one's audio
    assert chunks[0].pcm  # the first chunk is always audio


async def test_exact_marks_pass_through_shifted_by_earlier_sentences(rig: Rig) -> None:
    rig.plan("zonos", word_marks=True)
    chunks = await rig.chunks("Alpha beta gamma. Delta epsilon.")
    words = words_of(chunks)
    assert [(w.word, w.start_s) for w in words] == [
        ("Alpha", 0.0), ("beta", 0.1), ("gamma", 0.2), ("Delta", 0.3), ("epsilon", 0.45),
    ]
    assert chunks[0].pcm and chunks[-1].sentence == 1


async def test_pieces_that_queued_while_the_caller_was_busy_go_out_as_one(rig: Rig) -> None:
    rig.plan("zonos", word_marks=True)  # three 100 ms pieces, a mark before each word's piece
    text = "Alpha beta gamma."
    request = SpeechRequest(text, sample_rate=SAMPLE_RATE, timestamps=True, normalize=False)
    got: list[AudioChunk] = []
    async for chunk in rig.router.synthesize(request):
        got.append(chunk)
        if len(got) == 1:  # a caller busy sending the first piece while the engine finishes
            await eventually(lambda: (text, "done") in rig.controls["zonos"].log)
    piece = 2 * SAMPLE_RATE // 10
    assert [len(c.pcm) for c in got if c.pcm] == [piece, 2 * piece]  # the first at once, the rest together
    assert [w.word for w in words_of(got)] == ["Alpha", "beta", "gamma"]
    assert_monotonic(words_of(got), 3 * piece / (2 * SAMPLE_RATE))


async def test_mid_sentence_failover_resumes_at_the_first_unheard_word(rig: Rig) -> None:
    rig.plan("zonos", mode="partial", word_marks=True)  # fails after its first 100 ms chunk
    rig.plan("edge", word_marks=True)
    text = "Ann bakes fresh bread daily."
    chunks = await rig.chunks(text)
    runs = decode_runs(b"".join(c.pcm for c in chunks))
    # Zonos said "Ann" (0-60 ms) and part of "bakes"; Edge goes on from "bakes", not from "Ann".
    assert [(r.token, r.code) for r in runs] == [(token_for(text), 0), (token_for("bakes fresh bread daily."), 1)]
    assert rig.controls["edge"].log[0][0] == "bakes fresh bread daily."
    words = words_of(chunks)
    assert [w.word for w in words] == ["Ann", "bakes", "fresh", "bread", "daily"]  # each word once
    assert_monotonic(words, sum(len(c.pcm) for c in chunks) / (2 * SAMPLE_RATE))
    assert words[1].start_s >= 0.1 - 1e-6  # Edge's words come after the audio heard from Zonos


async def test_without_marks_the_sentence_is_said_again_and_times_stay_monotonic(rig: Rig) -> None:
    rig.plan("zonos", mode="partial")
    text = "First one here. Second one there."
    chunks = await rig.chunks(text)
    runs = decode_runs(b"".join(c.pcm for c in chunks))
    assert runs[0].code == 0 and runs[1].token == token_for("First one here.") and runs[1].code == 1
    words = words_of(chunks)
    assert [w.word for w in words] == ["First", "one", "here", "Second", "one", "there"]
    assert_monotonic(words, sum(len(c.pcm) for c in chunks) / (2 * SAMPLE_RATE))
    assert words[0].start_s >= 0.1 - 1e-6  # after the heard part of the failed attempt


async def test_instructions_speed_cue_reaches_every_engine_within_its_range() -> None:
    seen: list[float] = []

    class Recording(FaultyEngine):
        async def synthesize(self, text: str, voice: str | None = None, *, language: str | None = None,
                             speed: float = 1.0) -> AsyncIterator[bytes | WordMark]:
            seen.append(speed)
            async for piece in super().synthesize(text, voice, language=language, speed=speed):
                yield piece

    router = FallbackRouter({"flite": LocalEngineClient(Recording("flite"))}, RouterConfig(speed_ranges={
        "flite": (0.5, 2.0)}))
    try:
        await router.speak(SpeechRequest("Hello.", instructions="Please speak slowly.", sample_rate=SAMPLE_RATE))
        await router.speak(SpeechRequest("Hello.", speed=2.0, instructions="very quickly", sample_rate=SAMPLE_RATE))
    finally:
        await router.aclose()
    assert seen[0] < 1.0 and seen[1] == 2.0  # a cue never pushes an engine past its range


async def sentences_from(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (item := await queue.get()) is not None:
        yield item


async def test_stream_speaks_sentences_as_they_arrive_in_order(rig: Rig) -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    stream = rig.router.stream(SpeechRequest("", sample_rate=SAMPLE_RATE, normalize=False), sentences_from(queue))
    queue.put_nowait("Early bird.")
    first = await anext(stream)  # audio of the first sentence before the second exists
    assert decode_runs(first.pcm)[0].token == token_for("Early bird.")
    for text in ("Second part.", "Third part."):
        queue.put_nowait(text)
    queue.put_nowait(None)
    rest = [chunk async for chunk in stream]
    tokens = [r.token for r in decode_runs(first.pcm + b"".join(c.pcm for c in rest))]
    assert tokens == [token_for(t) for t in ("Early bird.", "Second part.", "Third part.")]
    assert [c.sentence for c in rest][-1] == 2


async def test_stream_speaks_a_sentence_with_its_spoken_form_as_given(rig: Rig) -> None:
    """A `Sentence` (the realtime socket normalised it while it arrived) is spoken as handed over,
    although the request asks for normalisation, and its words are the spoken ones; a plain `str`
    sentence can follow in the same stream."""

    async def items() -> AsyncIterator[str | Sentence]:
        yield Sentence("It costs $5.", "It costs some money.")
        yield "Plain words here."

    request = SpeechRequest("", sample_rate=SAMPLE_RATE, normalize=True, timestamps=True)
    chunks = [chunk async for chunk in rig.router.stream(request, items())]
    tokens = [r.token for r in decode_runs(b"".join(c.pcm for c in chunks))]
    assert tokens == [token_for("It costs some money."), token_for("Plain words here.")]
    assert [w.word for w in words_of(chunks)][:4] == ["It", "costs", "some", "money"]


async def test_closing_a_stream_cancels_every_sentence_in_flight(rig: Rig) -> None:
    rig.plan("zonos", chunk_delay_s=0.05, sentence_ms=2000)  # slow sentences: several in flight at once
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    for i in range(4):
        queue.put_nowait(f"Sentence number {'abcd'[i]} is long.")
    stream = rig.router.stream(SpeechRequest("", sample_rate=SAMPLE_RATE, normalize=False), sentences_from(queue))
    await anext(stream)
    assert (await rig.in_flight())[0] == 3  # the current sentence and two ahead (lookahead 2)
    await stream.aclose()  # a barge-in
    assert await rig.in_flight() == [0, 0, 0]
    log = rig.controls["zonos"].log
    assert [e for _, e in log].count("done") == 0  # nothing was finished after the cancel
    assert rig.router.breaker("zonos").total_strikes == 0  # cancelled work is no strike


async def test_a_sentence_source_that_fails_ends_the_stream_with_its_error(rig: Rig) -> None:
    async def broken() -> AsyncIterator[str]:
        yield "Fine start."
        raise RuntimeError("source broke")

    stream = rig.router.stream(SpeechRequest("", sample_rate=SAMPLE_RATE, normalize=False), broken())
    with pytest.raises(RuntimeError, match="source broke"):
        async for _ in stream:
            pass
    assert await rig.in_flight() == [0, 0, 0]


async def test_a_cancelled_stream_cancels_look_ahead_sentences_at_any_moment_of_their_start() -> None:
    """Barge-in: cancelling the reader right after its first audio (when look-ahead sentences are
    just starting) must cancel those too, whichever step of their start they are at. Python 3.11's
    `wait_for` swallowed a cancel that came as its inner call finished, and the sentence was then
    spoken whole, its engine busy for nothing."""
    from serve_app.engines.flite import FliteEngine

    finished: list[str] = []

    class Recording(FliteEngine):
        async def synthesize(  # type: ignore[override]
            self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0,
            priority: int = 0,
        ) -> AsyncIterator[bytes]:
            yield b"\0\0" * 800
            for _ in range(20):  # the rest comes over several loop turns
                await asyncio.sleep(0)
                yield b"\0\0" * 800
            finished.append(text)

    router = FallbackRouter({"flite": LocalEngineClient(Recording(backend="binary"))}, RouterConfig())
    try:
        for turns in range(8):  # cancel 0..7 loop turns after the first audio: every start step
            first = asyncio.Event()

            async def read(first: asyncio.Event = first) -> None:
                async def sentences() -> AsyncIterator[str]:
                    for n in range(4):
                        yield f"Sentence number {n} of the answer."
                    await asyncio.Event().wait()

                request = SpeechRequest("x", sample_rate=16000, normalize=False)
                async for chunk in router.stream(request, sentences()):
                    if chunk.pcm:
                        first.set()

            reader = asyncio.ensure_future(read())
            await first.wait()
            for _ in range(turns):
                await asyncio.sleep(0)
            reader.cancel()
            await asyncio.wait([reader])
            for _ in range(40):
                await asyncio.sleep(0)  # anything not cancelled would run to its end now
            assert finished == [], f"spoken whole after a cancel {turns} turns after the first audio"
    finally:
        await router.aclose()
