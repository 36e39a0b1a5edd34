"""State gauges are re-published on a timer (Ray drops gauges that are not set for a while)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app import gauges
from serve_app.core.breaker import BreakerState
from serve_app.engines.flite import FliteEngine
from serve_app.router import FallbackRouter, RouterConfig
from serve_app.router.clients import LocalEngineClient, UnavailableEngineClient


class RecordingGauge:
    def __init__(self) -> None:
        self.values: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values.append((value, tags or {}))


class FakeMonitor:
    def __init__(self) -> None:
        self.published = 0

    def publish(self) -> None:
        self.published += 1


class FakeDatabase:
    def __init__(self) -> None:
        self.monitor = FakeMonitor()


async def test_refresher_republishes_breaker_and_pool_gauges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gauges, "GAUGE_REFRESH_S", 0.01)
    router = FallbackRouter(
        {"zonos": UnavailableEngineClient("zonos", "no GPU"), "flite": LocalEngineClient(FliteEngine())},
        RouterConfig(chain=("zonos", "flite")),
    )
    gauge = RecordingGauge()
    router.metrics._breaker = gauge  # type: ignore[attr-defined]
    database = FakeDatabase()
    async with gauges.refreshing(router, database):
        await asyncio.sleep(0.1)
    by_engine = {tags["engine"]: value for value, tags in gauge.values}
    assert by_engine == {"zonos": 2.0, "flite": 0.0}  # open, closed
    assert sum(1 for _, tags in gauge.values if tags["engine"] == "flite") >= 3  # repeated, not once
    assert database.monitor.published >= 3
    assert router.breaker("zonos").state is BreakerState.OPEN
    await router.aclose()


async def test_publish_once_survives_a_missing_database() -> None:
    router = FallbackRouter({"flite": LocalEngineClient(FliteEngine())})
    gauge = RecordingGauge()
    router.metrics._breaker = gauge  # type: ignore[attr-defined]
    gauges.publish_once(router, None)
    assert gauge.values == [(0.0, {"engine": "flite"})]  # the router's gauges still went out
    gauges.publish_once(None, None)  # nothing to publish at all is fine too
    await router.aclose()
