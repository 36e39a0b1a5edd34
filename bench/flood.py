"""Flood: N concurrent long answers beyond capacity; each is served in full or refused before audio.

    python -m bench.flood --url http://127.0.0.1:8000 [--levels 25,50,100,200,300] [--engine flite]

For each level N it sends N concurrent requests of the same multi-sentence text (pinned to one
engine, `pcm`) and sorts every response into one of:
- complete: 200, and the body is exactly as long as the unloaded answer (Flite makes the same
  number of samples every time; the values can differ in the last bit with chunk boundaries),
  or at least 90% as long when the engine is not deterministic;
- refused: 503 (or 429) with `Retry-After`, before any audio;
- cut: anything else after a 200 (a body that ends early, a connection closed mid-answer) - the
  failure this benchmark exists to catch; and errors (other statuses, a refusal without
  Retry-After).
It also reads the engine's breaker before and after (it must stay closed: busy is not broken) and
times the first byte of every served answer. The verdict: zero cut streams and errors at every
level, the breaker closed, and the largest N whose served answers had p95 time to first byte at
most `--ttfb-factor` (5) x the unloaded p50. Writes flood.json and flood.png to `--report-dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TEXT = (
    "Thanks for calling the support line, I can help you with that today. "
    "First, I will look up the order you placed last week and check its status. "
    "It left our warehouse on Monday morning and is now with the courier. "
    "The courier expects to deliver it on Thursday between nine and noon. "
    "If nobody is home, they will leave a card with a number to call. "
    "Is there anything else I can help you with while you are on the line?"
)
REFUSED = (503, 429)


@dataclass
class Outcome:
    """One response: how it ended, its first-byte time when it carried audio, and its size."""

    kind: str  # complete | refused | cut | error
    status: int | None
    ttfb_s: float | None = None
    nbytes: int = 0
    detail: str = ""


@dataclass
class Level:
    """Every response of one flood of `n` concurrent requests."""

    n: int
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def ttfb_p95_ms(self) -> float | None:
        times = sorted(o.ttfb_s for o in self.outcomes if o.kind == "complete" and o.ttfb_s is not None)
        if not times:
            return None
        return round(times[min(len(times) - 1, int(0.95 * len(times)))] * 1000, 1)

    def summary(self) -> dict[str, Any]:
        details = sorted({o.detail for o in self.outcomes if o.kind in ("cut", "error") and o.detail})
        return {
            "n": self.n,
            "complete": self.count("complete"),
            "refused": self.count("refused"),
            "cut": self.count("cut"),
            "errors": self.count("error"),
            "ttfb_p95_ms": self.ttfb_p95_ms(),
            "wall_s": round(self.wall_s, 2),
            "problems": details[:5],
        }


def speech_body(text: str, engine: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}
    if engine:
        body["engine"] = engine
    return body


async def one(client: httpx.AsyncClient, path: str, body: dict[str, Any], reference: bytes) -> Outcome:
    """Send one request and classify how it ended (see the module docstring)."""
    started = time.perf_counter()
    ttfb: float | None = None
    received = bytearray()
    status: int | None = None
    try:
        async with client.stream("POST", path, json=body) as response:
            status = response.status_code
            if status in REFUSED:
                await response.aread()
                if response.headers.get("retry-after"):
                    return Outcome("refused", status)
                return Outcome("error", status, detail=f"{status} without Retry-After")
            if status != 200:
                text = (await response.aread())[:200].decode("utf-8", "replace")
                return Outcome("error", status, detail=f"{status}: {text}")
            async for chunk in response.aiter_raw():
                if ttfb is None and chunk:
                    ttfb = time.perf_counter() - started
                received.extend(chunk)
    except httpx.HTTPError as exc:
        kind = "cut" if status == 200 else "error"
        return Outcome(kind, status, ttfb, len(received), f"{type(exc).__name__}: {str(exc)[:120]}")
    complete = len(received) == len(reference) if reference else len(received) > 0
    if not complete:
        return Outcome("cut", status, ttfb, len(received), f"{len(received)} of {len(reference)} bytes")
    return Outcome("complete", status, ttfb, len(received))


async def flood(client: httpx.AsyncClient, path: str, body: dict[str, Any], n: int, reference: bytes) -> Level:
    """`n` requests at once; returns when every one has ended."""
    level = Level(n)
    started = time.perf_counter()
    level.outcomes = list(await asyncio.gather(*(one(client, path, body, reference) for _ in range(n))))
    level.wall_s = time.perf_counter() - started
    return level


async def unloaded(client: httpx.AsyncClient, path: str, body: dict[str, Any], samples: int) -> tuple[bytes, float]:
    """The answer alone on the service (the reference body) and its median first-byte time."""
    reference = b""
    times: list[float] = []
    for _ in range(samples):
        outcome = await one(client, path, body, b"")
        if outcome.kind != "complete" or outcome.ttfb_s is None:
            raise RuntimeError(f"the unloaded request failed: {outcome}")
        times.append(outcome.ttfb_s)
    async with client.stream("POST", path, json=body) as response:
        reference = await response.aread()
    return reference, statistics.median(times)


async def breaker_of(client: httpx.AsyncClient, base: str, engine: str) -> dict[str, Any]:
    """The engine's breaker as one ingress replica sees it (`/v1/engines`)."""
    listing = (await client.get(f"{base}/v1/engines")).json()
    for entry in listing.get("data", []):
        if entry.get("name") == engine:
            return {key: entry.get(key) for key in ("state", "strikes", "failures", "busy_skips")}
    return {"state": None}


