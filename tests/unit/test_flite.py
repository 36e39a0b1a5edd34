"""The Flite engine with the real flite library and binary: audio, streaming, safety, checks."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from serve_app.core.audio import pcm_duration, rms_level
from serve_app.core.timing import WordMark
from serve_app.engines import registry
from serve_app.engines.base import EngineUnavailable, InvalidInput
from serve_app.engines.flite import LATER_PIECE_SECONDS, FliteBinary, FliteEngine, FliteHelpers, FliteLibrary, _Mailbox
from serve_app.engines.flite_worker import FliteWorkers
from serve_app.ingress import hosted_engines_problem
from serve_app.router import FallbackRouter, RouterConfig, SpeechRequest
from serve_app.router.clients import LocalEngineClient

LONG = "This sentence is long enough that flite streams it out in several pieces as it goes along."


async def collect(engine: FliteEngine, text: str, voice: str | None = None, speed: float = 1.0) -> list[bytes]:
    """The audio chunks (word marks left out)."""
    return [chunk async for chunk in engine.synthesize(text, voice, speed=speed) if isinstance(chunk, bytes)]


@pytest.mark.parametrize("backend", ["library", "binary"])
async def test_backends_speak_the_same_audio(backend: str) -> None:
    engine = FliteEngine(backend=backend)
    assert (await engine.check()).available
    pcm = b"".join(await collect(engine, "Hello world, how are you today?"))
    assert 1.0 < pcm_duration(len(pcm), engine.sample_rate) < 4.0
    assert rms_level(pcm) > 500


async def test_library_streams_a_sentence_in_pieces() -> None:
    chunks = await collect(FliteEngine(backend="library"), LONG)
    assert len(chunks) >= 2
    assert all(len(c) % 2 == 0 for c in chunks)


def test_after_its_first_chunk_flite_calls_back_about_once_a_second_of_audio() -> None:
    """Each call back from the synthesis takes the GIL (in the ingress: from the event loop), so
    there are few: the first small one for the first byte, then one per second of audio."""
    library = FliteLibrary()
    calls: list[int] = []
    library._synthesize_blocking(LONG, "slt", 1.0, lambda rate, pcm: calls.append(len(pcm) // 2), threading.Event())
    seconds = sum(calls) / 16000
    assert seconds > 4.0
    assert calls[0] <= 2048 + 80  # the first chunk stays small (one frame past the minimum)
    assert len(calls) <= 2 + int(seconds)  # at 2048 samples each, it would be ~35


async def test_speed_and_8khz_voice_are_normalised() -> None:
    engine = FliteEngine()
    normal = b"".join(await collect(engine, LONG))
    fast = b"".join(await collect(engine, LONG, speed=2.0))
    assert len(fast) < 0.7 * len(normal)
    kal = b"".join(await collect(engine, "Testing the eight kilohertz voice.", "kal"))
    assert 1.0 < pcm_duration(len(kal), 16000) < 4.0  # resampled to the engine's 16 kHz


async def test_voices_map_openai_names_and_reject_unknown() -> None:
    engine = FliteEngine(catalogue=registry.catalogue())  # the whole catalogue, as the registry builds it
    assert engine.resolve_voice("onyx") == "rms"
    assert engine.resolve_voice("en-US-AriaNeural") == "slt"  # another engine's female voice
    assert engine.resolve_voice(None) == "slt"
    with pytest.raises(InvalidInput):
        await collect(engine, "hi", "not-a-voice")
    with pytest.raises(InvalidInput):
        await collect(engine, "hi", speed=10.0)


def test_binary_argv_keeps_text_as_one_argument() -> None:
    argv = FliteBinary("flite").argv("-voice kal; rm -rf /", "slt", 1.0)
    assert argv[-2:] == ["-t", "-voice kal; rm -rf /"]
    assert argv[0].endswith("flite")


async def test_abandoning_a_stream_does_not_wedge_the_engine() -> None:
    engine = FliteEngine(backend="library")
    stream = engine.synthesize(LONG * 3)
    started = await stream.__anext__()
    assert started == b""  # the synthesis holds libflite's lock: its work has begun
    first = await stream.__anext__()
    assert first  # a word mark (they come first) or audio
    await stream.aclose()
    library = engine._backend
    assert isinstance(library, FliteLibrary)
    # Stopped, not left to the garbage collector: the synthesis ends at its next audio callback by
    # itself, with nobody reading it (the caller did not wait for that to move on).
    for _ in range(500):
        if not library.busy:
            break
        await asyncio.sleep(0.01)
    assert not library.busy
    again = b"".join(await collect(engine, "Still working."))
    assert len(again) > 0


async def test_abandoning_a_stream_a_helper_speaks_frees_the_helper_before_close_returns() -> None:
    engine = FliteEngine(backend="library", overflow_processes=1)
    assert engine._helpers is not None
    workers = engine._helpers.workers
    try:
        held = engine.synthesize(LONG * 30)  # holds libflite in-process
        assert await held.__anext__() == b""
        spoken = engine.synthesize(LONG * 3)  # so a helper speaks this one
        assert await spoken.__anext__() == b"" and await spoken.__anext__()
        assert workers.busy == 1
        await spoken.aclose()
        # Freed now, not when the garbage collector gets to it: the helper stops the sentence where
        # it is and is free for the next request, which waits the milliseconds that takes.
        assert workers.free and not workers._calls
        await asyncio.gather(*workers._draining)
        assert workers.busy == 0 and len(workers._idle) == 1
        await held.aclose()
    finally:
        workers.close()


async def test_a_request_queued_behind_another_says_when_its_work_begins() -> None:
    """The start marker comes when libflite's lock is this request's, not when it was asked: the
    router counts time before it as queueing (busy), not as the engine's time to first byte."""
    engine = FliteEngine(backend="library")
    first = engine.synthesize(LONG * 4)
    assert await first.__anext__() == b""  # holds the lock now
    second = engine.synthesize("Queued behind the first one.")
    waiting = asyncio.ensure_future(second.__anext__())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no start marker while the first synthesis holds the lock
    rest = [chunk async for chunk in first]
    assert any(isinstance(c, bytes) and c for c in rest)
    assert await asyncio.wait_for(waiting, 10) == b""
    audio = [chunk async for chunk in second if isinstance(chunk, bytes)]
    assert b"".join(audio)


