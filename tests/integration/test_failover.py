"""Failover through the real Serve application, over HTTP, with fault-injecting engine deployments.

A second Serve application ("faults", at /faults) runs in the test cluster: the real `Ingress`
bound to three real `EngineHost` deployments that host `tests.fakes.faulty:FaultyEngine` in the
zonos, edge and flite slots. Each engine reads its behaviour from the cluster's `FaultBoard`
actor (under its deployment name) and logs what it was asked to speak there, so the tests flip
faults at run time and count what reached each engine. The audio encodes sentence and engine,
so the tests check that no sentence is lost and the order is kept.

TEST_ENV (tests/conftest.py): cooldown 1 s (cap 4 s), first-byte and stall timeouts 3 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_http
from tests.fakes import faulty

pytestmark = pytest.mark.integration

SLOTS = {"zonos": "FaultZonos", "edge": "FaultEdge", "flite": "FaultFlite"}
CODES = {"zonos": 0, "edge": 1, "flite": 2}
SPEECH = "/faults/v1/audio/speech"


@pytest.fixture(scope="module")
def faults(serve_port: int) -> Iterator[tuple[str, Any]]:
    """The fault application's base URL and the FaultBoard actor."""
    import ray
    from ray import serve

    from serve_app.deployments import EngineDeployment
    from serve_app.ingress import Ingress

    board = faulty.board(create=True)
    engines = {
        slot: EngineDeployment.options(name=key, ray_actor_options={"num_cpus": 0.05}).bind(
            "tests.fakes.faulty:FaultyEngine"
        )
        for slot, key in SLOTS.items()
    }
    app = Ingress.options(ray_actor_options={"num_cpus": 0.1}).bind(engines)
    serve.run(app, name="faults", route_prefix="/faults", blocking=False)
    url = f"http://127.0.0.1:{serve_port}"
    wait_http(f"{url}/faults/health")
    try:
        yield url, board
    finally:
        serve.delete("faults")
        ray.kill(board)


@pytest.fixture
def client(faults: tuple[str, Any]) -> Iterator[httpx.Client]:
    """A client on a clean slate: every engine healthy, zero strikes, empty logs."""
    url, _ = faults
    for slot in SLOTS:
        plan(faults, slot)
    with httpx.Client(base_url=url, timeout=30.0) as c:
        for slot in SLOTS:  # a pinned success closes the breaker and clears strikes
            assert speak(c, "Reset.", engine=slot).status_code == 200
        for slot in SLOTS:
            board_call(faults, "clear", SLOTS[slot])
        yield c


def board_call(faults: tuple[str, Any], method: str, *args: Any) -> Any:
    import ray

    return ray.get(getattr(faults[1], method).remote(*args))


def plan(faults: tuple[str, Any], slot: str, **fields: Any) -> None:
    board_call(faults, "set", SLOTS[slot], {"code": CODES[slot], **fields})


def calls(faults: tuple[str, Any], slot: str, *, user_only: bool = True) -> int:
    log = board_call(faults, "log", SLOTS[slot])
    return sum(1 for text, event in log if event == "start" and not (user_only and text == "Probe."))


def body(text: str, **extra: Any) -> dict[str, Any]:
    # The fault engines encode the text they get: no spoken form ("Caller 0" stays "Caller 0"), so
    # each sentence can be found in the audio.
    return {"input": text, "voice": "alloy", "response_format": "pcm", "sample_rate": 16000, "normalize": False,
            **extra}


def speak(client: httpx.Client, text: str, **extra: Any) -> httpx.Response:
    return client.post(SPEECH, json=body(text, **extra))


