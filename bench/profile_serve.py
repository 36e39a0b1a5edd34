"""Where the CPU goes per request in the Serve app: per process, and per kind of work (py-spy).

    python -m bench.profile_serve [--concurrency 20] [--duration 30] [--sample-rate 0] [--out bench-results/profile]

Starts a private deployment of serve_config.yaml with the chain set to Flite (bench.serve_local,
the way `make run` starts it), drives `--concurrency` concurrent one-sentence `pcm` requests for
`--duration` seconds, and meanwhile:
- reads the CPU time of every process of the deployment (Ray's own daemons, the Serve controller,
  the proxy, every replica) and of the load generator, before and after, and divides by the
  requests served: CPU milliseconds per request, per process;
- samples the proxy and every replica with py-spy (`pip install py-spy`; when it is missing the
  CPU table is still printed) and sorts each sample into a kind of work by the frames on its
  stack (synthesis, resampling and encoding, the router, HTTP/ASGI, Serve's request path and
  streaming, serialization, logging, the event loop itself, ...).
Prints both tables and writes them as JSON (and the samples as collapsed stacks) to `--out`.
`--sample-rate 24000` sends `sample_rate` equal to the engine's rate (no resampling) to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."

# First matching rule wins; a stack is matched from its innermost frame outwards, so the work a
# sample is doing (e.g. resampling) wins over what called it (the router).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("synthesis (libflite)", ("_synthesize_blocking", "flite_text_to_wave", "FliteLibrary")),
    ("resampling", ("StreamResampler", "resample", "soxr", "scipy/signal")),
    ("audio encoding", ("serve_app/core/audio.py", "encode_", "av/")),
    ("spoken-form text", ("serve_app/core/spoken", "nemo_text_processing", "pynini")),
    ("word timing", ("serve_app/core/timing",)),
    ("pickling/serialization", ("pickle", "serialization", "cloudpickle", "msgpack", "_serialize", "_deserialize")),
    ("logging", ("logging/__init__", "logging_utils", "access_log", "_log")),
    ("metrics", ("metrics", "prometheus", "opencensus", "gauges.py")),
    ("fallback router", ("serve_app/router",)),
    ("our HTTP app (FastAPI, middleware)", ("serve_app/api", "fastapi/", "starlette/")),
    ("HTTP server (uvicorn, h11/httptools)", ("uvicorn/", "h11/", "httptools")),
    ("Serve request path (proxy, router, replica)", ("ray/serve/",)),
    ("Ray core (actor calls, streaming generators)", ("ray/_private", "ray/_raylet", "_raylet", "ray/actor.py")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
    ("threads/idle wait", ("threading.py", "concurrent/futures", "selectors.py", "select")),
]


def categorise(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def read_collapsed(path: Path) -> Counter[str]:
    """py-spy's raw format: `frame;frame;frame count` per line."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[categorise(stack)] += int(count)
    return counts


