"""Zonos real-time factor and throughput at batch sizes 1, 4 and 8, in-process, on one device.

    python -m bench.zonos_rtf [--device cuda] [--model Zyphra/Zonos-v0.1-hybrid] [--runs 3]
    python -m bench.zonos_rtf --fake --device cpu      # the test double: our overhead only

Runs `ZonosEngine.render_batch_blocking` (the code the Serve deployment's `@serve.batch` calls:
cond dicts, one `generate` per batch, decode, trimming, PCM conversion) with typical one-sentence
requests. Each batch size is warmed up once first (kernels compile per batch shape). Per batch
size it prints:
- latency: wall seconds for one batch (what each request in it waits before its first byte);
- RTF: latency / mean audio seconds per request (below 1.0 = faster than real time);
- throughput: audio seconds produced per wall second (x real time), and sentences per second.

With `--fake` the Zonos test double (tests/fakes/zonos) stands in for the model, so the figures
measure only this project's overhead around `generate`, never Zonos itself. Real figures need a
GPU node with Zonos installed from source (docs/engines.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from serve_app.audio import SAMPLE_WIDTH
from serve_app.engines.zonos import SAMPLE_RATE, ZonosEngine, ZonosRequest

SENTENCES = [
    "Thanks for calling, how can I help you today?",
    "Your order shipped this morning and should arrive on Thursday.",
    "I can book a table for four at seven thirty, does that work for you?",
    "The weather tomorrow looks sunny, with a high of twenty two degrees.",
    "Let me check that for you, it will only take a moment.",
    "Your balance is one hundred and twenty dollars and fifty cents.",
    "Sure, I have moved your appointment to next Monday at ten.",
    "Is there anything else I can help you with before you go?",
]
FAKES = Path(__file__).resolve().parents[1] / "tests" / "fakes"


def measure(engine: ZonosEngine, batch: int, runs: int, language: str) -> dict[str, Any]:
    requests = [ZonosRequest(SENTENCES[i % len(SENTENCES)], language, "default") for i in range(batch)]
    engine.render_batch_blocking(requests)  # warm-up for this batch shape
    latencies: list[float] = []
    audio: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        results = engine.render_batch_blocking(requests)
        latencies.append(time.perf_counter() - started)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise RuntimeError(f"batch {batch} failed: {errors[0]}")
        audio.append(sum(len(r) for r in results if isinstance(r, bytes)) / (SAMPLE_WIDTH * SAMPLE_RATE))
    latency = statistics.median(latencies)
    seconds = statistics.median(audio)
    return {
        "batch": batch,
        "latency_s": round(latency, 3),
        "audio_s_per_request": round(seconds / batch, 3),
        "rtf": round(latency / (seconds / batch), 4),
        "throughput_x_realtime": round(seconds / latency, 2),
        "sentences_per_s": round(batch / latency, 2),
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    return "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="Zyphra/Zonos-v0.1-hybrid")
    parser.add_argument("--language", default="en-us")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=421)
    parser.add_argument("--fake", action="store_true", help="use the Zonos test double (measures our overhead only)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.fake:
        sys.path.insert(0, str(FAKES))
    engine = ZonosEngine(model_name=args.model, device=args.device, language=args.language, seed=args.seed)
    started = time.perf_counter()
    engine.load()
    if not engine.loaded:
        raise SystemExit(f"Zonos is not available: {asyncio.run(engine.check()).reason}")
    load_s = time.perf_counter() - started
    rows = [measure(engine, int(b), args.runs, args.language) for b in args.batches.split(",")]
    header = {
        "model": args.model,
        "device": device_name(args.device),
        "double": args.fake,
        "load_s": round(load_s, 1),
        "runs": args.runs,
    }
    print(json.dumps(header))
    if args.fake:
        print("NOTE: test double, not Zonos: these figures are this project's overhead around generate() only")
    print(f"{'batch':>5} {'latency_s':>10} {'audio_s/req':>12} {'RTF':>8} {'x realtime':>11} {'sent/s':>8}")
    for row in rows:
        print(
            f"{row['batch']:>5} {row['latency_s']:>10.3f} {row['audio_s_per_request']:>12.2f} {row['rtf']:>8.4f} "
            f"{row['throughput_x_realtime']:>11.2f} {row['sentences_per_s']:>8.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