def engines(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/faults/v1/engines")
    assert response.status_code == 200
    return {e["name"]: e for e in response.json()["data"]}


def test_three_strikes_then_skipped_then_recovered_by_the_background_probe(
    client: httpx.Client, faults: tuple[str, Any]
) -> None:
    plan(faults, "zonos", mode="error")
    for i in range(3):
        response = speak(client, f"Strike number {i}.")
        assert response.status_code == 200
        assert response.headers["x-tts-engine"] == "edge"
        assert [r.code for r in faulty.decode_runs(response.content)] == [CODES["edge"]]
    status = engines(client)["zonos"]
    assert status["state"] == "open" and not status["available"]
    assert status["strikes"] == 3 and "injected engine error" in status["last_error"]
    assert status["cooldown_left_s"] > 0
    assert calls(faults, "zonos") == 3

    response = speak(client, "Skipped at no cost.")
    assert response.headers["x-tts-engine"] == "edge"
    assert calls(faults, "zonos") == 3

    plan(faults, "zonos")  # the engine heals; no user traffic from here until it is closed again
    deadline = time.monotonic() + 15
    while engines(client)["zonos"]["state"] != "closed":
        assert time.monotonic() < deadline, "breaker did not close after the engine recovered"
        time.sleep(0.2)
    assert ("Probe.", "done") in board_call(faults, "log", SLOTS["zonos"])
    assert calls(faults, "zonos") == 3  # only the probe phrase reached it
    assert speak(client, "Back on the primary.").headers["x-tts-engine"] == "zonos"


async def test_no_sentence_lost_and_order_kept_with_mid_sentence_failures_under_concurrency(
    client: httpx.Client, faults: tuple[str, Any]
) -> None:
    plan(faults, "zonos", mode="partial")
    texts = [f"Caller {i} says one. Caller {i} says two. Caller {i} says three. Caller {i} ends." for i in range(6)]
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60.0) as aclient:
        responses = await asyncio.gather(*(aclient.post(SPEECH, json=body(t)) for t in texts))
    restarted = 0
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200
        runs = faulty.decode_runs(response.content)
        faulty.assert_complete(runs, text)
        restarted += sum(1 for r in runs if r.code == CODES["zonos"])
    assert restarted >= 1  # at least one partial sentence was heard, then spoken again in full
    assert engines(client)["zonos"]["state"] == "open"


def test_hang_before_first_byte_and_stall_mid_stream_fail_over(client: httpx.Client, faults: tuple[str, Any]) -> None:
    plan(faults, "zonos", mode="hang")
    plan(faults, "edge", mode="stall")
    text = "The first engine hangs. The second one stalls."
    response = speak(client, text)
    assert response.status_code == 200
    runs = faulty.decode_runs(response.content)
    faulty.assert_complete(runs, text)
    assert runs[-1].code == CODES["flite"]
    status = engines(client)
    assert status["zonos"]["last_error"].startswith("FirstByteTimeout")
    assert status["edge"]["last_error"].startswith("StallTimeout")
    assert status["zonos"]["strikes"] >= 1 and status["edge"]["strikes"] >= 1


def test_all_engines_down_is_503_in_openai_error_shape(client: httpx.Client, faults: tuple[str, Any]) -> None:
    for slot in SLOTS:
        plan(faults, slot, mode="error")
    response = speak(client, "Nobody can say this.")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "all_engines_failed"
    assert error["type"] == "service_unavailable"
    assert "zonos" in error["message"] and "flite" in error["message"]


def test_failure_after_the_first_byte_aborts_the_chunked_response(
    client: httpx.Client, faults: tuple[str, Any]
) -> None:
    for slot in SLOTS:
        plan(faults, slot, mode="error", fail_text="Doomed")
    received = bytearray()
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        client.stream("POST", SPEECH, json=body("A fine start. Doomed ending.")) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received.extend(chunk)
    runs = faulty.decode_runs(bytes(received))
    assert [r.token for r in runs] == [faulty.token_for("A fine start.")]


def test_caller_error_is_400_and_never_a_strike(client: httpx.Client, faults: tuple[str, Any]) -> None:
    plan(faults, "zonos", mode="invalid", fail_text="Reject")
    for _ in range(4):
        response = speak(client, "Reject this text.")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_input"
    status = engines(client)["zonos"]
    assert status["state"] == "closed" and status["strikes"] == 0
    assert calls(faults, "edge") == 0