@dataclass
class FloodConfig:
    base: str  # service root, e.g. http://127.0.0.1:8000 (or .../faults for an app at a prefix)
    levels: tuple[int, ...] = (25, 50, 100, 200, 300)
    engine: str | None = "flite"
    text: str = TEXT
    unloaded_samples: int = 5
    ttfb_factor: float = 5.0
    deterministic: bool = True  # the answer's length is exact (Flite); else within 10%
    api_key: str | None = None
    report_dir: Path | None = None
    quiet: bool = False


async def run_flood(config: FloodConfig) -> dict[str, Any]:
    """Run every level and return the report (also written to `report_dir` when given)."""
    path = f"{config.base}/v1/audio/speech"
    body = speech_body(config.text, config.engine)
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    most = max(config.levels)
    limits = httpx.Limits(max_connections=most + 8, max_keepalive_connections=most + 8)
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        reference, p50 = await unloaded(client, path, body, config.unloaded_samples)
        compare = reference if config.deterministic else b""
        engine = config.engine or ""
        before = await breaker_of(client, config.base, engine) if engine else {}
        levels: list[Level] = []
        for n in config.levels:
            level = await flood(client, path, body, n, compare)
            if not config.deterministic:  # at least the unloaded answer's length
                for outcome in level.outcomes:
                    if outcome.kind == "complete" and outcome.nbytes < len(reference) * 0.9:
                        outcome.kind, outcome.detail = "cut", f"{outcome.nbytes} of ~{len(reference)} bytes"
            levels.append(level)
            if not config.quiet:
                print(json.dumps(level.summary()), flush=True)
        after = await breaker_of(client, config.base, engine) if engine else {}
    limit_ms = round(p50 * 1000 * config.ttfb_factor, 1)
    within = [lv.n for lv in levels if lv.count("complete") and (lv.ttfb_p95_ms() or 0) <= limit_ms]
    cut = sum(lv.count("cut") for lv in levels)
    errors = sum(lv.count("error") for lv in levels)
    breaker_closed = after.get("state") in (None, "closed")
    strikes = (after.get("failures") or 0) - (before.get("failures") or 0)
    report = {
        "engine": config.engine,
        "text_chars": len(config.text),
        "unloaded": {"ttfb_p50_ms": round(p50 * 1000, 1), "answer_bytes": len(reference)},
        "levels": [lv.summary() for lv in levels],
        "breaker": {"before": before, "after": after},
        "verdict": {
            "passed": cut == 0 and errors == 0 and breaker_closed and strikes == 0,
            "cut_streams": cut,
            "errors": errors,
            "breaker_closed": breaker_closed,
            "strikes_during_flood": strikes,
            "ttfb_limit_ms": limit_ms,
            "largest_n_within_ttfb_limit": max(within) if within else None,
        },
    }
    if config.report_dir is not None:
        write_report(report, config.report_dir)
    return report


def write_report(report: dict[str, Any], directory: Path) -> None:
    """flood.json and flood.png: outcomes per level and the served answers' p95 first byte."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flood.json").write_text(json.dumps(report, indent=2))
    levels = report["levels"]
    labels = [str(lv["n"]) for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0] * len(levels)
    for kind, colour in (("complete", "tab:green"), ("refused", "tab:orange"), ("cut", "tab:red"), ("errors", "k")):
        values = [lv[kind] for lv in levels]
        left.bar(labels, values, bottom=bottom, color=colour, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.set_xlabel("concurrent requests")
    left.set_ylabel("responses")
    left.set_title("every answer complete or refused before audio")
    left.legend()
    right.plot(labels, [lv["ttfb_p95_ms"] or 0 for lv in levels], marker="o", label="p95 first byte (served)")
    right.axhline(report["verdict"]["ttfb_limit_ms"], color="tab:red", linestyle="--", label="5x unloaded p50")
    right.set_xlabel("concurrent requests")
    right.set_ylabel("ms")
    right.set_title("time to first byte of served answers")
    right.legend()
    fig.tight_layout()
    fig.savefig(directory / "flood.png", dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service root")
    parser.add_argument("--levels", default="25,50,100,200,300", help="concurrent requests per flood")
    parser.add_argument("--engine", default="flite", help="pinned engine ('' for the fallback chain)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--ttfb-factor", type=float, default=5.0)
    parser.add_argument("--report-dir", type=Path, default=Path("bench-results/flood"))
    args = parser.parse_args(argv)
    config = FloodConfig(
        base=args.url.rstrip("/"),
        levels=tuple(int(n) for n in args.levels.split(",") if n.strip()),
        engine=args.engine or None,
        deterministic=args.engine == "flite",
        api_key=args.api_key,
        ttfb_factor=args.ttfb_factor,
        report_dir=args.report_dir,
    )
    report = asyncio.run(run_flood(config))
    print(json.dumps({"unloaded": report["unloaded"], "verdict": report["verdict"]}, indent=2))
    print(f"report: {args.report_dir}/flood.json, plot: {args.report_dir}/flood.png")
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
