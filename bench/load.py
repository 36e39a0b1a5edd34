"""The 100-session load test: `python -m bench.load --url URL --sessions 100 --duration 60 --report DIR`.

Simulates N concurrent voice-agent sessions against a running deployment (see bench/load_session.py
for what one session does), shows a progress line while it runs, then checks in the database
(through the API) that every session is COMPLETED and that the pool has no connection checked
out, samples the Serve replicas' memory throughout, and writes `DIR/report.json` plus
`latency.png` and `memory.png`. Exit code 0 only when nothing failed, every session is COMPLETED
and no leak was found (replica RSS growth after warm-up over the limit, or pool connections held).

Without `--url` it starts the application itself on a private Ray cluster (bench/serve_local.py).
For the memory check over many requests use `--requests-target 10000` with a shorter pace
(`--user-turn 0.5-1 --playback-factor 0.2`): sessions then speak until that many utterances.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.load_client import Recorder, ServiceClient
from bench.load_memory import ReplicaLocator, make_locator, read_rss, total_mb
from bench.load_report import plot_latency, plot_memory, request_counts, write_report
from bench.load_session import DEFAULT_UTTERANCES, Pace, RunControl, SessionStats, load_utterances, run_session
from bench.load_stats import (
    Thresholds,
    evaluate,
    growth_pct,
    growth_windows,
    latency_summary,
    memory_growth,
    parse_range,
    summaries_by,
    window_median,
)

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


@dataclass
class LoadConfig:
    """Everything a run needs; the CLI fills it, the CI test builds it directly."""

    url: str
    sessions: int = 100
    duration_s: float | None = 60.0
    requests_target: int | None = None
    report_dir: Path = Path("reports/load")
    seed: int = 7
    utterances: tuple[str, ...] = DEFAULT_UTTERANCES
    pace: Pace = field(default_factory=Pace)
    ramp_up_s: float | None = None
    warmup_requests: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    sample_interval_s: float = 2.0
    progress_interval_s: float = 5.0
    pool_settle_s: float = 10.0
    timeout_s: float = 60.0
    api_key: str | None = None
    voice: str = "alloy"
    model: str = "tts-1"
    agent_name: str = "bench-load"
    app_name: str = "tts"
    ray_address: str | None = None
    quiet: bool = False
    # Sequential utterances before the load: the reference first-byte time. The default speaks the
    # built-in set once, so the reference has the load's own mix of sentence lengths.
    unloaded_samples: int = 20
    # Utterances spoken first and not counted (the service's first requests start work, such as
    # Flite's helper processes, that would slow the reference's first samples and flatter the ratio).
    unloaded_warmup: int = 3

    def effective_ramp_up(self) -> float:
        """Sessions start spread over this many seconds (a burst of 100 creates is not a call centre)."""
        if self.ramp_up_s is not None:
            return self.ramp_up_s
        return min(10.0, self.duration_s / 4) if self.duration_s else 10.0

    def effective_warmup(self) -> int:
        """Speech requests before the memory baseline: caches, pools and JIT paths are filled by then."""
        if self.warmup_requests is not None:
            return self.warmup_requests
        if self.requests_target:
            return max(self.sessions, self.requests_target // 10)
        return 2 * self.sessions


@dataclass
class RunData:
    """What a run measured besides the calls and memory samples: sessions, pool, engines, timing."""

    run_id: str
    started_at: datetime
    engines: dict[str, Any]
    stats: list[SessionStats]
    statuses: dict[str, str | None]
    pool_start: dict[str, Any] | None
    pool_end: dict[str, Any] | None
    pool_waited_s: float
    warmup_t: float | None
    load_end_t: float
    host: dict[str, Any]
    unloaded_ttfb_s: list[float] = field(default_factory=list)


@dataclass
class LoadResult:
    report: dict[str, Any]
    exit_code: int
    report_path: Path


class Timeline:
    """Samples replica RSS and active sessions every `interval` seconds, plus on demand."""

    def __init__(self, locator: ReplicaLocator, recorder: Recorder, interval: float) -> None:
        self.locator = locator
        self.recorder = recorder
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.active: list[tuple[float, int]] = []
        self.active_sessions = 0
        self._replicas: list[Any] = []
        self._located_at = -1e9

    async def sample(self) -> dict[str, int]:
        now = self.recorder.now()
        stale = now - self._located_at > 10.0
        if stale or not self._replicas:
            try:
                self._replicas = await asyncio.to_thread(self.locator.locate)
            except Exception as exc:  # the test goes on without memory figures; the report says so
                print(f"warning: cannot list replicas: {exc}", file=sys.stderr)
                self._replicas = []
            self._located_at = now
        sample = await asyncio.to_thread(read_rss, self._replicas)
        if len(sample) < len(self._replicas):
            self._located_at = -1e9  # a replica went away: look again next time
        self.samples.append((now, sample))
        self.active.append((now, self.active_sessions))
        return sample

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sample()


def _log(config: LoadConfig, line: str) -> None:
    if not config.quiet:
        print(line, file=sys.stderr, flush=True)


async def _progress(config: LoadConfig, recorder: Recorder, timeline: Timeline, stats: list[SessionStats]) -> None:
    """One line every few seconds: sessions, requests, errors, TTFB of the last window, replica RSS."""
    seen = 0
    while True:
        await asyncio.sleep(config.progress_interval_s)
        calls = recorder.calls
        window = [c.ttfb_s for c in calls[seen:] if c.kind == "speech" and c.ok and c.ttfb_s is not None]
        seen = len(calls)
        ttfb = latency_summary(window)
        rss = total_mb(timeline.samples[-1][1]) if timeline.samples else 0.0
        done = sum(1 for s in stats if s.finalized)
        _log(
            config,
            f"[{recorder.now():6.1f}s] sessions active {timeline.active_sessions:3d} done {done:3d} | "
            f"requests {len(calls):6d} (speech ok {recorder.speech_ok}) | errors {recorder.errors} | "
            f"ttfb p50 {ttfb['p50'] or 0:.0f} ms p95 {ttfb['p95'] or 0:.0f} ms | replicas rss {rss:.0f} MiB",
        )


async def _session_slot(
    index: int,
    delay: float,
    client: ServiceClient,
    control: RunControl,
    config: LoadConfig,
    timeline: Timeline,
    stats: list[SessionStats],
    run_id: str,
) -> None:
    await control.pause(delay)
    if control.stopping():
        return
    rng = random.Random(config.seed * 100_003 + index)
    timeline.active_sessions += 1
    try:
        result = await run_session(
            index, client, control, config.utterances, config.pace, rng, agent_name=config.agent_name, run_id=run_id
        )
        stats.append(result)
    finally:
        timeline.active_sessions -= 1


async def _watch_warmup(recorder: Recorder, timeline: Timeline, warmup: int) -> float:
    """Take the memory baseline the moment `warmup` utterances have been spoken."""
    recorder.warmup_requests = warmup
    if recorder.speech_ok >= warmup:
        recorder.warmed.set()
    await recorder.warmed.wait()
    await timeline.sample()
    return timeline.samples[-1][0]


async def _verify_sessions(client: ServiceClient, ids: list[str]) -> dict[str, str | None]:
    """Each session's status as the database has it (through `GET /v1/sessions/{id}`)."""
    gate = asyncio.Semaphore(16)

    async def one(session_id: str) -> tuple[str, str | None]:
        async with gate:
            return session_id, await client.session_status(session_id)

    return dict(await asyncio.gather(*(one(i) for i in ids)))