async def test_missing_flite_is_reported_not_raised() -> None:
    engine = FliteEngine(binary="/nonexistent/flite", backend="binary")
    check = await engine.check()
    assert not check.available and "not found" in (check.reason or "")
    with pytest.raises(EngineUnavailable):
        await collect(engine, "hello")


async def test_while_libflite_is_busy_a_second_request_is_spoken_by_a_helper_process() -> None:
    engine = FliteEngine(backend="library", overflow_processes=1)
    try:
        text = "Spoken by a helper meanwhile."
        alone = [c async for c in engine.synthesize(text)]  # libflite is free: spoken in-process
        first = engine.synthesize(LONG * 30)  # seconds of work for libflite
        assert await first.__anext__() == b""  # libflite is this one's now
        second = [c async for c in engine.synthesize(text)]
        assert engine._helpers is not None and engine._helpers.workers._started == 1  # a helper spoke it
        check = await engine.check()
        assert check.details and check.details["overflow_processes"] == {"limit": 1, "busy": 0}
        # The helper runs the same libflite: the same words and as much audio.
        words = [m.word for m in second if isinstance(m, WordMark)]
        assert words and words == [m.word for m in alone if isinstance(m, WordMark)]
        pcm = b"".join(c for c in second if isinstance(c, bytes))
        assert len(pcm) == len(b"".join(c for c in alone if isinstance(c, bytes)))
        rest = [c async for c in first]
        assert any(isinstance(c, WordMark) for c in rest)
    finally:
        assert engine._helpers is not None
        engine.close()


async def spoken(workers: FliteWorkers, text: str) -> tuple[bytes, list[WordMark], int]:
    """A helper's whole answer: its audio, its word marks and how many audio pieces it came in."""
    pieces = [piece async for piece in workers.stream(text, "slt", 1.0)]
    audio = [piece for piece in pieces if isinstance(piece, tuple)]
    assert audio and {rate for rate, _ in audio} == {16000}
    return b"".join(pcm for _, pcm in audio), [p for p in pieces if isinstance(p, WordMark)], len(audio)


