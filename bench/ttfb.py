"""Time to first byte, throughput and CPU per request: this service against what a user would run instead.

    python -m bench.ttfb [--runs 30] [--requests 300] [--concurrency 20] [--rounds N] [--only SYSTEM,...]
                         [--json FILE]

Each system runs alone on the machine, one after the other, in one run (so ratios compare like
with like), all answering the same one-sentence request:
1. `flite-binary`: the raw `flite` binary (process start to first stdout byte, and to exit);
2. `uvicorn+binary x1`: plain uvicorn + FastAPI calling the flite binary per request, one worker
   (bench/plain_binary_app.py: the simplest thing a user would write; the reference);
3. `uvicorn+binary xN`: the same with one worker per core;
4. `uvicorn+engine`: plain uvicorn running our Flite engine in-process (bench/plain_app.py): the
   floor for first-byte time, as no hop can make the first chunk come sooner;
5. `serve run`: `serve run serve_config.yaml` as shipped (only the port changed), requests pinned
   to Flite (`engine: flite`), `pcm`;
6. `make run`: the project's launcher (`python -m serve_app.launch`, what `make run` runs), same
   requests.
Per system, once it is idle (under a quarter of a core for 3 s: start-up work is not billed to the
measured requests; its idle CPU rate is reported): median first-byte time of `--runs` sequential
requests; for `serve run` and `make run`, their first byte against the floor's measured in
alternating slices, each alone (the other's processes stopped), so that a slow spell of the
machine hits both alike (bench/paired.py; the first-byte target is judged on this ratio); then,
idle again, requests/s with `--concurrency` clients for `--requests` requests, with the first-byte
p50/p95 under that load;
and CPU milliseconds per request of every process of the system (the server, its workers and
children, Ray's daemons and replicas), from the OS's counters, during the throughput phase, next
to the load generator's own CPU per request (it shares the cores), and the flite binary's CPU time
for the sentence just before the system started and just after it stopped ("probe": the machine's
speed around that system's figures). The machine's speed drifts over
minutes (a shared VM: the same flite binary took 71 and 60 ms ten minutes apart), and the systems are
measured one after the other, so `--rounds N` measures them all N times in turn and reports each
ratio's median over the rounds. Prints a table and the ratios the targets are about.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from bench.common import Timing, free_port, median_ms, timed_post
from bench.paired import ProcessTree, Side, measure_paired, tree_cpu
from serve_app.engines.flite_lib import choose
from serve_app.launch import adopt_orphans, end_orphans

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
BIN = Path(sys.executable).parent


@dataclass
class Figures:
    """What one system measured."""

    name: str
    ttfb_ms: float | None = None
    total_ms: float | None = None
    rps: float | None = None
    loaded_ttfb_p50_ms: float | None = None
    loaded_ttfb_p95_ms: float | None = None
    cpu_ms_per_request: float | None = None
    idle_cpu_ms_per_s: float | None = None
    client_cpu_ms_per_request: float | None = None
    probe_before_ms: float | None = None
    probe_after_ms: float | None = None
    # First byte against the floor in alternating slices, each alone (bench/paired.py).
    paired_ttfb_ms: float | None = None
    paired_floor_ttfb_ms: float | None = None
    paired_slice_ratios: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Floor:
    """How to start the floor (plain uvicorn + our engine) beside a system for the paired first byte."""

    argv: list[str]
    port: int
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def flite_argv(output: str) -> list[str]:
    """The flite binary speaking the bench sentence with the reference's voice into `output`."""
    return ["flite", "-voice", "slt", "-o", output, "-t", SENTENCE]


