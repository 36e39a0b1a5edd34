"""Clients that hang up mid-request, through the live Serve application on the embedded SQLite.

A browser tab reloaded while its requests are in flight, or a load balancer giving up, cancels
requests whose handlers are inside a database transaction; Serve cancels such a request more than
once. This once left a pooled SQLite connection holding the write lock for good: every later
request touching the database answered 503 "database is locked" (found by the playground's
reload test). Here requests that read the database are cut at every point of their life, and the
database must keep answering.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.integration

# Each reads the database (voice list, health probe) or sits beside such reads (engines, readiness).
PATHS = ("/v1/audio/voices", "/health/db", "/health/ready", "/v1/engines")


async def _cut(url: str, after_s: float) -> None:
    """Send one request on a connection of its own and drop it `after_s` seconds in, answered or not."""
    try:
        async with httpx.AsyncClient(timeout=after_s) as client:
            await client.get(url)
    except httpx.HTTPError:
        pass


def test_requests_cut_mid_flight_leave_the_database_answering(serve_url: str) -> None:
    async def main() -> list[str]:
        failures: list[str] = []
        async with httpx.AsyncClient(base_url=serve_url, timeout=30) as client:
            for round_ in range(60):
                after_s = 0.001 + (round_ % 10) * 0.003  # across the whole life of a request
                await asyncio.gather(*(_cut(serve_url + path, after_s) for path in PATHS * 3))
                for path in ("/health/db", "/v1/audio/voices"):
                    response = await client.get(path)
                    if response.status_code != 200:
                        failures.append(f"round {round_}: {path} {response.status_code} {response.text[:160]}")
        return failures

    assert asyncio.run(main()) == []
