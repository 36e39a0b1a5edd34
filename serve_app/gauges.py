"""Keeps state gauges alive on Ray's Prometheus endpoint.

Ray's metrics agent stops exporting a gauge a couple of report intervals after it was last set, so
a gauge that only changes on events (a breaker that stays closed, an idle pool) vanishes from the
dashboard and its alerts read "no data". Each ingress replica re-publishes them on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from serve_app.core.tasks import running
from serve_app.router import FallbackRouter

logger = logging.getLogger(__name__)

GAUGE_REFRESH_S = 5.0


def publish_once(router: FallbackRouter | None, database: Any) -> None:
    """Publish every state gauge this replica owns; a failure here never touches requests."""
    if router is not None:
        router.publish_gauges()
    monitor = getattr(database, "monitor", None)
    if monitor is not None:
        monitor.publish()


@contextlib.asynccontextmanager
async def refreshing(router: FallbackRouter | None, database: Any) -> AsyncIterator[None]:
    """Re-publish the gauges every GAUGE_REFRESH_S while the app runs."""

    async def loop() -> None:
        while True:
            try:
                publish_once(router, database)
            except Exception as exc:  # metrics must never break the service
                logger.debug("gauge refresh failed: %s", exc)
            await asyncio.sleep(GAUGE_REFRESH_S)

    async with running(loop(), "gauge-refresher"):
        yield
