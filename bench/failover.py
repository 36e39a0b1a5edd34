"""Time to first byte with a dead first engine, before and after its breaker opens, in one run.

    python -m bench.failover [--samples 25] [--ttfb-timeout 0.5]

In-process routers (no Ray cluster, no HTTP): the quantity measured is what the router adds,
and an HTTP hop would add the same constant to every figure. The healthy engine is the real
Flite engine (libflite or the flite binary, as configured); the dead first engine is the fault
engine of `tests.fakes.faulty`, in two flavours:
- `error`: fails at once (connection refused, crashed replica);
- `hang`: accepts the request and never answers (black-holed network), so the router waits for
  its time-to-first-byte timeout (`--ttfb-timeout`) before it falls back.

For each flavour it measures, interleaved in a shuffled order per round so load drift (this is
a shared 2-core machine) hits all series alike:
- direct: a request pinned to the healthy engine (`engine="flite"`);
- before open: the first request of a fresh router, whose breaker on the dead engine is closed;
- after open: requests once three strikes opened the breaker (cooldown far longer than the run,
  so no probe interferes).
It prints medians and the ratio after-open / direct (target: at most 1.15).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import time

from config.settings import get_settings
from serve_app.core.breaker import BreakerState
from serve_app.engines.registry import build_engine
from serve_app.router import FallbackRouter, RouterConfig, SpeechRequest
from serve_app.router.clients import LocalEngineClient
from tests.fakes.faulty import FaultPlan, FaultyEngine, LocalControl

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
TARGET_RATIO = 1.15


def make_router(healthy: LocalEngineClient, dead_mode: str, ttfb_timeout: float) -> FallbackRouter:
    dead = LocalEngineClient(FaultyEngine("zonos", LocalControl(FaultPlan(mode=dead_mode))))
    config = RouterConfig(
        chain=("zonos", "flite"), ttfb_timeout_s=ttfb_timeout, cooldown_s=3600.0, max_cooldown_s=3600.0
    )
    return FallbackRouter({"zonos": dead, "flite": healthy}, config)


async def ttfb(router: FallbackRouter, engine: str | None = None) -> float:
    """Seconds from the call to the first audio chunk; the rest of the stream is drained."""
    started = time.perf_counter()
    first: float | None = None
    async for chunk in router.synthesize(SpeechRequest(SENTENCE, engine=engine, sample_rate=24000)):
        if first is None:
            first = time.perf_counter() - started
            if engine is None and chunk.engine != "flite":
                raise RuntimeError(f"expected a fallback to flite, got {chunk.engine}")
    if first is None:
        raise RuntimeError("no audio")
    return first


async def open_breaker(router: FallbackRouter) -> None:
    for _ in range(router.config.max_strikes):
        await ttfb(router)
    if router.breaker("zonos").state is not BreakerState.OPEN:
        raise RuntimeError("breaker did not open after max_strikes")


async def measure(healthy: LocalEngineClient, mode: str, samples: int, ttfb_timeout: float) -> dict[str, float]:
    opened = make_router(healthy, mode, ttfb_timeout)
    await open_breaker(opened)
    series: dict[str, list[float]] = {"direct": [], "before": [], "after": []}
    rng = random.Random(7)

    async def before_open() -> float:
        fresh = make_router(healthy, mode, ttfb_timeout)
        try:
            return await ttfb(fresh)
        finally:
            await fresh.aclose()

    runs = {
        "direct": lambda: ttfb(opened, engine="flite"),
        "after": lambda: ttfb(opened),
        "before": before_open,
    }
    try:
        for _ in range(samples):
            order = list(runs)
            rng.shuffle(order)
            for name in order:
                series[name].append(await runs[name]())
    finally:
        await opened.aclose()
    med = {name: statistics.median(values) for name, values in series.items()}
    med["ratio"] = med["after"] / med["direct"]
    return med


async def main(samples: int, ttfb_timeout: float) -> int:
    # Every "before open" sample strikes the dead engine on purpose: keep those warnings quiet.
    logging.getLogger("serve_app.router").setLevel(logging.ERROR)
    settings = get_settings()
    healthy = LocalEngineClient(build_engine("flite", settings))
    check = await healthy.check()
    if not check.available:
        print(f"flite is not available here: {check.reason}", file=sys.stderr)
        return 1
    warm = make_router(healthy, "error", ttfb_timeout)
    for _ in range(3):  # load the voice, warm caches
        await ttfb(warm, engine="flite")
    await warm.aclose()

    print(f"failover TTFB, in-process routers, healthy engine flite ({check.details or 'default backend'})")
    print(f"samples={samples} per series, dead-engine TTFB timeout={ttfb_timeout:.2f}s, target ratio <= {TARGET_RATIO}")
    print(f"{'dead engine':<12}{'direct ms':>12}{'before open ms':>17}{'after open ms':>16}{'after/direct':>15}")
    worst = 0.0
    for mode in ("error", "hang"):
        med = await measure(healthy, mode, samples, ttfb_timeout)
        worst = max(worst, med["ratio"])
        print(
            f"{mode:<12}{med['direct'] * 1000:>12.2f}{med['before'] * 1000:>17.2f}"
            f"{med['after'] * 1000:>16.2f}{med['ratio']:>15.3f}"
        )
    verdict = "meets" if worst <= TARGET_RATIO else "misses"
    print(f"worst after-open ratio {worst:.3f}: {verdict} the {TARGET_RATIO}x target")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=25)
    parser.add_argument("--ttfb-timeout", type=float, default=0.5)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.samples, args.ttfb_timeout)))
