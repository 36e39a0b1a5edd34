"""An engine host counts its own consecutive engine failures and fails its health check past the limit.

The host is built directly (no Serve) over a fault engine; the limit comes from
TTS_REPLICA_MAX_FAILURES like in a replica. Only the engine's own errors count: caller mistakes,
busy answers and cancelled requests do not, and one success ends the streak.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from config.settings import get_settings
from serve_app.core.errors import EngineUnavailable
from serve_app.core.replica import FailureStreak, ReplicaTag
from serve_app.core.wire import unpack
from serve_app.deployments import EngineHost
from tests.fakes.faulty import FaultPlan, FaultyEngine, LocalControl


@pytest.fixture
def limit_two(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TTS_REPLICA_MAX_FAILURES", "2")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def host_with(control: LocalControl) -> EngineHost:
    return EngineHost(lambda: FaultyEngine("faulty", control))


async def speak(host: EngineHost, text: str = "Hello there.") -> list[object]:
    return [item async for message in host.synthesize(text, None, None, 1.0) for item in unpack(message)]


async def fails(host: EngineHost, text: str = "Hello there.") -> BaseException:
    with pytest.raises(Exception) as caught:
        await speak(host, text)
    return caught.value


async def test_consecutive_engine_errors_fail_the_health_check(limit_two: None) -> None:
    control = LocalControl(FaultPlan(mode="error"))
    host = host_with(control)
    await fails(host)
    await host.check_health()  # one failure: still healthy
    await fails(host)
    with pytest.raises(EngineUnavailable, match="2 consecutive engine failures"):
        await host.check_health()
    control.set(FaultPlan())
    assert await speak(host)  # a success ends the streak
    await host.check_health()


async def test_a_success_in_between_resets_the_streak(limit_two: None) -> None:
    control = LocalControl(FaultPlan(mode="error", fail_text="Bad"))
    host = host_with(control)
    for _ in range(3):
        await fails(host, "Bad news.")
        assert await speak(host, "Good news.")
    await host.check_health()


async def test_caller_errors_busy_answers_and_cancellations_do_not_count(limit_two: None) -> None:
    control = LocalControl(FaultPlan(mode="invalid"))
    host = host_with(control)
    for mode in ("invalid", "busy"):
        control.set(FaultPlan(mode=mode))
        for _ in range(3):
            await fails(host)
    control.set(FaultPlan(mode="hang"))
    for _ in range(3):
        task = asyncio.create_task(speak(host))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await host.check_health()
    assert host.failures.count == 0


async def test_the_stream_names_the_replica_only_inside_serve(limit_two: None) -> None:
    host = host_with(LocalControl())
    items = [item async for item in host.synthesize("Hi.", None, None, 1.0, tag_replica=True)]
    assert not any(isinstance(item, ReplicaTag) for item in items)  # built outside a Serve replica


def test_zero_means_never() -> None:
    streak = FailureStreak(0)
    for _ in range(100):
        streak.failed("EngineUnavailable: down")
    assert streak.problem() is None
    with pytest.raises(ValueError):
        FailureStreak(-1)