def test_engine_pinning_and_the_engines_listing(client: httpx.Client, faults: tuple[str, Any]) -> None:
    response = speak(client, "Pinned to the last resort.", engine="flite")
    assert response.headers["x-tts-engine"] == "flite"
    assert calls(faults, "zonos") == 0

    plan(faults, "edge", mode="error")
    response = speak(client, "Pinned to a broken engine.", engine="edge")
    assert response.status_code == 503
    assert calls(faults, "flite") == 1  # only the first pinned request: no fallback

    listing = client.get("/faults/v1/engines").json()
    assert listing["chain"] == ["zonos", "edge", "flite"]
    for entry in listing["data"]:
        for key in ("available", "state", "strikes", "last_error", "cooldown_left_s", "requests", "failures",
                    "ttfb_p50_ms", "ttfb_p95_ms", "breaker", "check"):
            assert key in entry, key
    by_name = {e["name"]: e for e in listing["data"]}
    assert by_name["edge"]["strikes"] == 1 and by_name["edge"]["failures"] >= 1
    assert by_name["flite"]["ttfb_p50_ms"] is not None


def test_word_times_stay_monotonic_and_a_cut_sentence_resumes_at_the_unheard_word(
    client: httpx.Client, faults: tuple[str, Any]
) -> None:
    """Engines that mark their words (like Edge and Flite): Zonos fails after its first 100 ms; Edge
    goes on from the first word not heard in full, and the SSE word times keep growing."""
    import base64
    import json

    plan(faults, "zonos", mode="partial", word_marks=True, fail_text="Ann")
    plan(faults, "edge", word_marks=True)
    text = "Ann bakes fresh bread daily. Then she sells it."
    response = client.post(SPEECH, json=body(text, stream_format="sse", timestamps=True))
    assert response.status_code == 200
    events = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    words = [e for e in events if e["type"] == "speech.word"]
    assert [w["word"] for w in words] == ["Ann", "bakes", "fresh", "bread", "daily", "Then", "she", "sells", "it"]
    starts = [w["start_s"] for w in words]
    assert starts == sorted(starts)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    runs = faulty.decode_runs(pcm)
    resumed = "bakes fresh bread daily."
    assert [(r.token, r.code) for r in runs[:2]] == [
        (faulty.token_for("Ann bakes fresh bread daily."), CODES["zonos"]), (faulty.token_for(resumed), CODES["edge"]),
    ]
    assert resumed in [t for t, e in board_call(faults, "log", SLOTS["edge"]) if e == "start"]


async def test_socket_reports_a_sentence_no_engine_could_speak_and_stays_usable(
    client: httpx.Client, faults: tuple[str, Any]
) -> None:
    """On the realtime socket, a failure after audio has started is an error event naming what was
    not spoken, the turn still ends with `flushed`, and the next turn works."""
    import json

    from websockets.asyncio.client import connect

    for slot in SLOTS:
        plan(faults, slot, mode="error", fail_text="Doomed")
    url = str(client.base_url).replace("http://", "ws://") + "/faults/v1/audio/speech/stream"
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "session.update", "response_format": "pcm", "normalize": False}))
        await ws.send(json.dumps({"type": "input_text.append", "text": "A fine start. Doomed middle. Lost end."}))
        await ws.send(json.dumps({"type": "input_text.flush"}))
        events: list[dict[str, Any]] = []
        audio = 0
        async with asyncio.timeout(30):
            while not events or events[-1]["type"] != "flushed":
                message = await ws.recv()
                if isinstance(message, bytes):
                    audio += len(message)
                else:
                    events.append(json.loads(message))
        assert audio > 0
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert len(errors) == 1 and errors[0]["code"] == "all_engines_failed"
        assert "2 sentence(s) from sentence 1 on were not spoken" in errors[0]["message"]
        assert [e["text"] for e in events if e["type"] == "sentence.start"] == ["A fine start."]
        await ws.send(json.dumps({"type": "input_text.append", "text": "Next turn."}))
        await ws.send(json.dumps({"type": "input_text.flush"}))
        async with asyncio.timeout(30):
            while True:
                message = await ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "flushed":
                    break
                assert not (isinstance(message, str) and json.loads(message)["type"] == "error"), message