async def _settled_pool(client: ServiceClient, settle_s: float) -> tuple[dict[str, Any] | None, float]:
    """The pool once nothing is checked out (or after `settle_s`): the worst of three reads.

    Several ingress replicas each hold a pool and any of them may answer, so one read proves
    little; writes that trail a finished stream (usage records) get a moment to return theirs.
    """
    started = time.monotonic()
    worst: dict[str, Any] | None = None
    while True:
        reads = [await client.pool_status() for _ in range(3)]
        known = [r for r in reads if r is not None]
        worst = max(known, key=lambda r: int(r.get("checked_out", 0))) if known else None
        waited = time.monotonic() - started
        if worst is not None and int(worst.get("checked_out", 0)) == 0:
            return worst, waited
        if waited >= settle_s:
            return worst, waited
        await asyncio.sleep(0.5)


async def _engines(http: httpx.AsyncClient) -> dict[str, Any]:
    """The service's chain and each engine's availability, recorded so a report says what it measured."""
    try:
        data = (await http.get("/v1/engines")).json()
        return {
            "chain": data.get("chain"),
            "available": {e["name"]: bool(e.get("available")) for e in data.get("data", [])},
        }
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}


def _memory_section(
    config: LoadConfig, timeline: Timeline, locator: ReplicaLocator, warmup_t: float | None, load_end_t: float
) -> dict[str, Any]:
    """Replica RSS at start, after warm-up, at the end of load and after it, and the growth verdict input.

    Growth compares the median of a window of samples right after warm-up with the median of the
    last window before the load stops (bench/load_stats.py): a leak is a level that keeps rising
    with requests, not the moment a burst of in-flight streams happens to be in memory.
    """
    samples = [(t, s) for t, s in timeline.samples if s]
    section: dict[str, Any] = {
        "available": bool(samples),
        "source": locator.source,
        "reason": getattr(locator, "reason", None) if not samples else None,
        "metric": "rss",
        "samples": len(samples),
        "sample_interval_s": config.sample_interval_s,
        "warmup_requests": config.effective_warmup(),
        "warmup_reached": warmup_t is not None,
        "warmup_t": round(warmup_t, 2) if warmup_t is not None else None,
        "window_samples": None,
        "threshold_pct": config.thresholds.max_memory_growth_pct,
        "growth_after_warmup_pct": None,
        "growth_from_start_pct": None,
        "total_mb": {},
        "replicas": {},
        "timeline": [],
    }
    if not samples:
        section["reason"] = section["reason"] or "no replica process found on this host"
        return section
    start, final = samples[0][1], samples[-1][1]
    base_t = warmup_t if warmup_t is not None else samples[0][0]
    under_load = [s for t, s in samples if base_t <= t <= load_end_t] or [start, final]
    k = growth_windows(len(under_load))
    warm, end = window_median(under_load[:k]), window_median(under_load[-k:])
    growth, warm_bytes, end_bytes = memory_growth(warm, end)
    section["window_samples"] = k
    section["growth_after_warmup_pct"] = growth
    section["growth_from_start_pct"] = memory_growth(start, final)[0]
    section["total_mb"] = {
        "start": total_mb(start),
        "after_warmup": round(warm_bytes / 1_048_576, 1),
        "end_of_load": round(end_bytes / 1_048_576, 1),
        "final": total_mb(final),
        "peak": max(total_mb(s) for _, s in samples),
    }

    def mb(sample: dict[str, int], key: str) -> float | None:
        return round(sample[key] / 1_048_576, 1) if key in sample else None

    for key in sorted({k for _, s in samples for k in s}):
        section["replicas"][key] = {
            "start_mb": mb(start, key),
            "after_warmup_mb": mb(warm, key),
            "end_of_load_mb": mb(end, key),
            "final_mb": mb(final, key),
            "growth_after_warmup_pct": growth_pct(warm[key], end[key]) if key in warm and key in end else None,
        }
    step = max(1, len(samples) // 400)
    section["timeline"] = [[round(t, 1), total_mb(s)] for t, s in samples[::step]]
    if warmup_t is None:
        section["reason"] = "warm-up not reached: growth measured from the first sample"
    return section


async def _unloaded_ttfb(http: httpx.AsyncClient, config: LoadConfig) -> list[float]:
    """First-byte times of utterances spoken one at a time, before any load (kept apart from the run's)."""
    alone = ServiceClient(http, Recorder(), voice=config.voice, model=config.model)
    for i in range(config.unloaded_warmup):
        await alone.speak(config.utterances[i % len(config.utterances)], None)
    if config.unloaded_warmup:
        await asyncio.sleep(2.0)  # what the first requests started in the background settles
    times: list[float] = []
    for i in range(config.unloaded_samples):
        call = await alone.speak(config.utterances[i % len(config.utterances)], None)
        if call.ok and call.ttfb_s is not None:
            times.append(call.ttfb_s)
    _log(config, f"unloaded: first byte p50 {latency_summary(times)['p50']} ms over {len(times)} utterances")
    return times


async def run_load(config: LoadConfig, control: RunControl | None = None) -> LoadResult:
    """Run the whole test and write the report; the CLI and the CI test both call this."""
    recorder = Recorder()
    control = control or RunControl(config.duration_s, config.requests_target)
    run_id = uuid.uuid4().hex[:8]
    started_at = datetime.now(UTC)
    load_avg_start = os.getloadavg()[0]
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.sessions * 2 + 20, max_keepalive_connections=config.sessions + 20)
    timeout = httpx.Timeout(config.timeout_s, connect=10.0, pool=config.timeout_s)
    locator = make_locator(config.url, config.app_name, config.ray_address)
    async with httpx.AsyncClient(base_url=config.url, headers=headers, limits=limits, timeout=timeout) as http:
        try:
            (await http.get("/health")).raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{config.url}/health did not answer: {exc}") from exc
        client = ServiceClient(http, recorder, voice=config.voice, model=config.model)
        engines = await _engines(http)
        unloaded = await _unloaded_ttfb(http, config)
        pool_start = await client.pool_status()
        timeline = Timeline(locator, recorder, config.sample_interval_s)
        await timeline.sample()
        stats: list[SessionStats] = []
        ramp = config.effective_ramp_up()
        _log(
            config,
            f"load: {config.sessions} sessions, ramp-up {ramp:.0f}s, "
            f"{f'duration {config.duration_s:.0f}s' if config.duration_s else 'no time limit'}"
            f"{f', target {config.requests_target} requests' if config.requests_target else ''}; "
            f"engines {engines.get('available')}; memory via {locator.source}",
        )
        helpers = [
            asyncio.create_task(timeline.run()),
            asyncio.create_task(_progress(config, recorder, timeline, stats)),
        ]
        warmup_task = asyncio.create_task(_watch_warmup(recorder, timeline, config.effective_warmup()))
        control.begin()
        try:
            await asyncio.gather(
                *(
                    _session_slot(
                        i, i * ramp / max(1, config.sessions), client, control, config, timeline, stats, run_id
                    )
                    for i in range(config.sessions)
                )
            )
        finally:
            for task in helpers:
                task.cancel()
            load_end_t = recorder.now()
        warmup_t = warmup_task.result() if warmup_task.done() and not warmup_task.cancelled() else None
        warmup_task.cancel()
        created = [s.session_id for s in stats if s.session_id]
        statuses = await _verify_sessions(client, created)
        pool_end, pool_waited = await _settled_pool(client, config.pool_settle_s)
        await timeline.sample()
    run = RunData(
        run_id=run_id,
        started_at=started_at,
        engines=engines,
        stats=stats,
        statuses=statuses,
        pool_start=pool_start,
        pool_end=pool_end,
        pool_waited_s=pool_waited,
        warmup_t=warmup_t,
        load_end_t=load_end_t,
        unloaded_ttfb_s=unloaded,
        host={
            "cpus": os.cpu_count(),
            "load_avg_1m_start": round(load_avg_start, 2),
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
        },
    )
    return _finish(config, recorder, timeline, locator, run)


