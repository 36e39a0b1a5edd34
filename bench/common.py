"""Small shared pieces of the benchmarks: timing a streamed HTTP request, medians, free ports."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import httpx

from serve_app.launch import free_port, wait_http

__all__ = ["Timing", "free_port", "median_ms", "timed_post", "wait_http"]


@dataclass
class Timing:
    ttfb_s: float
    total_s: float
    nbytes: int


async def timed_post(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> Timing:
    """Time to first response body byte and to the end of a streamed POST."""
    started = time.perf_counter()
    ttfb = None
    nbytes = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise RuntimeError(f"HTTP {response.status_code} from {url}: {detail}")
        async for chunk in response.aiter_raw():
            if ttfb is None and chunk:
                ttfb = time.perf_counter() - started
            nbytes += len(chunk)
    total = time.perf_counter() - started
    return Timing(ttfb if ttfb is not None else total, total, nbytes)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


