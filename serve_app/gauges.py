"""Keeps state gauges alive on Ray's Prometheus endpoint.

Ray's metrics agent stops exporting a gauge a couple of report intervals after it was last set, so
a gauge that only changes on events (a breaker that stays closed, an idle pool) vanishes from the
dashboard and its alerts read "no data". Each ingress replica re-publishes them on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from serve_app.api.deps import Services

logger = logging.getLogger(__name__)

GAUGE_REFRESH_S = 5.0


def publish_once(services: Services) -> None:
    """Publish every state gauge this replica owns; a failure here never touches requests."""
    if services.router is not None:
        services.router.publish_gauges()
    monitor = getattr(services.database, "monitor", None)
    if monitor is not None:
        monitor.publish()


async def gauge_refresher(services: Services) -> Callable[[], Awaitable[None]]:
    """Lifespan hook: start the refresh loop; the returned closer stops it."""

    async def loop() -> None:
        while True:
            try:
                publish_once(services)
            except Exception as exc:  # metrics must never break the service
                logger.debug("gauge refresh failed: %s", exc)
            await asyncio.sleep(GAUGE_REFRESH_S)

    task = asyncio.create_task(loop(), name="gauge-refresher")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
