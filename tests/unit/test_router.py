"""FallbackRouter in-process over fault-injecting engines: strikes, breakers, recovery, streaming.

The engines emit one constant sample value per sentence and engine (`tests.fakes.faulty`), so
each test decodes the audio it got and checks that every sentence arrived, in order, in full.
Timeouts and cooldowns are a few hundred milliseconds; no test asserts on wall-clock timings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.core.breaker import BreakerState
from serve_app.core.errors import AllEnginesFailed, EnginesBusy, UnknownEngine
from serve_app.core.gate import PRIORITY_NEW, PRIORITY_PLAYING
from serve_app.engines.base import InvalidInput
from serve_app.router import FallbackRouter, RouterConfig, SpeechRequest
from serve_app.router.clients import LocalEngineClient, UnavailableEngineClient
from tests.fakes.faulty import (
    SAMPLE_RATE,
    FaultPlan,
    FaultyEngine,
    LocalControl,
    Run,
    assert_complete,
    decode_runs,
    full_samples,
    token_for,
)
from tests.support import eventually

CHAIN = ("zonos", "edge", "flite")
FULL = full_samples()


class Rig:
    """Three fault engines with their controls, and a router over them."""

    def __init__(self, **config: object) -> None:
        self.controls = {name: LocalControl(FaultPlan(code=i)) for i, name in enumerate(CHAIN)}
        clients = {name: LocalEngineClient(FaultyEngine(name, self.controls[name])) for name in CHAIN}
        defaults: dict[str, object] = {
            "cooldown_s": 0.2, "max_cooldown_s": 0.8, "ttfb_timeout_s": 0.3, "stall_timeout_s": 0.3,
            "admission_wait_s": 0.3,
        }
        self.router = FallbackRouter(clients, RouterConfig(**{**defaults, **config}))  # type: ignore[arg-type]

    def plan(self, name: str, **plan: object) -> None:
        plan.setdefault("code", CHAIN.index(name))
        self.controls[name].set(FaultPlan(**plan))  # type: ignore[arg-type]

    async def speak(self, text: str, **kwargs: object) -> list[Run]:
        # The fault engines encode the text they get: keep it as written (no spoken form) so the
        # test can find each sentence in the audio.
        kwargs.setdefault("normalize", False)
        pcm, _ = await self.router.speak(SpeechRequest(text, sample_rate=SAMPLE_RATE, **kwargs))  # type: ignore[arg-type]
        return decode_runs(pcm)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    yield made
    await made.router.aclose()


TEXT = "One apple. Two pears. Three plums. Four figs. Five limes."


async def test_healthy_primary_speaks_every_sentence_in_order(rig: Rig) -> None:
    runs = await rig.speak(TEXT)
    assert_complete(runs, TEXT)
    assert {r.code for r in runs} == {0}


async def test_three_strikes_open_the_breaker_then_the_engine_is_skipped(rig: Rig) -> None:
    rig.plan("zonos", mode="error")
    for i in range(3):
        runs = await rig.speak(f"Sentence number {i}.")
        assert [r.code for r in runs] == [1]  # edge spoke it
    assert rig.router.breaker("zonos").state is BreakerState.OPEN
    assert rig.controls["zonos"].calls() == 3
    runs = await rig.speak("After the breaker opened.")
    assert [r.code for r in runs] == [1]
    assert rig.controls["zonos"].calls() == 3  # skipped at no cost


async def test_background_probe_recovers_the_engine_without_user_traffic(rig: Rig) -> None:
    rig.plan("zonos", mode="error")
    for i in range(3):
        await rig.speak(f"Open it {i}.")
    rig.plan("zonos")
    await eventually(lambda: rig.router.breaker("zonos").state is BreakerState.CLOSED)
    assert rig.controls["zonos"].log[-1] == ("Probe.", "done")  # the fixed phrase, not user text
    runs = await rig.speak("Back on the primary.")
    assert [r.code for r in runs] == [0]


async def test_failed_probes_reopen_with_exponential_backoff(rig: Rig) -> None:
    rig.plan("zonos", mode="error")
    for i in range(3):
        await rig.speak(f"Open it {i}.")
    breaker = rig.router.breaker("zonos")
    await eventually(lambda: breaker.failed_probes >= 2)
    assert breaker.state is not BreakerState.CLOSED
    assert breaker.current_cooldown > rig.router.config.cooldown_s
    user_texts = {t for t, _ in rig.controls["zonos"].log if t != "Probe."}
    assert len(user_texts) == 3  # nothing but probes reached it after opening


@pytest.mark.parametrize(
    ("mode", "error"), [("hang", "FirstByteTimeout"), ("stall", "StallTimeout"), ("empty", "EmptyAudio")]
)
async def test_hang_stall_and_empty_audio_are_strikes(rig: Rig, mode: str, error: str) -> None:
    rig.plan("zonos", mode=mode)
    runs = await rig.speak("Something to say.")
    assert [r.code for r in runs][-1] == 1
    assert_complete(runs, "Something to say.")
    breaker = rig.router.breaker("zonos")
    assert breaker.strikes == 1
    assert breaker.last_error is not None and breaker.last_error.startswith(error)


async def test_an_engines_own_timeout_is_its_error_not_a_stall_of_ours(rig: Rig) -> None:
    rig.plan("zonos", mode="own_timeout")
    runs = await rig.speak("Something to say.")
    assert_complete(runs, "Something to say.")
    breaker = rig.router.breaker("zonos")
    assert breaker.strikes == 1
    assert (breaker.last_error or "").startswith("TimeoutError: injected")


async def test_failure_after_partial_audio_restarts_the_sentence_on_the_next_engine(rig: Rig) -> None:
    rig.plan("zonos", mode="partial")
    runs = await rig.speak(TEXT)
    assert_complete(runs, TEXT)
    first = [r for r in runs if r.token == token_for("One apple.")]
    assert [(r.code, r.samples < FULL) for r in first] == [(0, True), (1, False)]


async def test_request_avoids_an_engine_that_failed_one_of_its_sentences() -> None:
    rig = Rig(lookahead=0)  # sentences strictly in turn, so the order of attempts is known
    try:
        rig.plan("zonos", mode="error", fail_text="Two")
        runs = await rig.speak("One apple. Two pears. Three plums.")
        assert [r.code for r in runs] == [0, 1, 1]
        assert rig.router.breaker("zonos").state is BreakerState.CLOSED  # one strike only
        runs = await rig.speak("A new request.")
        assert [r.code for r in runs] == [0]
    finally:
        await rig.router.aclose()


async def test_caller_errors_are_never_strikes(rig: Rig) -> None:
    rig.plan("zonos", mode="invalid")
    for _ in range(5):
        with pytest.raises(InvalidInput):
            await rig.speak("Rejected text.")
    with pytest.raises(InvalidInput):
        await rig.speak("   ")
    with pytest.raises(UnknownEngine):
        await rig.speak("Hello.", engine="nope")
    breaker = rig.router.breaker("zonos")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.total_strikes == 0
    assert rig.controls["edge"].calls() == 0  # no fallback for the caller's mistake


async def test_all_engines_failing_raises_before_any_audio(rig: Rig) -> None:
    for name in CHAIN:
        rig.plan(name, mode="error")
    stream = rig.router.synthesize(SpeechRequest("Nobody can say this.", sample_rate=SAMPLE_RATE))
    with pytest.raises(AllEnginesFailed) as info:
        await anext(stream)
    assert "zonos" in str(info.value) and "flite" in str(info.value)


async def test_failure_after_audio_ends_the_stream_with_an_error(rig: Rig) -> None:
    for name in CHAIN:
        rig.plan(name, mode="error", fail_text="Doomed")
    received = bytearray()
    with pytest.raises(AllEnginesFailed):
        async for chunk in rig.router.synthesize(SpeechRequest("Fine start. Doomed end.", sample_rate=SAMPLE_RATE)):
            received.extend(chunk.pcm)
    assert [r.token for r in decode_runs(bytes(received))] == [token_for("Fine start.")]
    # Owed, so each engine got a second try before the answer ended.
    assert [rig.controls[n].calls("Doomed end.") for n in CHAIN] == [2, 2, 2]


async def test_an_engine_failing_a_playing_answers_sentence_once_gets_another_try() -> None:
    # The only engine (pinned) times out once on the second sentence, as a starved machine can make
    # it: the listener is hearing the first sentence, so the answer is owed and goes on.
    rig = Rig(lookahead=0)
    try:
        rig.plan("flite", mode="hang", fail_text="Two", times=1)
        runs = await rig.speak("One apple. Two pears. Three plums.", engine="flite")
        assert_complete(runs, "One apple. Two pears. Three plums.")
        assert {r.code for r in runs} == {2}
        assert rig.controls["flite"].calls("Two pears.") == 2
        breaker = rig.router.breaker("flite")
        assert breaker.state is BreakerState.CLOSED and breaker.strikes == 0  # the retry's success reset it
        assert (breaker.last_error or "").startswith("FirstByteTimeout")
    finally:
        await rig.router.aclose()


async def test_every_engine_failing_a_playing_answers_sentence_once_goes_round_the_chain_again() -> None:
    rig = Rig(lookahead=0)
    try:
        for name in CHAIN:
            rig.plan(name, mode="error", fail_text="Two", times=1)
        runs = await rig.speak("One apple. Two pears.")
        assert_complete(runs, "One apple. Two pears.")
        assert [r.code for r in runs] == [0, 0]  # the chain's first engine, on its second try
        assert [rig.controls[n].calls("Two pears.") for n in CHAIN] == [2, 1, 1]
    finally:
        await rig.router.aclose()


async def test_a_new_answers_first_sentence_gets_no_second_try(rig: Rig) -> None:
    # Nothing was heard: a 503 before the first byte loses nothing, and the client may retry.
    for name in CHAIN:
        rig.plan(name, mode="error", times=1)
    with pytest.raises(AllEnginesFailed):
        await rig.speak("Nobody is listening yet.")
    assert [rig.controls[n].calls() for n in CHAIN] == [1, 1, 1]


async def test_a_first_sentence_cut_after_audio_waits_for_a_full_engine_past_the_admission_wait() -> None:
    # Zonos sends one chunk of "One apple." and fails 0.4 s in, past the 0.3 s admission wait;
    # edge and flite are both held by other answers then. Audio is out, so the rest of the
    # sentence is owed: it waits for a slot instead of ending the answer as busy.
    rig = Rig(engine_concurrency=1, ttfb_timeout_s=2.0, stall_timeout_s=2.0)
    try:
        rig.plan("zonos", mode="partial", fail_text="One", chunk_delay_s=0.4)
        for name in ("edge", "flite"):
            rig.plan(name, chunk_delay_s=0.3)
        blockers = [asyncio.create_task(rig.speak(f"Blocker {n}.", engine=n)) for n in ("edge", "flite")]
        await eventually(lambda: all(rig.controls[n].calls() == 1 for n in ("edge", "flite")))
        runs = await rig.speak("One apple.")
        assert_complete(runs, "One apple.")
        assert (runs[0].code, runs[0].samples < FULL) == (0, True)
        assert runs[-1].code in (1, 2)
        await asyncio.gather(*blockers)
        assert all(rig.router.breaker(n).total_strikes == 0 for n in ("edge", "flite"))
    finally:
        await rig.router.aclose()


async def test_last_resort_tries_open_engines_when_every_breaker_is_open(rig: Rig) -> None:
    for name in CHAIN:
        rig.plan(name, mode="error")
    for i in range(3):
        with pytest.raises(AllEnginesFailed):
            await rig.speak(f"Down {i}.")
    assert all(rig.router.breaker(n).state is not BreakerState.CLOSED for n in CHAIN)
    rig.plan("flite")
    runs = await rig.speak("Anyone there.")
    assert [r.code for r in runs] == [2]
    assert rig.router.breaker("flite").state is BreakerState.CLOSED


async def test_pinned_engine_is_used_alone(rig: Rig) -> None:
    runs = await rig.speak("Only flite.", engine="flite")
    assert [r.code for r in runs] == [2]
    rig.plan("edge", mode="error")
    with pytest.raises(AllEnginesFailed):
        await rig.speak("Only edge.", engine="edge")
    assert rig.controls["flite"].calls() == 1  # no fallback from a pinned engine


async def test_full_engine_is_skipped_without_a_strike() -> None:
    rig = Rig(engine_concurrency=1)
    try:
        rig.plan("zonos", first_byte_delay_s=0.1)
        first = asyncio.create_task(rig.speak("Holds the only zonos slot."))
        await eventually(lambda: rig.controls["zonos"].calls() == 1)
        runs = await rig.speak("Goes elsewhere.")
        assert [r.code for r in runs] == [1]
        assert [r.code for r in await first] == [0]
        status = {e["name"]: e for e in await rig.router.engines_status()}
        assert status["zonos"]["busy_skips"] == 1
        assert status["zonos"]["strikes"] == 0
        assert status["zonos"]["in_flight"] == 0
    finally:
        await rig.router.aclose()


async def test_when_every_engine_is_full_the_sentence_queues_for_a_slot() -> None:
    control = LocalControl(FaultPlan(first_byte_delay_s=0.05))
    router = FallbackRouter(
        {"flite": LocalEngineClient(FaultyEngine("flite", control))},
        RouterConfig(chain=("flite",), engine_concurrency=1, ttfb_timeout_s=2.0),
    )
    try:
        requests = [SpeechRequest(f"Queued {i}.", sample_rate=SAMPLE_RATE, normalize=False) for i in range(3)]
        results = await asyncio.gather(*(router.speak(r) for r in requests))
        assert all(engines == ["flite"] for _, engines in results)
        assert router.breaker("flite").total_strikes == 0
    finally:
        await router.aclose()


async def test_many_concurrent_requests_share_one_router() -> None:
    # Timeouts of seconds, not the rig's 0.3 s: with 48 sentences in flight on a loaded 2-core
    # machine a stall of the event loop past 0.3 s after an engine's last chunk failed a complete
    # attempt now and then (about one run in eight), and the sentence was said again by the next engine.
    rig = Rig(ttfb_timeout_s=3.0, stall_timeout_s=3.0)
    try:
        rig.plan("zonos", mode="partial", chunk_delay_s=0.005)
        rig.plan("edge", chunk_delay_s=0.003)
        texts = [f"Request {i} first part. Request {i} second part. Request {i} third part." for i in range(16)]
        results = await asyncio.gather(*(rig.speak(t) for t in texts))
        for text, runs in zip(texts, results, strict=True):
            assert_complete(runs, text)
        status = {e["name"]: e for e in await rig.router.engines_status()}
        assert all(e["in_flight"] == 0 for e in status.values())
    finally:
        await rig.router.aclose()


async def test_a_request_cancelled_by_its_caller_is_not_a_strike(rig: Rig) -> None:
    rig.plan("zonos", mode="hang")

    async def consume() -> None:
        await rig.speak("The caller leaves before any audio.")

    task = asyncio.create_task(consume())
    await eventually(lambda: rig.controls["zonos"].calls() == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.router.breaker("zonos").total_strikes == 0
    assert (await rig.router.engines_status())[0]["in_flight"] == 0


async def test_audio_is_resampled_to_the_requested_rate(rig: Rig) -> None:
    pcm, _ = await rig.router.speak(SpeechRequest("Resample me.", sample_rate=24000))
    assert abs(len(pcm) // 2 - 24000 * 300 // 1000) < 200


async def test_aclose_stops_background_probes(rig: Rig) -> None:
    rig.plan("zonos", mode="error")
    for i in range(3):
        await rig.speak(f"Open it {i}.")
    await rig.router.aclose()
    rig.plan("zonos")
    await asyncio.sleep(0.5)
    assert rig.router.breaker("zonos").state is BreakerState.OPEN
    assert all(t == "Probe." or "Open it" in t for t, _ in rig.controls["zonos"].log)
    assert rig.router.breaker("zonos").probes == 0


async def test_undeployed_engine_is_reported_and_skipped() -> None:
    control = LocalControl()
    router = FallbackRouter(
        {
            "zonos": UnavailableEngineClient("zonos", "no GPU in the Ray cluster"),
            "flite": LocalEngineClient(FaultyEngine("flite", control)),
        },
        RouterConfig(),
    )
    try:
        pcm, engines = await router.speak(SpeechRequest("Hello there.", sample_rate=SAMPLE_RATE))
        assert engines == ["flite"] and pcm
        status = {e["name"]: e for e in await router.engines_status()}
        assert status["zonos"]["deployed"] is False and status["zonos"]["available"] is False
        assert "GPU" in (status["zonos"]["reason"] or "")
        with pytest.raises(AllEnginesFailed):
            await router.speak(SpeechRequest("Pinned.", engine="zonos"))
    finally:
        await router.aclose()


async def test_engines_status_reports_every_field(rig: Rig) -> None:
    rig.plan("zonos", mode="error")
    await rig.speak("Count this.")
    status = await rig.router.engines_status()
    assert [e["name"] for e in status] == list(CHAIN)
    zonos = status[0]
    for key in ("available", "state", "strikes", "last_error", "cooldown_left_s", "requests", "failures",
                "ttfb_p50_ms", "ttfb_p95_ms"):
        assert key in zonos
    assert zonos["requests"] == 1 and zonos["failures"] == 1 and zonos["strikes"] == 1
    assert status[1]["ttfb_p50_ms"] is not None and status[1]["ttfb_p95_ms"] >= status[1]["ttfb_p50_ms"]


async def test_per_engine_limits_override_the_global_budgets() -> None:
    from serve_app.router import EngineLimits

    # Global budget 0.3 s; zonos may take 1.0 s to its first byte, edge only 0.05 s.
    rig = Rig(
        engine_limits={
            "zonos": EngineLimits(ttfb_timeout_s=1.0, stall_timeout_s=0.3, concurrency=4),
            "edge": EngineLimits(ttfb_timeout_s=0.05, stall_timeout_s=0.3, concurrency=1),
        }
    )
    try:
        rig.plan("zonos", first_byte_delay_s=0.5)  # slower than the global budget, inside its own
        runs = await rig.speak("Slow but allowed.")
        assert [r.code for r in runs] == [0]
        rig.plan("zonos", mode="error")
        rig.plan("edge", first_byte_delay_s=0.2)  # inside the global budget, outside its own
        runs = await rig.speak("Edge is too slow for its budget.")
        assert [r.code for r in runs] == [2]  # flite spoke it
        assert "0.1s" in (rig.router.breaker("edge").last_error or "")  # its own 0.05 s budget
        status = {e["name"]: e for e in await rig.router.engines_status()}
        assert status["zonos"]["concurrency_limit"] == 4 and status["edge"]["concurrency_limit"] == 1
        assert status["flite"]["concurrency_limit"] == RouterConfig().engine_concurrency
    finally:
        await rig.router.aclose()


async def test_a_busy_engine_is_not_a_strike_the_sentence_goes_on(rig: Rig) -> None:
    rig.plan("zonos", mode="busy")
    for i in range(5):
        runs = await rig.speak(f"Busy primary {i}.")
        assert [r.code for r in runs] == [1]  # edge spoke it
    breaker = rig.router.breaker("zonos")
    assert breaker.state is BreakerState.CLOSED and breaker.total_strikes == 0
    status = {e["name"]: e for e in await rig.router.engines_status()}
    # After its busy answer, zonos is asked last for a while (a queue that is full now is full in a
    # moment too), so the four requests after the first went straight to edge.
    assert status["zonos"]["busy_skips"] == 1 and status["zonos"]["failures"] == 0
    assert rig.controls["zonos"].calls() == 1
    rig.plan("zonos")  # free again; once the back-off is over it is first again
    await asyncio.sleep(0.6)
    assert [r.code for r in await rig.speak("Back to the primary.")] == [0]


async def test_only_busy_answers_end_in_engines_busy_without_strikes(rig: Rig) -> None:
    for name in CHAIN:
        rig.plan(name, mode="busy")
    with pytest.raises(EnginesBusy) as info:
        await rig.speak("Everyone is full.")
    assert info.value.status == 503 and info.value.retry_after_s
    assert all(rig.router.breaker(n).total_strikes == 0 for n in CHAIN)


async def test_the_admission_marker_restarts_the_first_byte_timer(rig: Rig) -> None:
    # 0.2 s queued, then b"", then 0.2 s to the first audio: 0.4 s in all, over the 0.3 s budget,
    # but the engine's own latency (from the marker) is inside it.
    rig.plan("zonos", queued_s=0.2, first_byte_delay_s=0.2)
    runs = await rig.speak("Queued, then quick.")
    assert [r.code for r in runs] == [0]
    assert rig.router.breaker("zonos").total_strikes == 0
    # Without the marker the same wait is the engine's: a first-byte timeout, and a strike.
    rig.plan("zonos", first_byte_delay_s=0.4)
    runs = await rig.speak("Slow without a marker.")
    assert [r.code for r in runs] == [1]
    assert (rig.router.breaker("zonos").last_error or "").startswith("FirstByteTimeout")


async def test_speed_must_fit_every_engine_the_request_may_reach() -> None:
    rig = Rig(speed_ranges={"zonos": (0.25, 4.0), "edge": (0.5, 2.0), "flite": (0.25, 4.0)})
    try:
        with pytest.raises(InvalidInput, match="speed"):
            await rig.speak("Too fast for edge.", speed=3.0)
        assert all(rig.controls[n].calls() == 0 for n in CHAIN)  # refused before any engine ran
        runs = await rig.speak("Pinned to flite.", speed=3.0, engine="flite")  # edge cannot be reached
        assert [r.code for r in runs] == [2]
        with pytest.raises(InvalidInput, match="speed"):
            await rig.speak("Pinned to edge.", speed=3.0, engine="edge")
    finally:
        await rig.router.aclose()


def test_router_config_reads_per_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import load_settings
    from serve_app.engines import registry
    from serve_app.router import router_config

    monkeypatch.setenv("ENV_FILE", "/nonexistent/.env")
    monkeypatch.setenv("ZONOS_TTFB_TIMEOUT_S", "12")
    monkeypatch.setenv("EDGE_CONCURRENCY", "5")
    config = router_config(load_settings(_env_file=None))
    assert config.limits_for("zonos").ttfb_timeout_s == 12.0
    assert config.limits_for("edge").concurrency == 5
    assert config.limits_for("flite").ttfb_timeout_s == config.ttfb_timeout_s
    # The speed range each engine declares is what the router checks requests against.
    assert config.speed_ranges == {name: spec.speed_range for name, spec in registry.specs().items()}


class QueueingFaultyEngine(FaultyEngine):
    """A fault engine that queues work itself: it says `b""` when a request's work begins."""

    queues_work = True


