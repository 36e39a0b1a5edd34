"""First audio of a due sentence while look-ahead sentences are being spoken, with and without
look-ahead's lower CPU priority (`serve_app.core.cpu_priority`).

    python -m bench.cpu_priority [--rounds 3] [--samples 30] [--helpers 2] [--json out.json]

In-process, the Flite engine as an ingress hosts it (libflite in-process plus `--helpers` helper
processes): `--helpers` look-ahead sentences (priority: 10 s of slack) are spoken back to back the
whole time, as under load the later sentences of answers already playing are, while due sentences
(a new answer's first, `PRIORITY_NEW`) are spoken one at a time and timed from the call to their
first audio. Each round runs three settings one after the other: nothing beside the due sentence
(the floor), look-ahead at the same priority (`FLITE_LOOKAHEAD_NICE=0`) and look-ahead lowered
(nice +10). Also reported: how many look-ahead sentences were finished meanwhile, i.e. what the
lowering costs the work it lowers. Only ratios within a round compare: this machine's speed moves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from serve_app.core.cpu_priority import CpuPriority
from serve_app.core.gate import PRIORITY_NEW
from serve_app.engines.flite import FliteEngine

DUE = "Sure, I can help you with that, let me pull up your account."
LOOKAHEAD = (
    "Your last order shipped on Tuesday and should arrive by the end of the week, "
    "and you will get an email with the tracking number as soon as the carrier scans it."
)
SLACK_MS = 10_000


async def _first_audio_ms(engine: FliteEngine) -> float:
    started = time.perf_counter()
    first: float | None = None
    async for piece in engine.synthesize(DUE, priority=PRIORITY_NEW):
        if first is None and isinstance(piece, bytes) and piece:
            first = time.perf_counter()
    assert first is not None
    return (first - started) * 1000


async def _speak_ahead(engine: FliteEngine, done: list[int]) -> None:
    while True:
        async for _ in engine.synthesize(LOOKAHEAD, priority=SLACK_MS):
            pass
        done[0] += 1


async def measure(setting: str, helpers: int, samples: int) -> dict[str, Any]:
    cpu = CpuPriority(10 if setting == "lowered" else 0)
    assert cpu.enabled or setting != "lowered", cpu.problem
    engine = FliteEngine(backend="library", overflow_processes=helpers, cpu_priority=cpu)
    try:
        for _ in range(3):  # helpers started and warm
            await _first_audio_ms(engine)
        await asyncio.gather(*(_first_audio_ms(engine) for _ in range(helpers + 1)))
        done = [0]
        background = [
            asyncio.ensure_future(_speak_ahead(engine, done)) for _ in range(0 if setting == "alone" else helpers)
        ]
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        times = []
        for _ in range(samples):
            times.append(await _first_audio_ms(engine))
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        engine.close()
    times.sort()
    return {
        "setting": setting,
        "first_audio_p50_ms": round(statistics.median(times), 1),
        "first_audio_p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
        "lookahead_per_s": round(done[0] / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--helpers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.helpers < 1:
        parser.error("--helpers must be at least 1: look-ahead runs lowered only beside helpers")
    rows = []
    print(f"{'round':>5} {'setting':>9} {'first audio p50':>16} {'p95':>9} {'x alone':>8} {'look-ahead/s':>13}")
    for round_ in range(1, args.rounds + 1):
        alone = None
        for setting in ("alone", "same", "lowered"):
            row = {"round": round_, **asyncio.run(measure(setting, args.helpers, args.samples))}
            alone = alone or row["first_audio_p50_ms"]
            row["x_alone"] = round(row["first_audio_p50_ms"] / alone, 2)
            rows.append(row)
            print(
                f"{round_:>5} {setting:>9} {row['first_audio_p50_ms']:>13.1f} ms {row['first_audio_p95_ms']:>6.1f} ms"
                f" {row['x_alone']:>7.2f}x {row['lookahead_per_s']:>13.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