async def test_a_helper_whose_caller_left_stops_and_is_reused() -> None:
    """A barge-in stops the helper's synthesis where it is and keeps the helper: no new start."""
    workers = FliteWorkers(1)
    try:
        await spoken(workers, "Warm.")
        (helper,) = workers._idle
        audio = asyncio.Event()

        async def listen() -> None:
            async for piece in workers.stream(LONG * 60, "slt", 1.0):  # a minute of speech or more
                if isinstance(piece, tuple):
                    audio.set()

        first = asyncio.ensure_future(listen())
        await audio.wait()  # the helper is busy with it
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        pcm, marks, _ = await spoken(workers, "Still speaking.")
        assert len(pcm) > 0 and [m.word for m in marks] == ["still", "speaking"]  # nothing of the old one
        assert workers._started == 1 and workers.busy == 0 and workers._idle == [helper]
        assert helper.proc.poll() is None
    finally:
        workers.close()


async def test_a_caller_leaving_between_pieces_leaves_the_helper_reusable() -> None:
    """Closed at a `yield` (what a client's barge-in does to the engine's stream), mid-sentence."""
    workers = FliteWorkers(1)
    try:
        stream = workers.stream(LONG * 10, "slt", 1.0)
        while not isinstance(await stream.__anext__(), tuple):
            pass  # the word marks, then the first piece of audio
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.gather(*workers._draining)  # the helper finishing the cancelled request
        pcm, marks, _ = await spoken(workers, "Next answer.")
        assert len(pcm) > 0 and [m.word for m in marks] == ["next", "answer"]
        assert workers._started == 1 and workers.busy == 0
    finally:
        workers.close()


async def test_a_helper_that_does_not_finish_a_cancelled_request_is_ended_and_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    from serve_app.engines import flite_worker

    monkeypatch.setattr(flite_worker, "DRAIN_TIMEOUT_S", 0.3)
    workers = FliteWorkers(1)
    try:
        await spoken(workers, "Warm.")
        (helper,) = workers._idle  # the one that speaks next
        stream = workers.stream(LONG * 10, "slt", 1.0)
        while not isinstance(await stream.__anext__(), tuple):
            pass
        os.kill(helper.proc.pid, signal.SIGSTOP)  # a helper that hangs: it will never answer the cancel
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.gather(*workers._draining)
        assert helper.proc.wait(5) is not None  # ended, not left stopped
        pcm, marks, _ = await spoken(workers, "A new helper.")
        assert len(pcm) > 0 and [m.word for m in marks] == ["a", "new", "helper"]
        assert workers._started == 2 and workers._live == 1
    finally:
        workers.close()


async def test_a_cancel_that_comes_after_its_request_ended_stops_nothing() -> None:
    """The helper's own protocol: a late cancel is for a call that is over, so the next call runs whole."""
    workers = FliteWorkers(1)
    try:
        whole, _, _ = await spoken(workers, "Exactly the same sentence.")
        (helper,) = workers._idle
        helper.send(("cancel", 0))  # call 0 ended above
        again, marks, _ = await spoken(workers, "Exactly the same sentence.")
        # Whole: as long as before, every word (flite's samples differ in their last bits run to run).
        assert len(again) == len(whole) and [m.word for m in marks] == ["exactly", "the", "same", "sentence"]
    finally:
        workers.close()


async def test_a_caller_cancelled_while_its_helper_starts_leaves_the_helper_to_the_pool() -> None:
    workers = FliteWorkers(1)
    try:
        waiting = asyncio.ensure_future(spoken(workers, "Never spoken."))
        await asyncio.sleep(0)  # it is starting the helper
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for _ in range(500):  # the start goes on without its caller
            if workers._idle:
                break
            await asyncio.sleep(0.01)
        (helper,) = workers._idle
        assert helper.proc.poll() is None and workers._started == 1
        pcm, _, _ = await spoken(workers, "Spoken by the kept helper.")
        assert len(pcm) > 0 and workers._started == 1
    finally:
        workers.close()