async def test_time_queued_before_the_start_marker_is_busy_not_a_strike() -> None:
    rig = Rig()
    clients = {name: LocalEngineClient(FaultyEngine(name, rig.controls[name])) for name in CHAIN}
    clients["zonos"] = LocalEngineClient(QueueingFaultyEngine("zonos", rig.controls["zonos"]))
    router = FallbackRouter(clients, rig.router.config)
    try:
        rig.plan("zonos", queued_s=1.0)  # longer than the 0.3 s first-byte budget, still queued
        pcm, engines = await router.speak(SpeechRequest("Queued too long.", sample_rate=SAMPLE_RATE, normalize=False))
        assert engines == ["edge"] and [r.code for r in decode_runs(pcm)] == [1]
        breaker = router.breaker("zonos")
        assert breaker.state is BreakerState.CLOSED and breaker.total_strikes == 0
        status = {e["name"]: e for e in await router.engines_status()}
        assert status["zonos"]["busy_skips"] == 1 and status["zonos"]["failures"] == 0
    finally:
        await router.aclose()
        await rig.router.aclose()


async def test_an_admitted_answer_waits_for_capacity_and_a_new_one_is_refused_before_its_first_byte() -> None:
    # One slot; every sentence takes ~0.45 s, longer than the 0.3 s queueing budget, so the third
    # sentence of the first answer waits ~0.9 s for the slot. It must wait (its listener is
    # already hearing the answer), while a new request is refused before any audio.
    control = LocalControl(FaultPlan(chunk_delay_s=0.15))
    router = FallbackRouter(
        {"flite": LocalEngineClient(FaultyEngine("flite", control))},
        RouterConfig(
            chain=("flite",), engine_concurrency=1, ttfb_timeout_s=0.3, stall_timeout_s=1.0, admission_wait_s=0.3
        ),
    )
    first_text = "One apple. Two pears. Three plums."
    try:
        admitted = asyncio.create_task(
            router.speak(SpeechRequest(first_text, sample_rate=SAMPLE_RATE, normalize=False))
        )
        await eventually(lambda: control.calls() >= 1)
        late = router.synthesize(SpeechRequest("Late comer.", sample_rate=SAMPLE_RATE, normalize=False))
        heard: list[bytes] = []
        with pytest.raises(EnginesBusy) as info:
            async for chunk in late:
                heard.append(chunk.pcm)
        assert heard == [] and info.value.status == 503 and info.value.retry_after_s
        pcm, engines = await admitted
        assert_complete(decode_runs(pcm), first_text)
        assert engines == ["flite"]
        assert router.breaker("flite").total_strikes == 0
    finally:
        await router.aclose()


