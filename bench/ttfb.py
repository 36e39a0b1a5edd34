"""Time to first byte and throughput through Ray Serve, against the raw flite binary, in one run.

    python -m bench.ttfb [--runs 30] [--requests 300] [--concurrency 20]

Measures, on this machine and in this order (never concurrently, so they do not steal CPU
from each other):
1. the raw `flite` binary on one sentence (process start to first stdout byte, and to exit);
2. the Serve application deployed from serve_config.yaml with the chain set to Flite only,
   streamed `pcm` over HTTP: one sentence, and a 20-sentence input;
3. throughput at `--concurrency` concurrent one-sentence requests, Serve against plain uvicorn
   running the same Flite engine code (bench/plain_app.py).
Prints medians and the ratios the foundation issue sets targets for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import Timing, free_port, median_ms, timed_post, wait_http

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
LONG = " ".join(f"This is sentence number {i + 1} of a longer spoken answer." for i in range(20))


def raw_flite(runs: int) -> tuple[list[float], list[float]]:
    """TTFB and total of the flite binary writing WAV to stdout."""
    ttfbs, totals = [], []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.Popen(
            ["flite", "-voice", "slt", "-o", "/dev/stdout", "-t", SENTENCE], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        ttfbs.append(time.perf_counter() - started)
        proc.stdout.read()
        proc.wait()
        totals.append(time.perf_counter() - started)
        assert first
    return ttfbs, totals


async def sequential(url: str, text: str, runs: int) -> list[Timing]:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "engine": "flite"}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # warm-up: replicas, connection, voice registration
            await timed_post(client, url, body)
        return [await timed_post(client, url, body) for _ in range(runs)]


async def throughput(url: str, requests: int, concurrency: int) -> tuple[float, list[Timing]]:
    body = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(timed_post(client, url, body) for _ in range(concurrency)))  # warm-up
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        results: list[Timing] = []

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                results.append(await timed_post(client, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return requests / elapsed, results


def start_serve() -> tuple[str, object]:
    """A private Ray cluster with serve_config.yaml deployed, Flite-only chain."""
    os.environ.update({"TTS_ENGINE_CHAIN": "flite", "ENV": "development", "LOG_LEVEL": "WARNING"})
    os.environ.setdefault("DATABASE_URL", "sqlite+aiosqlite:////tmp/bench-ttfb-sessions.db")
    import ray

    from serve_app.launch import apply_cluster_environment, deploy_config, load_config

    apply_cluster_environment()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    url = deploy_config(load_config(port=free_port(), host="127.0.0.1"))
    wait_http(f"{url}/health")
    return url, ray


def start_uvicorn() -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.plain_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=Path(__file__).resolve().parents[1],
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/docs")
    return url, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    print(f"[1/4] raw flite binary x{args.runs}", flush=True)
    raw_ttfb, raw_total = raw_flite(args.runs)

    print("[2/4] plain uvicorn baseline", flush=True)
    plain_url, plain_proc = start_uvicorn()
    try:
        plain_one = asyncio.run(sequential(f"{plain_url}/v1/audio/speech", SENTENCE, args.runs))
        plain_rps, _ = asyncio.run(throughput(f"{plain_url}/v1/audio/speech", args.requests, args.concurrency))
    finally:
        plain_proc.terminate()
        plain_proc.wait()

    print("[3/4] starting Ray Serve (serve_config.yaml, chain=flite)", flush=True)
    url, ray = start_serve()
    try:
        print(f"[4/4] measuring through Serve at {url}", flush=True)
        speech = f"{url}/v1/audio/speech"
        one = asyncio.run(sequential(speech, SENTENCE, args.runs))
        long = asyncio.run(sequential(speech, LONG, max(5, args.runs // 3)))
        serve_rps, serve_conc = asyncio.run(throughput(speech, args.requests, args.concurrency))
    finally:
        ray.shutdown()  # type: ignore[attr-defined]

    figures = {
        "raw_flite_ttfb_ms": median_ms(raw_ttfb),
        "raw_flite_total_ms": median_ms(raw_total),
        "plain_uvicorn_ttfb_ms": median_ms([t.ttfb_s for t in plain_one]),
        "serve_ttfb_1_sentence_ms": median_ms([t.ttfb_s for t in one]),
        "serve_total_1_sentence_ms": median_ms([t.total_s for t in one]),
        "serve_ttfb_20_sentences_ms": median_ms([t.ttfb_s for t in long]),
        "serve_total_20_sentences_ms": median_ms([t.total_s for t in long]),
        "serve_rps": round(serve_rps, 1),
        "plain_uvicorn_rps": round(plain_rps, 1),
        "serve_concurrent_ttfb_p50_ms": median_ms([t.ttfb_s for t in serve_conc]),
    }
    figures["ratio_serve_vs_raw_ttfb"] = round(figures["serve_ttfb_1_sentence_ms"] / figures["raw_flite_ttfb_ms"], 3)
    figures["ratio_serve_vs_raw_total"] = round(figures["serve_total_1_sentence_ms"] / figures["raw_flite_total_ms"], 3)
    figures["ratio_20_vs_1_sentence_ttfb"] = round(
        figures["serve_ttfb_20_sentences_ms"] / figures["serve_ttfb_1_sentence_ms"], 3
    )
    figures["ratio_throughput_serve_vs_uvicorn"] = round(serve_rps / plain_rps, 3)
    print()
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print()
    print("targets: ratio_serve_vs_raw_ttfb <= 1.3, ratio_20_vs_1_sentence_ttfb <= 1.5, "
          "ratio_throughput_serve_vs_uvicorn >= 0.9")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