def _finish(
    config: LoadConfig, recorder: Recorder, timeline: Timeline, locator: ReplicaLocator, run: RunData
) -> LoadResult:
    """Build the report, draw the plots, decide the verdict."""
    speech = [c for c in recorder.calls if c.kind == "speech"]
    ok_ttfb = [(c.engine or "unknown", c.ttfb_s) for c in speech if c.ok and c.ttfb_s is not None]
    memory = _memory_section(config, timeline, locator, run.warmup_t, run.load_end_t)
    warm = config.effective_warmup()
    memory["requests_after_warmup"] = max(0, recorder.speech_ok - warm) if run.warmup_t is not None else 0
    memory["judged"] = (
        memory["available"] and memory["requests_after_warmup"] >= config.thresholds.min_requests_after_warmup
    )
    completed = sum(1 for status in run.statuses.values() if status == "COMPLETED")
    checked_out = int(run.pool_end["checked_out"]) if run.pool_end and "checked_out" in run.pool_end else None
    loaded = latency_summary([t for _, t in ok_ttfb])
    unloaded = latency_summary(run.unloaded_ttfb_s)
    verdict = evaluate(
        errors=recorder.errors,
        sessions_created=len(run.statuses),
        sessions_expected=config.sessions,
        sessions_completed=completed,
        memory_growth_pct=memory["growth_after_warmup_pct"],
        memory_reason=memory["reason"],
        pool_checked_out=checked_out,
        thresholds=config.thresholds,
        requests_after_warmup=memory["requests_after_warmup"],
        ttfb_p95_ms=loaded["p95"],
        unloaded_ttfb_p50_ms=unloaded["p50"],
    )
    if memory["available"] and not memory["warmup_reached"]:
        verdict.warnings.append(memory["reason"])
    config.report_dir.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_latency(config.report_dir / "latency.png", recorder.calls, timeline.active).name,
        plot_memory(config.report_dir / "memory.png", timeline.samples, run.warmup_t, run.load_end_t).name,
    ]
    report: dict[str, Any] = {
        "config": _config_dict(config),
        "run": {
            "id": run.run_id,
            "url": config.url,
            "started_at": run.started_at.isoformat(timespec="seconds"),
            "wall_s": round(recorder.now(), 1),
            "load_s": round(run.load_end_t, 1),
            "engines": run.engines,
            "speech_per_s": round(len(speech) / run.load_end_t, 2) if run.load_end_t > 0 else None,
            "audio_seconds": round(sum(c.audio_s or 0.0 for c in speech if c.ok), 1),
            "answered_by": {k: sum(1 for e, _ in ok_ttfb if e == k) for k in sorted({e for e, _ in ok_ttfb})},
            "host": run.host,
        },
        "requests": request_counts(recorder.calls),
        "errors": {"total": recorder.errors, "samples": recorder.error_samples},
        "ttfb_ms": {
            "all": loaded,
            "by_engine": summaries_by(ok_ttfb),
            "unloaded": unloaded,
            "p95_vs_unloaded_p50": (
                round(loaded["p95"] / unloaded["p50"], 2) if loaded["p95"] and unloaded["p50"] else None
            ),
        },
        "sessions": {
            "requested": config.sessions,
            "created": len(run.statuses),
            "completed": completed,
            "finalize_ok": sum(1 for s in run.stats if s.finalized),
            "heartbeats": sum(s.heartbeats for s in run.stats),
            "utterances": sum(s.utterances for s in run.stats),
            "utterances_per_session_min": min((s.utterances for s in run.stats), default=0),
            "not_completed": [{"id": i, "status": st} for i, st in run.statuses.items() if st != "COMPLETED"][:50],
        },
        "memory": memory,
        "db_pool": {
            "start": run.pool_start,
            "end": run.pool_end,
            "checked_out_end": checked_out,
            "settle_wait_s": round(run.pool_waited_s, 2),
        },
        "verdict": verdict.as_dict(),
        "plots": plots,
    }
    path = write_report(config.report_dir, report)
    return LoadResult(report, EXIT_OK if verdict.passed else EXIT_FAILED, path)