def tree_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user+system, own) of `pid` and every descendant, by pid, with a short name."""
    out: dict[int, tuple[str, float]] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = (process_name(proc), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def process_name(proc: psutil.Process) -> str:
    """Ray titles its workers `ray::ServeReplica:app:Deployment` etc.; daemons by executable."""
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return proc.name()
    title = " ".join(cmd)
    if title.startswith("ray::"):
        return title.split()[0].removeprefix("ray::")
    base = os.path.basename(cmd[0]) if cmd else proc.name()
    if "gcs_server" in base or "raylet" in base:
        return base
    if "-m" in cmd[:-1]:
        return f"{base} -m {cmd[cmd.index('-m') + 1]}"
    for part in cmd:
        if part.endswith(".py"):
            return f"{base} {os.path.basename(part)}"
    return base


def group(name: str) -> str:
    """Replicas of one deployment (and Ray's helper processes) are summed under one label."""
    if name.startswith("ServeReplica:"):
        return name.split(":")[-1].split(".")[0] + " replica(s)"
    if "ProxyActor" in name:
        return "Serve proxy"
    if "ServeController" in name:
        return "Serve controller"
    if name.startswith(("gcs_server", "raylet")):
        return name.split()[0]
    if name.startswith("IDLE") or name.startswith("ray::IDLE"):
        return "idle Ray workers"
    if "flite_worker" in name:
        return "Flite helper processes (synthesis)"
    return "other Ray processes (dashboard agent, log monitor, ...)"


async def drive(url: str, concurrency: int, duration_s: float, body: dict[str, Any]) -> tuple[int, float]:
    """Closed loop: `concurrency` clients, each sending the next request when one ends."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
                    async for _ in response.aiter_raw():
                        pass
                    if response.status_code == 200:
                        done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - started


def serve_pids(root: int) -> dict[str, int]:
    """The proxy and every replica of the app (Ray titles them `ray::ProxyActor`, `ray::ServeReplica:...`)."""
    pids: dict[str, int] = {}
    for pid, (name, _) in tree_cpu_s(root).items():
        if "ProxyActor" in name or name.startswith("ServeReplica:"):
            pids[name if name not in pids else f"{name}#{pid}"] = pid
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_serve", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--sample-rate", type=int, default=0, help="request this rate (0: the API's default)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/profile"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from bench import serve_local

    info = serve_local.start(database_url="sqlite+aiosqlite:////tmp/bench-profile-sessions.db", chain="flite")
    url = info["url"]
    body: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"}
    if args.sample_rate:
        body["sample_rate"] = args.sample_rate
    try:
        asyncio.run(drive(url, args.concurrency, 5.0, body))  # warm-up; lets autoscaling settle a bit
        pids = serve_pids(os.getpid())
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        have_spy = Path(spy).exists()
        spies: list[subprocess.Popen[bytes]] = []
        if have_spy:
            for name, pid in pids.items():
                target = args.out / f"{name.replace(':', '_').replace('#', '_')}.txt"
                spies.append(subprocess.Popen(
                    [spy, "record", "--pid", str(pid), "--duration", str(int(args.duration) - 2), "--rate", "200",
                     "--format", "raw", "--nonblocking", "--output", str(target)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
        else:
            print("py-spy not found: CPU per process only (pip install py-spy)", file=sys.stderr)
        me = os.getpid()
        before = tree_cpu_s(me)
        client_before = psutil.Process(me).cpu_times()
        result: dict[str, Any] = {}

        def run() -> None:
            result["done"], result["elapsed"] = asyncio.run(drive(url, args.concurrency, args.duration, body))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        after = tree_cpu_s(me)
        client_after = psutil.Process(me).cpu_times()
        for proc in spies:
            proc.wait(timeout=60)
    finally:
        serve_local.stop()

    done, elapsed = result["done"], result["elapsed"]
    per_group: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid == me or name.startswith("py-spy"):
            continue  # the load generator is reported apart; the profiler is not the service
        per_group[group(name)] = per_group.get(group(name), 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    client_cpu = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    cpu_table = {k: round(v * 1000 / max(done, 1), 2) for k, v in sorted(per_group.items(), key=lambda item: -item[1])}
    service_ms = round(sum(per_group.values()) * 1000 / max(done, 1), 2)
    samples = {name: read_collapsed(args.out / f"{name.replace(':', '_').replace('#', '_')}.txt") for name in pids}
    kinds: dict[str, dict[str, float]] = {}
    for name, counts in samples.items():
        total = sum(counts.values())
        if total:
            kinds[name] = {k: round(100 * v / total, 1) for k, v in counts.most_common()}
    report = {
        "requests": done,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(done / elapsed, 2),
        "cpu_ms_per_request": {"service_total": service_ms, **cpu_table},
        "load_generator_cpu_ms_per_request": round(client_cpu * 1000 / max(done, 1), 2),
        "samples_share_percent": kinds,
        "sample_rate": args.sample_rate or "default (24000)",
    }
    (args.out / "profile.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