async def test_busy_answers_to_a_later_sentence_are_retried_until_it_is_spoken(rig: Rig) -> None:
    # The pinned engine's queue is full for "Two" for longer than the queueing budget; the
    # answer already started, so the sentence waits and is spoken, never cut.
    rig.plan("flite", mode="busy", fail_text="Two", recover_after_s=0.8)
    text = "One apple. Two pears. Three plums."
    runs = await rig.speak(text, engine="flite")
    assert_complete(runs, text)
    assert {r.code for r in runs} == {2}
    assert rig.router.breaker("flite").total_strikes == 0
    assert rig.controls["flite"].calls() >= 4  # "Two" was refused at least once, then spoken


async def test_a_new_request_no_engine_starts_within_the_admission_wait_is_refused_without_a_strike() -> None:
    control = LocalControl(FaultPlan(queued_s=1.0))  # the engine's own queue holds it for a second
    router = FallbackRouter(
        {"flite": LocalEngineClient(QueueingFaultyEngine("flite", control))},
        RouterConfig(chain=("flite",), ttfb_timeout_s=5.0, admission_wait_s=0.2),
    )
    try:
        heard: list[bytes] = []
        with pytest.raises(EnginesBusy) as info:
            async for chunk in router.synthesize(SpeechRequest("Too late.", sample_rate=SAMPLE_RATE, normalize=False)):
                heard.append(chunk.pcm)
        assert heard == [] and info.value.status == 503 and info.value.retry_after_s
        assert router.breaker("flite").total_strikes == 0
        control.set(FaultPlan(queued_s=0.05))  # a short queue: admitted, and spoken
        pcm, engines = await router.speak(SpeechRequest("In time.", sample_rate=SAMPLE_RATE, normalize=False))
        assert engines == ["flite"] and pcm
    finally:
        await router.aclose()


