"""Breakers shared across processes, and replicas that keep failing replaced, on the real Ray cluster.

- Two routers in two Ray actors (two processes, like two ingress replicas or two agent workers),
  each composed like the ingress composes its own, over handles to fault-injecting engine
  deployments (`tests.fakes.faulty`), following one breaker board actor. A dead engine is skipped
  by both after `max_strikes` failures in total, and both route to it again after one probe.
- An engine replica whose engine keeps failing fails its health check and Serve replaces it: the
  replica names itself at the start of each stream (`ReplicaTag`), so the test sees the new one.

TEST_ENV (tests/conftest.py): cooldown 1 s (cap 4 s), first-byte and stall timeouts 3 s, 3 strikes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from serve_app.core.replica import ReplicaTag
from serve_app.core.wire import unpack
from tests.fakes import faulty

pytestmark = pytest.mark.integration

BOARD_APP = "shared-breakers-test"  # the Serve app name the routers' board is named after
SLOTS = {"zonos": "BoardZonos", "flite": "BoardFlite"}
CODES = {"zonos": 0, "flite": 1}


class RouterHost:
    """One router in its own process, composed from the cluster's handles like the ingress's."""

    def __init__(self) -> None:
        from ray import serve

        from config.settings import get_settings
        from serve_app.router.board_actor import cluster_sharing
        from serve_app.router.clients import clients_from_handles
        from serve_app.router.compose import compose_router

        settings = get_settings()
        handles = {slot: serve.get_deployment_handle(key, app_name=f"sb-{slot}") for slot, key in SLOTS.items()}
        self.sharing = cluster_sharing(settings, BOARD_APP)
        assert self.sharing is not None
        self.router = compose_router(settings, clients_from_handles(handles, {}), self.sharing)

    async def synced(self) -> bool:
        return await self.sharing.synced(20.0)

    async def speak(self, text: str) -> list[int]:
        from serve_app.router import SpeechRequest

        pcm, _ = await self.router.speak(SpeechRequest(text, sample_rate=faulty.SAMPLE_RATE, normalize=False))
        return [run.code for run in faulty.decode_runs(pcm)]

    async def state(self, engine: str) -> str:
        return self.router.breaker(engine).state.value

    async def close(self) -> None:
        await self.router.aclose()


@pytest.fixture(scope="module")
def fault_board(serve_port: int) -> Iterator[Any]:
    """The FaultBoard actor and one Serve app per fault engine (no ingress: routers live in actors)."""
    import ray
    from ray import serve

    from serve_app.deployments import EngineDeployment

    board = faulty.board(create=True)
    for slot, key in SLOTS.items():
        ray.get(board.set.remote(key, {"code": CODES[slot]}))
        app = EngineDeployment.options(name=key, ray_actor_options={"num_cpus": 0.05}).bind(
            "tests.fakes.faulty:FaultyEngine"
        )
        serve.run(app, name=f"sb-{slot}", route_prefix=None, blocking=False)
    try:
        yield board
    finally:
        for slot in SLOTS:
            serve.delete(f"sb-{slot}")
        ray.kill(board)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_dead_engine_is_skipped_by_both_routers_after_max_strikes_in_total_and_back_after_one_probe(
    fault_board: Any,
) -> None:
    import ray

    from serve_app.router.board_actor import BOARD_NAMESPACE, board_name

    def log(slot: str) -> list[tuple[str, str]]:
        return list(ray.get(fault_board.log.remote(SLOTS[slot])))

    def user_calls() -> int:
        return sum(1 for text, event in log("zonos") if event == "start" and text != "Probe.")

    host = ray.remote(num_cpus=0)(RouterHost)
    a, b = host.remote(), host.remote()  # type: ignore[attr-defined]
    try:
        assert ray.get([a.synced.remote(), b.synced.remote()]) == [True, True]
        ray.get(fault_board.set.remote(SLOTS["zonos"], {"code": CODES["zonos"], "mode": "error"}))

        # One strike from a, one from b, one from a: three in total, neither router has three.
        assert ray.get(a.speak.remote("First.")) == [CODES["flite"]]
        assert ray.get(b.speak.remote("Second.")) == [CODES["flite"]]
        assert ray.get(a.speak.remote("Third.")) == [CODES["flite"]]
        wait_until(lambda: ray.get([a.state.remote("zonos"), b.state.remote("zonos")]) == ["open", "open"],
                   10.0, "both routers should know the engine is open")
        assert user_calls() == 3

        assert ray.get(b.speak.remote("Skipped by b.")) == [CODES["flite"]]
        assert ray.get(a.speak.remote("Skipped by a.")) == [CODES["flite"]]
        assert user_calls() == 3  # skipped at no cost by both

        ray.get(fault_board.set.remote(SLOTS["zonos"], {"code": CODES["zonos"]}))  # healed
        wait_until(lambda: ray.get([a.state.remote("zonos"), b.state.remote("zonos")]) == ["closed", "closed"],
                   20.0, "both routers should route to the engine again after its probe")
        assert log("zonos").count(("Probe.", "done")) == 1  # one successful probe closed it for both
        assert ray.get(a.speak.remote("Back for a.")) == [CODES["zonos"]]
        assert ray.get(b.speak.remote("Back for b.")) == [CODES["zonos"]]
        board = ray.get_actor(board_name(BOARD_APP), namespace=BOARD_NAMESPACE)
        view = ray.get(board.snapshot.remote()).engines["zonos"]
        assert view.state == "closed" and view.times_opened >= 1 and view.last_replica  # strikes named a replica
    finally:
        ray.get([a.close.remote(), b.close.remote()])
        ray.kill(a)
        ray.kill(b)


FLAKY = "FlakyReplica"


@pytest.fixture(scope="module")
def flaky(serve_port: int) -> Iterator[tuple[Any, Any]]:
    """One fault engine replica that fails its health check after 2 consecutive engine errors."""
    import ray
    from ray import serve

    from serve_app.deployments import EngineDeployment

    board = faulty.board(create=True)
    ray.get(board.set.remote(FLAKY, {}))
    app = EngineDeployment.options(
        name=FLAKY,
        health_check_period_s=1,
        health_check_timeout_s=5,
        ray_actor_options={"num_cpus": 0.05, "runtime_env": {"env_vars": {"TTS_REPLICA_MAX_FAILURES": "2"}}},
    ).bind("tests.fakes.faulty:FaultyEngine")
    handle = serve.run(app, name="flaky-replica", route_prefix=None, blocking=False)
    try:
        yield handle, board
    finally:
        serve.delete("flaky-replica")


async def test_a_replica_that_keeps_failing_fails_its_health_check_and_is_replaced(flaky: tuple[Any, Any]) -> None:
    handle, board = flaky

    async def call(text: str) -> tuple[str, BaseException | None]:
        stream = handle.options(stream=True).synthesize.remote(text, None, None, 1.0, tag_replica=True)
        tag = unpack(await asyncio.wait_for(stream.__anext__(), 30))[0]  # the first item of the first message
        assert isinstance(tag, ReplicaTag)
        try:
            async for _ in stream:
                pass
        except Exception as exc:  # the engine's injected failure, through Serve
            return tag.replica, exc
        return tag.replica, None

    healthy, error = await call("Fine.")
    assert error is None
    await board.set.remote(FLAKY, {"mode": "error"})  # from here the engine keeps failing
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        replica, error = await call("Fails again.")
        assert error is not None
        if replica != healthy:
            break  # Serve replaced the replica whose health check failed
        assert loop.time() < deadline, "Serve did not replace the failing replica"
        await asyncio.sleep(0.3)
    await board.set.remote(FLAKY, {})
    replica, error = await call("The new replica speaks.")
    assert error is None and replica != healthy
