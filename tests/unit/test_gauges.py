"""State gauges are re-published on a timer (Ray drops gauges that are not set for a while)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from config.settings import load_settings
from serve_app import gauges
from serve_app.api.deps import Services
from serve_app.breaker import BreakerState
from serve_app.engine_client import LocalEngineClient, UnavailableEngineClient
from serve_app.engines.flite import FliteEngine
from serve_app.router import FallbackRouter, RouterConfig


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
    services: Any = Services(settings=load_settings(_env_file=None), router=router, database=FakeDatabase())
    stop = await gauges.gauge_refresher(services)
    await asyncio.sleep(0.1)
    await stop()
    by_engine = {tags["engine"]: value for value, tags in gauge.values}
    assert by_engine == {"zonos": 2.0, "flite": 0.0}  # open, closed
    assert sum(1 for _, tags in gauge.values if tags["engine"] == "flite") >= 3  # repeated, not once
    assert services.database.monitor.published >= 3
    assert router.breaker("zonos").state is BreakerState.OPEN
    await router.aclose()


def test_publish_once_survives_a_missing_database() -> None:
    gauges.publish_once(Services(settings=load_settings(_env_file=None)))