async def test_an_engine_with_no_next_one_gets_the_whole_admission_wait_to_start() -> None:
    # Half the admission wait is kept for the next engine only when there is one: the only engine
    # queueing for 0.35 s of a 0.5 s admission wait still speaks the answer.
    control = LocalControl(FaultPlan(queued_s=0.35))
    router = FallbackRouter(
        {"flite": LocalEngineClient(QueueingFaultyEngine("flite", control))},
        RouterConfig(chain=("flite",), ttfb_timeout_s=5.0, admission_wait_s=0.5),
    )
    try:
        request = SpeechRequest("Queued, then spoken.", sample_rate=SAMPLE_RATE, normalize=False)
        pcm, engines = await router.speak(request)
        assert engines == ["flite"] and pcm
        assert control.calls() == 1 and router.breaker("flite").total_strikes == 0
    finally:
        await router.aclose()


class PriorityRecordingEngine(FaultyEngine):
    """A fault engine that takes `priority` and records what each sentence got."""

    accepts_priority = True

    def __init__(self, name: str, control: LocalControl) -> None:
        super().__init__(name, control)
        self.priorities: list[tuple[str, int]] = []

    async def synthesize(  # type: ignore[override]
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | object]:
        self.priorities.append((text, priority))
        async for item in super().synthesize(text, voice, language=language, speed=speed):
            yield item