def _config_dict(config: LoadConfig) -> dict[str, Any]:
    data = asdict(config)
    data["report_dir"] = str(config.report_dir)
    data["utterances"] = len(config.utterances)
    data["api_key"] = "***" if config.api_key else None
    data["ramp_up_s"] = config.effective_ramp_up()
    data["warmup_requests"] = config.effective_warmup()
    return data


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The figures a person wants at the end of a run, one per line."""
    ttfb = report["ttfb_ms"]
    memory = report["memory"]
    speech = report["requests"]["by_kind"].get("speech", {}).get("total", 0)
    lines = [
        f"requests {report['requests']['total']} (speech {speech}"
        f", {report['run']['speech_per_s']}/s), errors {report['errors']['total']}",
        f"sessions created {report['sessions']['created']}/{report['sessions']['requested']}, "
        f"COMPLETED {report['sessions']['completed']}",
        f"ttfb all p50 {ttfb['all']['p50']} ms p95 {ttfb['all']['p95']} ms p99 {ttfb['all']['p99']} ms",
    ]
    if "unloaded" in ttfb:
        unloaded, ratio = ttfb["unloaded"]["p50"], ttfb["p95_vs_unloaded_p50"]
        lines.append(f"ttfb unloaded p50 {unloaded} ms; loaded p95 = {ratio}x that")
    lines += [
        f"ttfb {engine} p50 {s['p50']} p95 {s['p95']} p99 {s['p99']} ms (n={s['count']})"
        for engine, s in ttfb["by_engine"].items()
    ]
    if memory["available"]:
        lines.append(
            f"replica rss MiB start {memory['total_mb']['start']} after warm-up {memory['total_mb']['after_warmup']} "
            f"end of load {memory['total_mb']['end_of_load']} final {memory['total_mb']['final']}: "
            f"growth after warm-up {memory['growth_after_warmup_pct']}% "
            f"(limit {memory['threshold_pct']}%)"
        )
    else:
        lines.append(f"replica memory not measured: {memory['reason']}")
    lines.append(f"db pool checked out at the end: {report['db_pool']['checked_out_end']}")
    verdict = report["verdict"]
    lines.append("PASS" if verdict["passed"] else "FAIL: " + "; ".join(verdict["failures"]))
    lines += [f"warning: {w}" for w in verdict["warnings"]]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="base URL of the deployment; without it a private local app is started")
    p.add_argument("--sessions", type=int, default=100)
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of conversation (default 60; unlimited with --requests-target)",
    )
    p.add_argument("--requests-target", type=int, default=None, help="stop after this many utterances")
    p.add_argument("--report", default="reports/load", help="directory for report.json and the plots")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--utterances-file", default=None, help="one utterance per line (default: built-in set)")
    p.add_argument("--user-turn", default="4-6", help="seconds the simulated caller talks, e.g. 4-6 or 0.5")
    p.add_argument(
        "--playback-factor",
        type=float,
        default=1.0,
        help="fraction of each utterance's audio duration waited as playback (1 = real time)",
    )
    p.add_argument("--heartbeat-interval", type=float, default=15.0)
    p.add_argument("--ramp-up", type=float, default=None, help="seconds over which sessions start")
    p.add_argument(
        "--warmup-requests",
        type=int,
        default=None,
        help="utterances before the memory baseline (default 2x sessions, or 10%% of the target)",
    )
    p.add_argument("--max-memory-growth", type=float, default=5.0, help="percent, after warm-up")
    p.add_argument(
        "--min-leak-requests",
        type=int,
        default=1000,
        help="utterances after warm-up needed before memory growth is judged (shorter runs only warn)",
    )
    p.add_argument(
        "--max-ttfb-factor",
        type=float,
        default=5.0,
        help="loaded p95 time to first byte at most this many times the unloaded p50 (0: not judged)",
    )
    p.add_argument("--sample-interval", type=float, default=2.0, help="seconds between memory samples")
    p.add_argument("--progress-interval", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--api-key", default=os.environ.get("LOAD_API_KEY"), help="bearer key (or LOAD_API_KEY)")
    p.add_argument("--voice", default="alloy")
    p.add_argument("--model", default="tts-1")
    p.add_argument("--app-name", default="tts", help="Serve application whose replicas are measured")
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray dashboard/bootstrap address to list replicas (default: found from the URL's port)",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.sessions < 1:
        p.error("--sessions must be at least 1")
    try:
        args.user_turn = parse_range(args.user_turn)
    except ValueError as exc:
        p.error(f"--user-turn: {exc}")
    if args.duration is None and args.requests_target is None:
        args.duration = 60.0
    return args


def config_from_args(args: argparse.Namespace, url: str) -> LoadConfig:
    return LoadConfig(
        url=url.rstrip("/"),
        sessions=args.sessions,
        duration_s=args.duration,
        requests_target=args.requests_target,
        report_dir=Path(args.report),
        seed=args.seed,
        utterances=load_utterances(args.utterances_file),
        pace=Pace(args.user_turn, args.playback_factor, args.heartbeat_interval),
        ramp_up_s=args.ramp_up,
        warmup_requests=args.warmup_requests,
        thresholds=Thresholds(
            max_memory_growth_pct=args.max_memory_growth,
            min_requests_after_warmup=args.min_leak_requests,
            max_ttfb_p95_factor=args.max_ttfb_factor or None,
        ),
        sample_interval_s=args.sample_interval,
        progress_interval_s=args.progress_interval,
        timeout_s=args.timeout,
        api_key=args.api_key,
        voice=args.voice,
        model=args.model,
        app_name=args.app_name,
        ray_address=args.ray_address,
        quiet=args.quiet,
    )


async def _main_async(config: LoadConfig) -> LoadResult:
    """Run with Ctrl-C handling: the first signal stops the conversation and finalizes, the second aborts."""
    control = RunControl(config.duration_s, config.requests_target)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print("stopping: finishing utterances and finalizing sessions (again to abort)", file=sys.stderr)
            control.stop()
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    return await run_load(config, control)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = contextlib.ExitStack()
    with stack:
        url = args.url
        if not url:
            from bench.serve_local import local_app

            url = stack.enter_context(local_app())
            print(f"started a private deployment at {url}", file=sys.stderr)
        config = config_from_args(args, url)
        try:
            result = asyncio.run(_main_async(config))
        except ConnectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except asyncio.CancelledError:
            print("aborted", file=sys.stderr)
            return EXIT_FAILED
    for line in summary_lines(result.report):
        print(line)
    print(f"report: {result.report_path}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
