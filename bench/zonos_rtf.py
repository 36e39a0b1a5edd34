"""Zonos on the real library: throughput, real-time factor and time to first audio, per batch size.

    python -m bench.zonos_rtf --device cpu --config small      # anywhere, in a minute (CI size)
    python -m bench.zonos_rtf --device cuda --config full --compile   # a GPU: Zonos-v0.1-transformer size

The model is upstream's `Zonos` class with random weights (`bench.zonos_random`; "full" is the
Zonos-v0.1-transformer architecture, 1.6 B parameters, and the DAC 44 kHz codec). Generation
speed does not depend on the weights' values once the length is fixed, so every row speaks
exactly `--frames` frames (EOS is never sampled): by default 516 frames, 6 s of audio, about what a
voice reads a 100-character sentence in. Requests go through the real serving path:
`ZonosEngine.synthesize` -> the engine's `Batcher` -> one batched generation (our loop around the
model's modules) -> windowed DAC decoding -> PCM chunks.

Per batch size (all rows submitted at once; the batch leaves when full), measured twice with the
same seed, so both runs produce the same codes:
- streaming (first chunk after `--first-frames` frames, later chunks up to `--chunk-frames`):
  time to the first audio chunk (TTFA, the latency a listener hears), time to the last chunk;
- one-shot (the whole sentence decoded at the end, as upstream's `generate` + `decode`): time to
  the whole sentence;
- frames per second (all rows' frames / wall time), real-time factor (wall time / seconds of audio
  per row: below 1 is faster than real time), peak GPU memory (cuda);
- seam quality: the streamed waveform against the one-shot decode of the same codes (max and RMS
  difference, full scale 1.0).
Also: how many generation steps a row takes after its caller cancels (target: at most 2).

Prints progress and a table; with `--report DIR` writes `zonos_rtf.json` and PNG plots there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import numpy as np

from bench.zonos_random import CONFIGS, build_model
from serve_app.engines.zonos import SAMPLE_RATE, ZonosEngine
from serve_app.stream_decode import seam_error

# Exactly 100 characters: the sentence length the streaming target is stated for.
SENTENCE = "Your order shipped this morning and will arrive on Thursday; I can text you the tracking number too."
assert len(SENTENCE) == 100
FRAME_RATE = 86.1328125  # 44100 / 512
HOP = 512


def log(message: str) -> None:
    print(message, flush=True)


async def one_batch(engine: ZonosEngine, batch: int) -> dict[str, Any]:
    """Submit `batch` requests at once; per row: time to first audio, time to last chunk, the audio."""

    async def row() -> tuple[float, float, bytes]:
        started = time.perf_counter()
        first = 0.0
        audio = bytearray()
        async for chunk in engine.synthesize(SENTENCE, "alloy", language="en-us"):
            if chunk and not first:
                first = time.perf_counter() - started
            audio += chunk
        return first, time.perf_counter() - started, bytes(audio)

    started = time.perf_counter()
    rows = await asyncio.gather(*(row() for _ in range(batch)))
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "first_s": [r[0] for r in rows],
        "last_s": [r[1] for r in rows],
        "audio": [r[2] for r in rows],
    }


async def steps_after_cancel(model: Any, engine: ZonosEngine) -> int:
    """Generation steps a row takes after its caller closes its stream (read two chunks, then leave)."""
    steps: list[int] = []
    original = model._decode_one_token

    def counting(*args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return original(*args, **kwargs)

    model._decode_one_token = counting
    try:
        stream = cast(AsyncGenerator[bytes, None], engine.synthesize(SENTENCE, "alloy"))
        await anext(stream)  # admission
        await anext(stream)  # first audio
        await stream.aclose()
        at_cancel = len(steps)
        for _ in range(100_000):  # the batch ends within a step or two; never spin forever
            if not engine.batcher.running:
                break
            await asyncio.sleep(0.001)
        return len(steps) - at_cancel
    finally:
        del model._decode_one_token


def gpu_memory_gib(device: str, reset: bool = False) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


async def measure(model: Any, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    common: dict[str, Any] = {
        "device": args.device,
        "model": model,
        "max_batch_size": batch,
        "batch_wait_s": 5.0,  # all rows are submitted at once; the batch leaves when full
        "max_queued": 64,
        "max_new_frames": args.frames,
        "stop_at_eos": False,
        "seed": args.seed,
        "stream_first_frames": args.first_frames,
        "stream_chunk_frames": args.chunk_frames,
        "compile_decoder": args.compile,
    }
    streaming = ZonosEngine(**common)
    one_shot = ZonosEngine(**{**common, "streaming": False})
    streaming.load()
    one_shot.load()
    log(f"batch {batch}: warm-up")
    await one_batch(streaming, batch)
    gpu_memory_gib(args.device, reset=True)
    runs_stream, runs_whole = [], []
    for run in range(args.runs):
        log(f"batch {batch}: run {run + 1}/{args.runs} streaming")
        runs_stream.append(await one_batch(streaming, batch))
        log(f"batch {batch}: run {run + 1}/{args.runs} one-shot")
        runs_whole.append(await one_batch(one_shot, batch))
    memory = gpu_memory_gib(args.device)
    await streaming.batcher.close()
    await one_shot.batcher.close()
    audio_s = len(runs_whole[0]["audio"][0]) / (2 * SAMPLE_RATE)
    frames = batch * args.frames
    wall_stream = statistics.median(r["wall_s"] for r in runs_stream)
    wall_whole = statistics.median(r["wall_s"] for r in runs_whole)
    ttfa = statistics.median(statistics.mean(r["first_s"]) for r in runs_stream)
    ttfa_max = statistics.median(max(r["first_s"]) for r in runs_stream)
    whole = statistics.median(statistics.mean(r["last_s"]) for r in runs_whole)
    streamed = np.frombuffer(runs_stream[0]["audio"][0], "<i2") / 32767.0
    reference = np.frombuffer(runs_whole[0]["audio"][0], "<i2") / 32767.0
    seams = seam_error(streamed, reference)
    return {
        "batch": batch,
        "audio_s_per_row": round(audio_s, 3),
        "frames_per_s_one_shot": round(frames / wall_whole, 1),
        "frames_per_s_streaming": round(frames / wall_stream, 1),
        "rtf_one_shot": round(wall_whole / audio_s, 4),
        "rtf_streaming": round(wall_stream / audio_s, 4),
        "ttfa_s": round(ttfa, 4),
        "ttfa_max_s": round(ttfa_max, 4),
        "whole_sentence_s": round(whole, 4),
        "ttfa_over_whole": round(ttfa / whole, 4),
        "seam_max": seams["max"],
        "seam_rms": seams["rms"],
        "gpu_peak_gib": memory,
    }


def plot(report: Path, rows: list[dict[str, Any]], header: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r["batch"] for r in rows]
    title = f"Zonos ({header['config']}, random weights) on {header['device_name']}"
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(batches, [r["frames_per_s_one_shot"] for r in rows], "o-", label="one-shot")
    ax.plot(batches, [r["frames_per_s_streaming"] for r in rows], "s--", label="streaming")
    ax.axhline(FRAME_RATE, color="grey", lw=0.8, label="real time (1 row)")
    ax.set(xlabel="batch size", ylabel="frames / s (all rows)", title=title, xticks=batches)
    ax.legend()
    paths.append(report / "zonos_throughput.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(batches, [r["ttfa_s"] * 1000 for r in rows], "o-", label="streaming: first audio")
    ax.plot(batches, [r["whole_sentence_s"] * 1000 for r in rows], "s--", label="one-shot: whole sentence")
    ax.set(xlabel="batch size", ylabel="ms after submit", title=title, xticks=batches, yscale="log")
    ax.legend()
    paths.append(report / "zonos_latency.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(batches, [r["rtf_one_shot"] for r in rows], "o-", label="one-shot")
    ax.plot(batches, [r["rtf_streaming"] for r in rows], "s--", label="streaming")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="batch size", ylabel="real-time factor (per row)", title=title, xticks=batches)
    ax.legend()
    paths.append(report / "zonos_rtf.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    if any(r["gpu_peak_gib"] is not None for r in rows):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar([str(b) for b in batches], [r["gpu_peak_gib"] or 0 for r in rows])
        ax.set(xlabel="batch size", ylabel="peak GPU memory (GiB)", title=title)
        paths.append(report / "zonos_gpu_memory.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
    plt.close("all")
    return paths


async def main_async(args: argparse.Namespace) -> None:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    log(f"building the {args.config} model (random weights) on {args.device}")
    started = time.perf_counter()
    model = build_model(args.config, device=args.device, seed=args.seed)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    header = {
        "config": args.config,
        "architecture": CONFIGS[args.config][0]["backbone"],
        "parameters": params,
        "device": args.device,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "frames_per_row": args.frames,
        "first_frames": args.first_frames,
        "chunk_frames": args.chunk_frames,
        "compiled": args.compile,
        "runs": args.runs,
        "build_s": round(build_s, 1),
        "sentence_chars": len(SENTENCE),
    }
    log(json.dumps({k: v for k, v in header.items() if k != "architecture"}))
    rows = [await measure(model, args, int(b)) for b in args.batches.split(",")]
    cancel_engine = ZonosEngine(device=args.device, model=model, max_new_frames=4000, stop_at_eos=False, seed=1)
    cancel_engine.load()
    after_cancel = await steps_after_cancel(model, cancel_engine)
    await cancel_engine.batcher.close()
    log("")
    log(
        f"{'batch':>5} {'frames/s':>9} {'(stream)':>9} {'RTF':>7} {'TTFA ms':>8} {'whole ms':>9} {'ratio':>6} "
        f"{'seam max':>9} {'seam rms':>9} {'GPU GiB':>8}"
    )
    for r in rows:
        log(
            f"{r['batch']:>5} {r['frames_per_s_one_shot']:>9.1f} {r['frames_per_s_streaming']:>9.1f} "
            f"{r['rtf_one_shot']:>7.3f} {r['ttfa_s'] * 1000:>8.1f} {r['whole_sentence_s'] * 1000:>9.1f} "
            f"{r['ttfa_over_whole']:>6.3f} {r['seam_max']:>9.2e} {r['seam_rms']:>9.2e} "
            f"{r['gpu_peak_gib'] if r['gpu_peak_gib'] is not None else '-':>8}"
        )
    by_batch = {r["batch"]: r for r in rows}
    targets = []
    for b in (1, 4):
        if b in by_batch:
            ok = by_batch[b]["ttfa_over_whole"] <= 0.25
            targets.append(f"streaming TTFA <= 1/4 of one-shot at batch {b}: {'met' if ok else 'MISSED'}")
    if 1 in by_batch and 8 in by_batch:
        gain = by_batch[8]["frames_per_s_one_shot"] / by_batch[1]["frames_per_s_one_shot"]
        targets.append(f"throughput batch 8 / batch 1: {gain:.2f}x (GPU target >= 4x)")
    targets.append(f"steps after a cancel: {after_cancel} (target <= 2)")
    targets.append(f"seam RMS max over batches: {max(r['seam_rms'] for r in rows):.2e} (goal < 1e-2)")
    for line in targets:
        log(line)
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        result = {**header, "rows": rows, "steps_after_cancel": after_cancel, "targets": targets}
        (args.report / "zonos_rtf.json").write_text(json.dumps(result, indent=2))
        for path in plot(args.report, rows, header):
            log(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--frames", type=int, default=516, help="frames every row speaks (86 per second)")
    parser.add_argument("--first-frames", type=int, default=8)
    parser.add_argument("--chunk-frames", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=421)
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoding step (upstream's default)")
    parser.add_argument("--report", type=Path, help="write zonos_rtf.json and PNG plots here")
    args = parser.parse_args()
    if args.frames < args.first_frames + 16:
        sys.exit("--frames must leave room for a few chunks")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