async def test_later_sentences_go_to_the_engine_as_playing_and_look_ahead_waits_for_the_first_audio() -> None:
    control = LocalControl(FaultPlan(first_byte_delay_s=0.3))
    engine = PriorityRecordingEngine("flite", control)
    router = FallbackRouter({"flite": LocalEngineClient(engine)}, RouterConfig(chain=("flite",), ttfb_timeout_s=2.0))
    text = "One apple. Two pears. Three plums."
    try:
        task = asyncio.create_task(router.speak(SpeechRequest(text, sample_rate=SAMPLE_RATE, normalize=False)))
        await asyncio.sleep(0.2)
        assert control.calls() == 1  # no look-ahead before the first audio
        pcm, _ = await task
        assert_complete(decode_runs(pcm), text)
        assert engine.priorities == [
            ("One apple.", PRIORITY_NEW), ("Two pears.", PRIORITY_PLAYING), ("Three plums.", PRIORITY_PLAYING)
        ]
    finally:
        await router.aclose()


def test_thousands_of_busy_answers_in_a_row_keep_the_wait_at_its_ceiling() -> None:
    # A flood gives an engine thousands of busy answers in a row; the back-off must stay a number
    # (2**streak once overflowed a float and failed the sentences of answers already playing).
    from serve_app.core.breaker import CircuitBreaker
    from serve_app.router.admission import Limiter
    from serve_app.router.status import BUSY_BACKOFF_MAX_S, BUSY_BACKOFF_S, EngineSlot
    from serve_app.router.types import EngineLimits

    client = UnavailableEngineClient("flite", "not needed here")
    slot = EngineSlot("flite", client, CircuitBreaker(), Limiter(1), EngineLimits(1.0, 1.0, 1))
    slot.busy_answer(100.0)
    assert slot.busy_until == 100.0 + BUSY_BACKOFF_S
    for _ in range(5000):
        slot.busy_answer(100.0)
    assert slot.busy_until == 100.0 + BUSY_BACKOFF_MAX_S
    slot.started()
    slot.busy_answer(200.0)
    assert slot.busy_until == 200.0 + BUSY_BACKOFF_S


