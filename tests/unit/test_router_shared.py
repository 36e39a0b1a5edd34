"""Two routers sharing one breaker board in-process: what one learns, every one knows.

The routers talk to the same fault engines (one control per engine, like one deployment reached
by several ingress replicas) and follow one `BreakerBoard` through `SharedBreakers`, exactly as in
the cluster, minus the actor. The engines log every text they were asked to speak, so the tests
count strikes and probes where they happen.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest

from serve_app.core.breaker import BreakerConfig, BreakerState
from serve_app.core.breaker_board import BreakerBoard
from serve_app.router import FallbackRouter, RouterConfig, SpeechRequest
from serve_app.router.clients import EngineClient, LocalEngineClient
from serve_app.router.shared import BoardApi, SharedBreakers
from tests.fakes.faulty import SAMPLE_RATE, FaultPlan, FaultyEngine, LocalControl, decode_runs
from tests.support import eventually

CHAIN = ("zonos", "flite")
CONFIG = RouterConfig(chain=CHAIN, cooldown_s=0.3, max_cooldown_s=1.2, ttfb_timeout_s=0.5, stall_timeout_s=0.5)
PROBE = CONFIG.probe_text


class Cluster:
    """One set of engines, one board, and the routers composed over them."""

    def __init__(self) -> None:
        self.controls = {name: LocalControl(FaultPlan(code=i)) for i, name in enumerate(CHAIN)}
        self.board = BreakerBoard(BreakerConfig(CONFIG.max_strikes, CONFIG.cooldown_s, CONFIG.max_cooldown_s),
                                  probe_lease_s=5.0)
        self.routers: list[FallbackRouter] = []
        self.links: list[SharedBreakers] = []

    async def router(self, connect: Callable[[], object] | None = None) -> FallbackRouter:
        async def to_board() -> BoardApi:
            return self.board

        link = SharedBreakers(connect or to_board, watch_timeout_s=1.0, call_timeout_s=1.0)  # type: ignore[arg-type]
        clients: dict[str, EngineClient] = {
            name: LocalEngineClient(FaultyEngine(name, self.controls[name])) for name in CHAIN
        }
        router = FallbackRouter(clients, CONFIG, shared=link)
        self.routers.append(router)
        self.links.append(link)
        return router

    def plan(self, name: str, **plan: object) -> None:
        self.controls[name].set(FaultPlan(code=CHAIN.index(name), **plan))  # type: ignore[arg-type]

    def calls(self, name: str, text: str | None = None) -> int:
        log = self.controls[name].log
        return sum(1 for t, e in log if e == "start" and (t == text if text else t != PROBE))

    async def aclose(self) -> None:
        for router in self.routers:
            await router.aclose()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    made = Cluster()
    yield made
    await made.aclose()


async def speak(router: FallbackRouter, text: str) -> list[int]:
    pcm, _ = await router.speak(SpeechRequest(text, sample_rate=SAMPLE_RATE, normalize=False))
    return [run.code for run in decode_runs(pcm)]


async def test_strikes_from_both_routers_open_the_engine_for_both_and_one_probe_closes_it(
    cluster: Cluster,
) -> None:
    a, b = await cluster.router(), await cluster.router()
    for link in cluster.links:
        assert await link.synced(2.0)
    cluster.plan("zonos", mode="error")
    # Three failures in total, spread over two routers: neither reached max_strikes on its own.
    assert await speak(a, "First.") == [1]
    await eventually(lambda: cluster.board.version >= 1)
    assert await speak(b, "Second.") == [1]
    await eventually(lambda: cluster.board.version >= 2)
    assert await speak(a, "Third.") == [1]
    await eventually(lambda: all(r.breaker("zonos").state is BreakerState.OPEN for r in (a, b)))
    assert cluster.calls("zonos") == 3
    status = {e["name"]: e for e in await b.engines_status()}["zonos"]
    assert status["breaker"]["shared"] is True and status["breaker"]["cluster"]["strikes"] == 3

    # Both skip it now, at no cost.
    assert await speak(b, "Skipped by b.") == [1]
    assert await speak(a, "Skipped by a.") == [1]
    assert cluster.calls("zonos") == 3

    cluster.plan("zonos")  # healed: one probe, by one router, brings it back for both
    await eventually(lambda: all(r.breaker("zonos").state is BreakerState.CLOSED for r in (a, b)))
    assert cluster.calls("zonos", PROBE) == 1
    assert await speak(a, "Back for a.") == [0]
    assert await speak(b, "Back for b.") == [0]


async def test_a_new_router_starts_from_what_the_cluster_knows(cluster: Cluster) -> None:
    first = await cluster.router()
    assert await cluster.links[0].synced(2.0)
    cluster.plan("zonos", mode="error", recover_after_s=60.0)
    for i in range(3):
        await speak(first, f"Fails {i}.")
    await eventually(lambda: first.breaker("zonos").state is BreakerState.OPEN)

    late = await cluster.router()  # a new conversation: never spoke to zonos, speaks at once
    assert await speak(late, "Straight to the fallback.") == [1]
    assert late.breaker("zonos").state is BreakerState.OPEN
    assert cluster.calls("zonos") == 3


async def test_a_success_anywhere_resets_the_cluster_count(cluster: Cluster) -> None:
    a, b = await cluster.router(), await cluster.router()
    for link in cluster.links:
        assert await link.synced(2.0)
    cluster.plan("zonos", mode="error", fail_text="Bad")
    await speak(a, "Bad one.")
    await speak(a, "Bad two.")
    await eventually(lambda: b.breaker("zonos").strikes == 2)
    assert await speak(b, "Good.") == [0]
    await eventually(lambda: a.breaker("zonos").strikes == 0)
    await speak(a, "Bad three.")
    await eventually(lambda: cluster.board.version >= 4)
    assert all(r.breaker("zonos").state is BreakerState.CLOSED for r in (a, b))


async def test_without_the_board_each_router_goes_on_with_its_own_breakers(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0

    async def unreachable() -> BoardApi:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("no board here")

    caplog.set_level(logging.INFO, logger="serve_app.router.shared")
    router = await cluster.router(unreachable)
    cluster.plan("zonos", mode="error")
    for i in range(3):
        assert await speak(router, f"Local {i}.") == [1]
    assert router.breaker("zonos").state is BreakerState.OPEN  # the local breaker decided alone
    await eventually(lambda: attempts >= 2)  # it keeps trying, with backoff
    lost = [r for r in caplog.records if "breaker board unreachable" in r.getMessage()]
    assert len(lost) == 1  # said once, not on every retry
    cluster.plan("zonos")
    await eventually(lambda: router.breaker("zonos").state is BreakerState.CLOSED)  # its own probe
