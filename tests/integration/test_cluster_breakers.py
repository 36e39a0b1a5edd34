"""Issue 15's target, literally: two ingress replicas and two agent processes share one breaker per engine.

A Serve application of its own ("cluster-breakers", at /cluster-breakers) runs the real `Ingress`
with `num_replicas=2` over three `EngineHost` deployments hosting `tests.fakes.faulty:FaultyEngine`
(own FaultBoard keys, so test_failover's engines are untouched). Next to it, two agent routers run
in two Ray actors (two processes), composed as the agent composes its in-cluster source
(`RouterSpeechSource` over `compose_router_from_handles` with the app's name, so they follow the same
breaker board as the ingress replicas) and spoken through the agent's `RouterTurn`.

Which ingress replica answered: Serve's proxy picks one per request and does not say which, so the
test reads each replica's own view at `/v1/engines` (it names the replica) until it has seen both:
a replica whose fallback engine's `requests` grew served speech in that phase. Requests go one at a
time, round robin over the four routers; a dead engine can take more than `max_strikes` calls only
from requests already under way when the cluster learns of it.

TEST_ENV (tests/conftest.py): 3 strikes, cooldown 1 s (cap 4 s), first-byte timeout 3 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_http
from tests.fakes import faulty

pytestmark = pytest.mark.integration

APP = "cluster-breakers"
PREFIX = f"/{APP}"
SLOTS = {"zonos": "CbZonos", "edge": "CbEdge", "flite": "CbFlite"}
CODES = {"zonos": 0, "edge": 1, "flite": 2}
ROUNDS = 4  # per phase: each round is two HTTP requests and one per agent


class AgentHost:
    """One agent process's in-cluster speech: the agent's router source, spoken through `RouterTurn`."""

    def __init__(self) -> None:
        from ray import serve

        from agent.tts import RouterSpeechSource
        from config.settings import get_settings
        from serve_app.router import compose_router_from_handles

        handles = {slot: serve.get_deployment_handle(key, app_name=APP) for slot, key in SLOTS.items()}
        self.source = RouterSpeechSource(compose_router_from_handles(get_settings(), handles, app_name=APP))

    async def speak(self, text: str) -> list[int]:
        """The engine codes of the audio of one turn (the agent's streaming path)."""
        from agent.turns import RouterTurn
        from serve_app.router import SpeechRequest

        request = SpeechRequest(text="", sample_rate=faulty.SAMPLE_RATE, timestamps=True, normalize=False)
        turn = RouterTurn(self.source.router, request)
        await turn.append(text)
        await turn.finish()
        pcm = b"".join([event async for event in turn.events() if isinstance(event, bytes)])
        await turn.aclose()
        return sorted({run.code for run in faulty.decode_runs(pcm)})

    async def state(self, engine: str) -> str:
        return str(self.source.router.breaker(engine).state.value)

    async def close(self) -> None:
        await self.source.aclose()


@pytest.fixture(scope="module")
def cluster(serve_port: int) -> Iterator[tuple[str, Any]]:
    """The app's base URL (both ingress replicas up) and the FaultBoard actor."""
    import ray
    from ray import serve

    from serve_app.deployments import EngineDeployment
    from serve_app.ingress import Ingress

    board = faulty.board(create=True)
    for slot, key in SLOTS.items():
        ray.get(board.set.remote(key, {"code": CODES[slot]}))
    engines = {
        slot: EngineDeployment.options(name=key, ray_actor_options={"num_cpus": 0.05}).bind(
            "tests.fakes.faulty:FaultyEngine"
        )
        for slot, key in SLOTS.items()
    }
    app = Ingress.options(num_replicas=2, ray_actor_options={"num_cpus": 0.1}).bind(engines)
    serve.run(app, name=APP, route_prefix=PREFIX, blocking=False)
    url = f"http://127.0.0.1:{serve_port}"
    wait_http(f"{url}{PREFIX}/health")
    try:
        yield url, board
    finally:
        serve.delete(APP)
        for key in SLOTS.values():
            ray.get(board.clear.remote(key))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def replica_views(client: httpx.Client, timeout: float = 30.0) -> dict[str, dict[str, dict[str, Any]]]:
    """Each ingress replica's `/v1/engines` (engine name -> status), asked until both have answered."""
    views: dict[str, dict[str, dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout
    while len(views) < 2:
        assert time.monotonic() < deadline, f"only {len(views)} ingress replica(s) answered"
        response = client.get(f"{PREFIX}/v1/engines")
        assert response.status_code == 200
        body = response.json()
        assert body["replica"], "an ingress replica names itself"
        views[body["replica"]] = {e["name"]: e for e in body["data"]}
    return views


def speak_http(client: httpx.Client, text: str) -> tuple[str, list[int]]:
    response = client.post(
        f"{PREFIX}/v1/audio/speech",
        json={"input": text, "voice": "alloy", "response_format": "pcm", "sample_rate": faulty.SAMPLE_RATE,
              "normalize": False},
    )
    assert response.status_code == 200, response.text[:200]
    return response.headers["x-tts-engine"], sorted({r.code for r in faulty.decode_runs(response.content)})


def until_both_replicas_served(
    client: httpx.Client, text: str, slot: str, baseline: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """More HTTP requests (each spoken by `slot`) until both replicas' `slot` counters grew since `baseline`.

    Serve's proxy chooses the replica; usually the round robin has reached both already.
    """
    for attempt in range(16):
        views = replica_views(client)
        assert views.keys() == baseline.keys(), "the ingress replicas changed"
        if all(views[r][slot]["requests"] > baseline[r][slot]["requests"] for r in views):
            return views
        assert speak_http(client, f"{text} {attempt}.") == (slot, [CODES[slot]])
    raise AssertionError("Serve's proxy sent no request to one of the ingress replicas")


def test_a_dead_engine_is_skipped_by_two_ingress_replicas_and_two_agents_after_max_strikes_and_back_after_one_probe(
    cluster: tuple[str, Any],
) -> None:
    import ray

    from config.settings import get_settings

    url, board = cluster
    max_strikes = get_settings().router.max_strikes

    def user_calls() -> int:
        log = ray.get(board.log.remote(SLOTS["zonos"]))
        return sum(1 for text, event in log if event == "start" and text != "Probe.")

    def plan(slot: str, **fields: Any) -> None:
        ray.get(board.set.remote(SLOTS[slot], {"code": CODES[slot], **fields}))

    host = ray.remote(num_cpus=0)(AgentHost)
    agents: list[Any] = [host.remote(), host.remote()]  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, timeout=30.0) as client:
        try:
            # Healthy: every router speaks on the primary.
            assert ray.get([a.speak.remote("Hello there.") for a in agents]) == [[CODES["zonos"]]] * 2
            assert speak_http(client, "Hello there.") == ("zonos", [CODES["zonos"]])
            before = replica_views(client)
            # The name a replica gives is its actor's: the drain coordinator finds live ones by it.
            from serve_app.drain.coordinator import replica_actor_gone

            assert not any(replica_actor_gone(replica) for replica in before)
            assert replica_actor_gone(next(iter(before)) + "-gone")
            ray.get(board.clear.remote(SLOTS["zonos"]))

            # The primary dies. One request at a time, round robin: HTTP, agent 0, HTTP, agent 1.
            plan("zonos", mode="error")
            for i in range(ROUNDS):
                for agent in agents:
                    assert speak_http(client, f"Kill phase {i}.") == ("edge", [CODES["edge"]])
                    assert ray.get(agent.speak.remote(f"Kill phase {i}.")) == [CODES["edge"]]
            struck = user_calls()
            assert 1 <= struck <= max_strikes, f"{struck} calls reached the dead engine, cluster-wide"

            # Every router now skips it: both ingress replicas (each served speech in this phase)...
            views = until_both_replicas_served(client, "Kill phase extra", "edge", before)
            assert user_calls() == struck
            for replica, view in views.items():
                assert view["zonos"]["state"] == "open" and not view["zonos"]["available"], replica
                assert view["zonos"]["breaker"]["cluster"]["total_strikes"] >= max_strikes
            # ... and both agents.
            assert ray.get([a.state.remote("zonos") for a in agents]) == ["open", "open"]
            for i in range(ROUNDS):
                for agent in agents:
                    assert speak_http(client, f"Skip phase {i}.") == ("edge", [CODES["edge"]])
                    assert ray.get(agent.speak.remote(f"Skip phase {i}.")) == [CODES["edge"]]
            assert user_calls() == struck  # no new call reached it from any router

            # It heals: one probe succeeds and every router routes to it again.
            plan("zonos")
            wait_until(lambda: all(v["zonos"]["state"] == "closed" for v in replica_views(client).values())
                       and ray.get([a.state.remote("zonos") for a in agents]) == ["closed", "closed"],
                       20.0, "every router should close the engine's breaker after its probe")
            log = ray.get(board.log.remote(SLOTS["zonos"]))
            assert log.count(("Probe.", "done")) == 1  # one successful probe closed it for all four
            healed = replica_views(client)
            for i in range(ROUNDS):
                for agent in agents:
                    assert speak_http(client, f"Back {i}.") == ("zonos", [CODES["zonos"]])
                    assert ray.get(agent.speak.remote(f"Back {i}.")) == [CODES["zonos"]]
            until_both_replicas_served(client, "Back extra", "zonos", healed)
            assert user_calls() > struck
        finally:
            ray.get([a.close.remote() for a in agents])
            for agent in agents:
                ray.kill(agent)