async def test_a_helper_streams_its_first_piece_before_the_sentence_is_done() -> None:
    workers = FliteWorkers(1)
    try:
        stream = workers.stream(LONG * 3, "slt", 1.0)
        marks = []
        while isinstance(piece := await stream.__anext__(), WordMark):
            marks.append(piece)  # the word timings come first, as from the library in-process
        assert marks and isinstance(piece, tuple)
        first_piece = len(piece[1])
        rest = [p async for p in stream]
        total = first_piece + sum(len(p[1]) for p in rest if isinstance(p, tuple))
        assert first_piece < total / 4 and rest  # a first piece, then the rest in larger pieces
        assert workers.busy == 0 and len(workers._idle) == 1  # the helper is reused
    finally:
        workers.close()


def test_the_binary_speaks_under_uvloop_as_in_a_serve_replica() -> None:
    """uvloop gives children socket pairs, and flite cannot open a socket as `/dev/stdout`."""
    import uvloop

    async def speak() -> bytes:
        pieces = [p async for p in FliteBinary("flite").stream("Hello from a replica.", "slt", 1.0)]
        return b"".join(p[1] for p in pieces if isinstance(p, tuple))

    assert len(uvloop.run(speak())) > 16000


async def test_a_hung_libflite_fails_the_health_check_until_it_moves() -> None:
    """Requests behind a stuck synthesis never start (the router only sees them busy): the health
    check is what gets such a replica replaced."""
    import threading

    engine = FliteEngine(backend="library", hang_timeout_s=0.2)
    library = engine._backend
    assert isinstance(library, FliteLibrary)
    release = threading.Event()
    real = library._text_to_wave

    def stuck(text: bytes, voice: object) -> object:
        release.wait(10)  # a call into libflite that does not return, until the test lets it
        return real(text, voice)

    library._text_to_wave = stuck
    stream = engine.synthesize("Stuck for a while.")
    try:
        assert await stream.__anext__() == b""  # it started, and holds libflite
        assert await engine.health() is None  # not long enough yet
        await asyncio.sleep(0.3)
        assert "hung" in (await engine.health() or "")
        # Hosted in an ingress replica, the same fault fails that replica's health check.
        assert "flite: " in (await hosted_engines_problem({"flite": engine}) or "")
        release.set()
        assert b"".join([c async for c in stream if isinstance(c, bytes)])
        assert await engine.health() is None
        assert await hosted_engines_problem({"flite": engine}) is None
    finally:
        release.set()
        library._text_to_wave = real


async def test_a_helper_that_dies_before_answering_is_replaced_and_the_sentence_still_spoken() -> None:
    workers = FliteWorkers(1)
    try:
        await spoken(workers, "Warm.")
        (helper,) = workers._idle
        helper.proc.kill()  # the idle helper dies (as one crashed at start did)
        helper.proc.wait()
        pcm, marks, _ = await spoken(workers, "Spoken all the same.")
        assert len(pcm) > 0 and [m.word for m in marks] == ["spoken", "all", "the", "same"]
        assert workers._started == 2 and workers.busy == 0
    finally:
        workers.close()


def test_helpers_start_and_speak_under_uvloop_as_in_a_serve_replica() -> None:
    import uvloop

    async def speak() -> int:
        workers = FliteWorkers(2)
        try:
            results = await asyncio.gather(*(spoken(workers, "From a helper.") for _ in range(2)))
            return sum(len(pcm) for pcm, _, _ in results)
        finally:
            workers.close()

    assert uvloop.run(speak()) > 16000


