"""Pool event listeners: DEBUG log lines, in-process counters, and Ray metrics when in Ray.

The counters answer the operator's questions (is the pool leaking? are connections being
invalidated because the server went away?) in `/health/db`; the same numbers go to Ray's
Prometheus endpoint as `ray_db_pool_*` (no-ops outside a Ray worker, like serve_app/metrics.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from serve_app.metrics import _make

logger = logging.getLogger(__name__)

POOL_EVENTS = ("connect", "checkout", "checkin", "invalidate", "soft_invalidate", "close")


class PoolMonitor:
    """Listens to one engine's pool; `status()` is the pool's state plus event counts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.counts: Counter[str] = Counter()
        self._events = _make("Counter", "db_pool_events", "Database pool events by kind", ("event",))
        self._checked_out = _make("Gauge", "db_pool_checked_out", "Connections checked out of the pool", ())
        self._overflow = _make("Gauge", "db_pool_overflow", "Connections open beyond the pool size", ())
        pool = engine.sync_engine.pool
        for name in POOL_EVENTS:
            event.listen(pool, name, self._listener(name))

    def _listener(self, name: str) -> Any:
        def handle(*args: Any) -> None:
            self.counts[name] += 1
            self._events.inc(1, tags={"event": name})
            if name == "invalidate":
                error = args[2] if len(args) > 2 else None
                reason = str(error)[:200] if error else "no error"
                logger.debug("db pool invalidated a connection: %s", reason)
            else:
                logger.debug("db pool %s", name)
            if name == "checkout":
                # On check-in the pool still counts the returning connection; the periodic
                # `publish()` (serve_app/gauges.py) sets the settled value a moment later.
                self.publish()

        return handle

    def publish(self) -> None:
        """Set the pool gauges from the pool's own counts (also re-set periodically: Ray drops
        gauges that are not set for a while, which would blank the dashboard on an idle pool)."""
        status = self.pool_counts()
        self._checked_out.set(float(status.get("checked_out", 0)))
        self._overflow.set(float(max(status.get("overflow", 0), 0)))

    def pool_counts(self) -> dict[str, int]:
        """Size, checked in/out and overflow, where the pool class reports them."""
        pool = self.engine.sync_engine.pool
        counts: dict[str, int] = {}
        for key, method in (("size", "size"), ("checked_in", "checkedin"), ("checked_out", "checkedout"),
                            ("overflow", "overflow")):
            fn = getattr(pool, method, None)
            if callable(fn):
                counts[key] = int(fn())
        return counts

    def status(self) -> dict[str, Any]:
        return {
            **self.pool_counts(),
            "max_overflow": int(getattr(self.engine.sync_engine.pool, "_max_overflow", 0)),
            "events": {name: self.counts.get(name, 0) for name in POOL_EVENTS},
        }