def raw_flite(runs: int) -> Figures:
    """TTFB and total of the flite binary writing WAV to stdout."""
    ttfbs, totals = [], []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.Popen(flite_argv("/dev/stdout"), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        ttfbs.append(time.perf_counter() - started)
        proc.stdout.read()
        proc.wait()
        totals.append(time.perf_counter() - started)
        assert first
    return Figures("flite-binary", ttfb_ms=median_ms(ttfbs), total_ms=median_ms(totals))


PROBE_RUNS = 10


def speed_probe(runs: int = PROBE_RUNS) -> float:
    """The machine's speed now: CPU milliseconds the flite binary takes for the sentence (median of
    `runs`), taken while no system runs. A shared machine's speed drifts over minutes; the probe
    before and after each system shows whether a system's figures came from a slower spell."""
    costs = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(flite_argv("/dev/null"), check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        costs.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
    return round(statistics.median(costs), 1)


def body(pinned: bool) -> dict[str, object]:
    request: dict[str, object] = {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"}
    if pinned:
        request["engine"] = "flite"
    return request


async def sequential(url: str, request: dict[str, object], runs: int) -> list[Timing]:
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # warm-up: replicas, connection, voice registration
            await timed_post(client, url, request)
        return [await timed_post(client, url, request) for _ in range(runs)]


async def throughput(
    url: str, request: dict[str, object], requests: int, concurrency: int, cpu: Callable[[], float]
) -> tuple[float, list[Timing], float, float]:
    """Requests/s, the timings, the system's CPU seconds during the measured phase, and the client's
    (the load generator shares the cores with the system: a response that costs more to read leaves
    less CPU to serve with)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(timed_post(client, url, request) for _ in range(concurrency)))  # warm-up
        remaining = requests
        results: list[Timing] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                results.append(await timed_post(client, url, request))

        cpu_before = cpu()
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu_used = cpu() - cpu_before
        client_used = time.process_time() - client_before
    return requests / elapsed, results, cpu_used, client_used


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the system's process group (Ctrl-C), then SIGKILL what is left after 60 s."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """A server in a process group of its own, its output in a log file of its own."""
    log = Path(tempfile.mkdtemp(prefix="bench-ttfb-")) / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def paired(name: str, system: subprocess.Popen[bytes], speech: str, request: dict[str, object], floor: Floor,
           args: argparse.Namespace, figures: Figures) -> None:
    """The system's first byte against the floor's, alternating, each alone (bench/paired.py).

    The floor starts while the system is stopped, so neither is measured beside the other's start.
    """
    tree = ProcessTree(system.pid)
    tree.stop()
    floor_proc, log = start(floor.argv, floor.env)
    try:
        wait_ok(f"{floor.url}/docs", timeout_s=120)
        floor_tree = ProcessTree(floor_proc.pid)
        print(f"[{name}] first byte against the floor: {args.paired_slices} pairs of slices, "
              f"{args.paired_requests} requests each", flush=True)
        found = measure_paired(
            Side(speech, tree.stop, tree.resume),
            Side(f"{floor.url}/v1/audio/speech", floor_tree.stop, floor_tree.resume),
            request, slices=args.paired_slices, requests=args.paired_requests,
        )
        figures.paired_ttfb_ms = found.system_ms
        figures.paired_floor_ttfb_ms = found.floor_ms
        figures.paired_slice_ratios = found.slice_ratios
    except Exception as exc:  # reported with the system's figures; the rest of its measurement goes on
        figures.notes.append(f"paired first byte failed: {type(exc).__name__}: {str(exc)[:200]} (floor log: {log})")
    finally:
        ProcessTree(floor_proc.pid).resume()
        stop(floor_proc)
        tree.resume()


def measure(
    name: str, argv: list[str], url: str, health: str, args: argparse.Namespace, *, pinned: bool,
    env: dict[str, str], floor: Floor | None = None,
) -> Figures:
    """Start one system in its own process group, measure it, stop it."""
    figures = Figures(name, probe_before_ms=speed_probe())
    print(f"[{name}] starting (flite binary {figures.probe_before_ms} ms of CPU just before)", flush=True)
    proc, log = start(argv, env)
    try:
        wait_ok(f"{url}{health}", timeout_s=300)
        speech = f"{url}/v1/audio/speech"
        request = body(pinned)
        cpu = tree_cpu(proc.pid)
        figures.idle_cpu_ms_per_s = settle(name, cpu)
        print(f"[{name}] {args.runs} sequential requests", flush=True)
        one = asyncio.run(sequential(speech, request, args.runs))
        if floor is not None and args.paired_slices > 0:
            paired(name, proc, speech, request, floor, args, figures)
            settle(name, cpu)  # a resumed cluster catches up on its timers before the load
        print(f"[{name}] {args.requests} requests, {args.concurrency} at a time", flush=True)
        load = throughput(speech, request, args.requests, args.concurrency, cpu)
        rps, loaded, cpu_s, client_s = asyncio.run(load)
        figures.ttfb_ms = median_ms([t.ttfb_s for t in one])
        figures.total_ms = median_ms([t.total_s for t in one])
        figures.rps = round(rps, 1)
        figures.loaded_ttfb_p50_ms = percentile_ms([t.ttfb_s for t in loaded], 0.5)
        figures.loaded_ttfb_p95_ms = percentile_ms([t.ttfb_s for t in loaded], 0.95)
        figures.cpu_ms_per_request = round(cpu_s * 1000 / args.requests, 1)
        figures.client_cpu_ms_per_request = round(client_s * 1000 / args.requests, 1)
    except Exception as exc:  # a system that fails to start or serve is reported, not fatal
        figures.notes.append(f"failed: {type(exc).__name__}: {str(exc)[:200]} (log: {log})")
    finally:
        stop(proc)
        # Ray can leave HAProxy running after its cluster stops (a reload spawned while the signal
        # was being handled); adopted by this process (`adopt_orphans` in `main`), it is ended here
        # instead of holding HAProxy's fixed stats ports and failing every later `serve run`.
        end_orphans()
    figures.probe_after_ms = speed_probe()
    return figures


SETTLED_CPU_MS_PER_S = 250.0  # a quarter of one core: start-up work (loading, first scaling) is over
SETTLE_WINDOW_S = 3.0
SETTLE_LIMIT_S = 90.0


def settle(name: str, cpu: Callable[[], float]) -> float:
    """Wait until the system is idle, so that start-up work is not billed to the measured requests.

    A service runs for hours; right after start it still loads voices, grammars and replicas in the
    background. Returns the idle CPU rate (ms per second, all of its processes) over the last
    window: what the system costs while nothing is asked of it, which the plain servers do not pay.
    """
    started = time.monotonic()
    while True:
        before = cpu()
        time.sleep(SETTLE_WINDOW_S)
        rate = (cpu() - before) * 1000 / SETTLE_WINDOW_S
        if rate <= SETTLED_CPU_MS_PER_S or time.monotonic() - started > SETTLE_LIMIT_S:
            print(f"[{name}] idle at {rate:.0f} ms of CPU a second after {time.monotonic() - started:.0f}s", flush=True)
            return round(rate, 1)


def wait_ok(url: str, timeout_s: float) -> None:
    """Until `url` answers 200: Serve's proxy answers 404 before the application is deployed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s")


def serve_run_config(port: int) -> Path:
    """serve_config.yaml as shipped, with only the HTTP port changed (8000 may be taken)."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    config["http_options"]["host"] = "127.0.0.1"
    path = Path(tempfile.mkdtemp(prefix="bench-ttfb-")) / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user has: none of ours (no .env), RAY_ADDRESS unset (a private cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TTS_", "FLITE_", "EDGE_"))}
    env.update({"ENV_FILE": "/nonexistent/.env", "LOG_LEVEL": "WARNING", **extra})
    env.setdefault("DATABASE_URL", "sqlite+aiosqlite:////tmp/bench-ttfb-sessions.db")
    return env


def systems(args: argparse.Namespace) -> list[Figures]:
    cores = os.cpu_count() or 1
    uvicorn = [str(BIN / "uvicorn"), "--log-level", "warning", "--host", "127.0.0.1"]
    chosen = set(args.only.split(",")) if args.only else None
    ours = dict(item.split("=", 1) for item in args.set)
    out: list[Figures] = []

    def wanted(name: str) -> bool:
        return chosen is None or name in chosen

    if wanted("flite-binary"):
        print("[flite-binary] raw binary", flush=True)
        out.append(raw_flite(args.runs))
    for workers in (1, cores):
        name = f"uvicorn+binary x{workers}"
        if wanted(name) or wanted("uvicorn+binary"):
            port = free_port()
            argv = [*uvicorn, "--loop", "asyncio", "--port", str(port), "--workers", str(workers),
                    "bench.plain_binary_app:app"]
            out.append(measure(name, argv, f"http://127.0.0.1:{port}", "/docs", args, pinned=False, env=clean_env()))
    library = {key: value for key, value in ours.items() if key == "FLITE_LIBRARY"}
    floor_port = free_port()
    floor = Floor([*uvicorn, "--port", str(floor_port), "bench.plain_app:app"], floor_port, clean_env(**library))
    if wanted("uvicorn+engine"):
        out.append(measure("uvicorn+engine", floor.argv, floor.url, "/docs", args, pinned=False, env=floor.env))
    beside = floor if wanted("uvicorn+engine") else None
    if wanted("serve run"):
        port = free_port()
        argv = [str(BIN / "serve"), "run", "--address", "local", str(serve_run_config(port))]
        out.append(measure("serve run", argv, f"http://127.0.0.1:{port}", "/health", args, pinned=True,
                           env=clean_env(**ours), floor=beside))
    if wanted("make run"):
        port = free_port()
        argv = [sys.executable, "-m", "serve_app.launch", "--config", str(ROOT / "serve_config.yaml"),
                "--port", str(port), "--host", "127.0.0.1"]
        out.append(measure("make run", argv, f"http://127.0.0.1:{port}", "/health", args, pinned=True,
                           env=clean_env(**ours), floor=beside))
    return out


def ratios(figures: list[Figures]) -> dict[str, float]:
    by = {f.name: f for f in figures}
    reference = by.get("uvicorn+binary x1")
    floor = by.get("uvicorn+engine")
    out: dict[str, float] = {}
    for ours in ("serve run", "make run"):
        mine = by.get(ours)
        if mine is None or mine.rps is None:
            continue
        key = ours.replace(" ", "_")
        if reference and reference.rps:
            out[f"{key}_rps_vs_uvicorn_binary"] = round(mine.rps / reference.rps, 3)
            if reference.cpu_ms_per_request and mine.cpu_ms_per_request:
                out[f"{key}_cpu_per_request_vs_uvicorn_binary"] = round(
                    mine.cpu_ms_per_request / reference.cpu_ms_per_request, 3
                )
            if reference.ttfb_ms and mine.ttfb_ms:
                out[f"{key}_ttfb_vs_uvicorn_binary"] = round(mine.ttfb_ms / reference.ttfb_ms, 3)
        if floor and floor.ttfb_ms and mine.ttfb_ms:
            out[f"{key}_ttfb_vs_in_process_engine"] = round(mine.ttfb_ms / floor.ttfb_ms, 3)
        if mine.paired_ttfb_ms and mine.paired_floor_ttfb_ms:
            out[f"{key}_ttfb_vs_in_process_engine_paired"] = round(mine.paired_ttfb_ms / mine.paired_floor_ttfb_ms, 3)
    return out


def print_table(figures: list[Figures]) -> None:
    columns = ("ttfb ms", "total ms", "req/s", "p50 ms", "p95 ms", "cpu ms/req", "idle ms/s", "client ms",
               "probe ms")
    print(f"{'system':<20} " + " ".join(f"{c:>10}" for c in columns))
    for f in figures:
        cells = [
            f.ttfb_ms, f.total_ms, f.rps, f.loaded_ttfb_p50_ms, f.loaded_ttfb_p95_ms, f.cpu_ms_per_request,
            f.idle_cpu_ms_per_s, f.client_cpu_ms_per_request,
        ]
        probe = "-" if f.probe_before_ms is None else f"{f.probe_before_ms:g}/{f.probe_after_ms or 0:g}"
        print(f"{f.name:<20} " + " ".join(f"{'-' if c is None else f'{c:g}':>10}" for c in cells) + f" {probe:>10}")
        if f.paired_ttfb_ms is not None:
            slices = f.paired_slice_ratios
            spread = f"{min(slices):.2f}-{max(slices):.2f}x" if slices else "-"
            print(f"    first byte alternating with the floor: {f.paired_ttfb_ms:g} ms against "
                  f"{f.paired_floor_ttfb_ms:g} ms (slices {spread})")
        for note in f.notes:
            print(f"    {note}")


def median_ratios(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each ratio's median over the rounds (each round's ratio compares systems measured minutes apart)."""
    keys = [key for key in rounds[0] if all(key in found for found in rounds)]
    return {key: round(statistics.median(found[key] for found in rounds), 3) for key in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every system this many times, in turn, and report the median ratios")
    parser.add_argument("--only", default="", help="comma-separated system names (default: all)")
    parser.add_argument("--paired-slices", type=int, default=10,
                        help="pairs of slices for our systems' first byte against the floor, alternating, each "
                             "alone (needs uvicorn+engine among the systems; 0 skips it)")
    parser.add_argument("--paired-requests", type=int, default=40, help="sequential requests per slice")
    parser.add_argument("--json", type=str, default=None, help="also write the figures to this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for this service's runs (e.g. FLITE_OVERFLOW_PROCESSES=0)")
    args = parser.parse_args(argv)
    # Our engine's libflite (the floor, `serve run` and `make run` load the same one); the
    # reference runs Debian's flite binary whatever this says.
    library = choose(dict(item.split("=", 1) for item in args.set).get("FLITE_LIBRARY", "auto")).reason
    print(f"libflite of our engine: {library}", flush=True)
    adopt_orphans()
    rounds: list[list[Figures]] = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"=== round {number} of {args.rounds}", flush=True)
        rounds.append(systems(args))
    found_by_round = [ratios(figures) for figures in rounds]
    for number, (figures, found) in enumerate(zip(rounds, found_by_round, strict=True), start=1):
        print(f"\nround {number}:" if args.rounds > 1 else "")
        print_table(figures)
        print()
        for key, value in found.items():
            print(f"{key:<45} {value}")
    found = median_ratios(found_by_round)
    if args.rounds > 1:
        print(f"\nmedian over {args.rounds} rounds:")
        for key, value in found.items():
            print(f"{key:<45} {value}")
    print("\ntargets: *_rps_vs_uvicorn_binary >= 1.0, *_ttfb_vs_in_process_engine_paired <= 1.3 (also shown: "
          "*_ttfb_vs_in_process_engine, measured minutes apart), *_cpu_per_request_vs_uvicorn_binary <= 1.0")
    if args.json:
        report = {
            "libflite": library,
            "systems": [f.__dict__ for f in rounds[-1]],
            "ratios": found,
            "rounds": [{"systems": [f.__dict__ for f in figures], "ratios": ratios_}
                       for figures, ratios_ in zip(rounds, found_by_round, strict=True)],
        }
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