@pytest.mark.parametrize("spoken_by", ["library", "helper"])
async def test_a_sentence_reaches_a_24khz_caller_in_two_chunks_at_most(spoken_by: str) -> None:
    # Every chunk is a message through every layer up to the client (middlewares, a socket write,
    # HAProxy, the client's parser): a sentence goes as its first piece (time to first byte) and
    # the rest. The end of a synthesis travels with its last piece, so the resampler's held-back
    # tail joins that chunk instead of following as a chunk of its own.
    engine = FliteEngine(backend="library", overflow_processes=1)
    router = FallbackRouter({"flite": LocalEngineClient(engine)}, RouterConfig())
    busy = engine.synthesize(LONG * 30) if spoken_by == "helper" else None
    try:
        if busy is not None:
            assert await busy.__anext__() == b""  # libflite is taken: a helper speaks the sentence
        sentence = "The quick brown fox jumps over the lazy dog near the quiet river bank."
        request = SpeechRequest(sentence, sample_rate=24000, normalize=False)
        chunks = [chunk.pcm async for chunk in router.synthesize(request) if chunk.pcm]
        assert 1 <= len(chunks) <= 2
        assert 3.0 < pcm_duration(sum(map(len, chunks)), 24000) < LATER_PIECE_SECONDS
        helpers = engine._helpers
        # Who spoke it: the helpers' calls so far (they are started at the first request either way).
        assert helpers is not None and next(helpers.workers._call_ids) == (1 if spoken_by == "helper" else 0)
    finally:
        if busy is not None:
            await busy.aclose()  # type: ignore[attr-defined]
        await router.aclose()
        assert engine._helpers is not None
        engine.close()


async def test_what_a_synthesis_thread_sends_while_the_loop_is_busy_arrives_in_one_wake_up() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    mailbox = _Mailbox(loop, queue)
    wakes = 0
    original = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any) -> Any:
        nonlocal wakes
        wakes += callback == mailbox._deliver
        return original(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign,assignment]
    try:
        # The loop is blocked (the thread is joined without awaiting) while the thread sends, as it is
        # when busy with other streams: the sends wait for one delivery.
        def sends() -> None:
            mailbox.send("a")
            mailbox.send("b", "c")

        sender = threading.Thread(target=sends)
        sender.start()
        sender.join()
        assert queue.empty() and wakes == 1
        await asyncio.sleep(0)  # the loop runs: one delivery, in order
        assert [queue.get_nowait() for _ in range(3)] == ["a", "b", "c"]
        sender = threading.Thread(target=mailbox.send, args=("d",))
        sender.start()
        sender.join()
        await asyncio.sleep(0)
        assert queue.get_nowait() == "d" and wakes == 2  # the earlier items were taken: a new wake-up
    finally:
        del loop.call_soon_threadsafe


async def test_the_first_request_starts_every_helper_ahead_of_need() -> None:
    engine = FliteEngine(backend="library", overflow_processes=2)
    try:
        assert engine._helpers is not None
        workers = engine._helpers.workers
        assert workers._started == 0  # nothing runs before the engine is used
        pieces = [c async for c in engine.synthesize("The first request.")]  # spoken in-process
        assert any(isinstance(c, bytes) and c for c in pieces)
        assert workers._filling is not None
        await workers._filling
        assert workers._started == 2 and len(workers._idle) == 2  # loaded before any burst needs them
        # A burst now finds them idle: none is started for it, and none is left over afterwards.
        await asyncio.gather(*(collect(engine, f"Burst sentence number {n}.") for n in range(4)))
        assert workers._started == 2 and len(workers._idle) == 2 and workers.busy == 0
    finally:
        assert engine._helpers is not None
        engine.close()


async def test_helpers_never_outnumber_their_limit_when_requests_race_the_prestart() -> None:
    workers = FliteWorkers(1)
    try:
        workers.prestart()  # starting its one helper ...
        spoken_now = await spoken(workers, "Asked while the helper was starting.")  # ... and this starts its own
        assert spoken_now[0]
        assert workers._filling is not None
        await workers._filling
        assert len(workers._idle) == 1 and workers.busy == 0  # the extra one was ended, not kept
    finally:
        workers.close()


async def test_a_helper_backend_says_started_only_once_a_helper_has_the_request() -> None:
    # Starting a helper is waiting (busy, never a strike), not the engine's first-byte time.
    workers = FliteWorkers(1)
    try:
        stream = FliteHelpers(workers).stream("Hello from a new helper.", "slt", 1.0)
        assert await stream.__anext__() == b""
        assert workers._started == 1  # the helper process was running before the start was said
        rest = [piece async for piece in stream]
        assert any(isinstance(piece, tuple) and piece[1] for piece in rest)
    finally:
        workers.close()