def test_a_later_sentence_is_due_when_its_listener_will_have_heard_the_ones_before_it() -> None:
    import time

    from serve_app.router.core import _PLAYBACK_MARGIN_S, AudioChunk, _RequestState, _SentenceJob

    rate = 16000
    request = SpeechRequest("x", sample_rate=rate)
    state = _RequestState()
    first = _SentenceJob(0, "Three seconds of audio, done.", rate)
    first.push(AudioChunk(b"\0\0" * rate * 3, "flite", 0))
    first.finish()
    second = _SentenceJob(1, "A" * 100, rate)  # not spoken yet: plays at least 100 / 25 = 4 s
    third = _SentenceJob(2, "Third.", rate)
    state.jobs.extend([first, second, third])
    # Before any audio went out, a later sentence is owed at once.
    assert FallbackRouter._queue_priority(second, request, state) == PRIORITY_PLAYING
    state.first_audio_at = time.monotonic()
    slack_second = FallbackRouter._queue_priority(second, request, state)
    assert abs(slack_second - (3.0 - _PLAYBACK_MARGIN_S) * 1000) < 100
    slack_third = FallbackRouter._queue_priority(third, request, state)
    assert abs(slack_third - (3.0 + 4.0 - _PLAYBACK_MARGIN_S) * 1000) < 100
    # Twice as fast, the unspoken sentence's floor halves.
    fast = SpeechRequest("x", sample_rate=rate, speed=2.0)
    assert abs(FallbackRouter._queue_priority(third, fast, state) - (3.0 + 2.0 - _PLAYBACK_MARGIN_S) * 1000) < 100
    # Its listener has heard it all: due at once.
    state.first_audio_at = time.monotonic() - 10.0
    assert FallbackRouter._queue_priority(third, request, state) == PRIORITY_PLAYING
