"""The realtime socket against HTTP: first audio, barge-in, and word timings, through Ray Serve.

    python -m bench.realtime [--runs 20] [--report reports/realtime.json]

Starts a private deployment (`bench.serve_local`: serve_config.yaml, its own Ray cluster) with the
chain `zonos,edge,flite` and Edge pointed at a local fake Edge service (tests/fakes/edge_server.py:
Edge's protocol, word boundaries, Flite's voice as MP3, streamed at `--edge-realtime-factor` times
real time like the service). Zonos has no GPU here and is reported unavailable. Then, one after
another (never concurrently, so they do not steal CPU from each other), per engine:

1. First audio: HTTP time to first byte of a one-sentence `pcm` request, against the socket's time
   from the fragment that completes the same sentence (its final ". ", after the rest of the
   sentence was sent in 4-character fragments like LLM tokens) to the first binary frame, and from
   `input_text.flush` (a sentence without end punctuation) to the first frame. Target: <= 1.2x.
   HTTP and socket runs alternate, so both see the same machine.
2. Barge-in: a long answer, `cancel` after its first audio frame: time to `cancelled` (target p95
   <= 100 ms), and when the engine's work stopped (target <= 200 ms): for Flite from the CPU time of
   its synthesis (inside the ingress, as shipped: the ingress's threads but its event loop, plus its
   helper processes; in a deployment of its own: its replica process; psutil, sampled every 4 ms;
   /proc counts 10 ms ticks): the moment after which
   it used at most one more tick in a 600 ms window, next to the CPU it used in that window and in an
   idle window; for Edge the moment the fake service saw the engine's connections close.
3. Word timing: word start times on the socket against the engine's own timing, end to end: the
   audio the client received before the sentence started plus the engine's time for the word
   (Flite: its utterance's segment times, from libflite in this process; Edge: the word boundaries
   the service sent, plus the MP3 codec delay measured on the audio itself by cross-correlation).
   Target: within 50 ms. For reference, how far the estimate that engines without alignment get
   (serve_app.core.timing.estimate_words) lands from Flite's exact times.
4. Spoken-form normalisation (`--parts normalize`): number-heavy sentences streamed as LLM-like
   tokens (words with their leading space, digits in short groups, symbols alone) at
   `--tokens-per-s` (40), each run on a fresh socket, the end punctuation as a token of its own
   (`--end-token joined`: ". " as one fragment); time from the token that completes the sentence
   (the next sentence's first word, one token gap after the period) to the first audio frame, with
   `normalize` on and off (alternating; "off" sends the spoken form made in this process, so the
   engine says the same words): the added time and its share of first byte (target <= 10%).
   The socket normalises what is stable of a sentence while it arrives, and all of it once it could
   end (serve_app.core.spoken_stream). The same for HTTP (`normalize` true/false on one `pcm`
   request: the whole sentence is normalised before synthesis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.common import timed_post
from bench.normalize_stream import llm_tokens
from bench.paired import tree_cpu

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank."
OPEN_SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank"
LONG_SENTENCE = (
    "This is a long sentence of a spoken answer, with several clauses in it, which keeps the engine "
    "busy for a while, so that a barge-in arrives while the engine is still at work on it and on the "
    "sentences that follow it"
)
LONG = " ".join(f"{LONG_SENTENCE} number {n}." for n in ("one", "two", "three", "four", "five", "six"))
TIMING_TEXT = (
    "Good morning, and welcome back. Your order of twelve items shipped yesterday afternoon. "
    "It should arrive on Thursday, weather permitting; please keep your phone nearby."
)
PCM_RATE = 24000
# Number-heavy agent sentences; each run fills in new numbers (the normaliser memoises windows, so a
# repeated sentence would cost nothing) and cuts them into LLM-like tokens (bench.normalize_stream).
NUMBER_TEMPLATES = [
    "Your total of ${dollars}.{cents:02d} for {items} items was paid on {month} {day} at {hour}:{minute:02d} pm,"
    " so nothing more is due today.",
    "I can refund ${thousands},{hundreds:03d}.{cents:02d} to the card ending in {card} within {items} to {later}"
    " business days.",
    "Your appointment is on Tuesday, {month} {day}, {year} at {hour}:{minute:02d} AM with Dr. Smith in room {room}.",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


def number_sentence(template: str, rng: random.Random) -> str:
    return template.format(
        dollars=rng.randint(10, 999), cents=rng.randint(1, 99), items=rng.randint(2, 9), month=rng.choice(MONTHS),
        day=rng.randint(1, 28), hour=rng.randint(1, 11), minute=rng.randint(1, 59), thousands=rng.randint(1, 9),
        hundreds=rng.randint(0, 999), card=rng.randint(1000, 9999), later=rng.randint(10, 14),
        year=rng.randint(2020, 2030), room=rng.randint(100, 999),
    )


NEXT_TOKEN = " Thanks"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50": round(pct(ms, 0.5), 1), "p95": round(pct(ms, 0.95), 1), "max": round(max(ms), 1)}


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/audio/speech/stream"


async def send(ws: ClientConnection, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


Received = list[tuple[bytes | dict[str, Any], int]]  # each message with the audio bytes before it


async def until(ws: ClientConnection, kind: str) -> tuple[list[dict[str, Any]], Received]:
    """Events up to `kind`, and everything received in order with the audio bytes before it."""
    events: list[dict[str, Any]] = []
    ordered: list[tuple[bytes | dict[str, Any], int]] = []
    audio = 0
    async with asyncio.timeout(120):
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                ordered.append((message, audio))
                audio += len(message)
                continue
            event = json.loads(message)
            if event["type"] == "error":
                raise RuntimeError(f"error event: {event['error']}")
            events.append(event)
            ordered.append((event, audio))
            if event["type"] == kind:
                return events, ordered


# ---------------------------------------------------------------------------------- first audio
async def first_audio(url: str, engine: str, runs: int) -> dict[str, Any]:
    """Each run on a fresh socket (connected before the clock starts): a socket paces its audio like
    a real-time listener, so turns sent back to back would otherwise wait for earlier audio."""
    body: dict[str, object] = {
        "model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm", "engine": engine,
    }
    http: list[float] = []
    completed: list[float] = []
    flushed: list[float] = []
    pieces = [SENTENCE[i : i + 4] for i in range(0, len(SENTENCE) - 2, 4)]
    rest = SENTENCE[sum(len(p) for p in pieces) :] + " "  # the fragment that completes the sentence

    async def first_frame(ws: ClientConnection, last: str, kind: str) -> float:
        started = time.perf_counter()
        await send(ws, kind, **({"text": last} if kind == "input_text.append" else {}))
        async with asyncio.timeout(60):
            while not isinstance(await ws.recv(), bytes):
                pass
        return time.perf_counter() - started

    async with httpx.AsyncClient(timeout=60) as client:
        for run in range(runs + 3):  # three warm-up rounds
            timing = await timed_post(client, f"{url}/v1/audio/speech", body)
            async with connect(ws_url(url)) as ws:
                await send(ws, "session.update", response_format="pcm", engine=engine)
                for piece in pieces:
                    await send(ws, "input_text.append", text=piece)
                after_end = await first_frame(ws, rest, "input_text.append")
                await send(ws, "cancel")
                await until(ws, "cancelled")
            async with connect(ws_url(url)) as ws:
                await send(ws, "session.update", response_format="pcm", engine=engine)
                await send(ws, "input_text.append", text=OPEN_SENTENCE)
                after_flush = await first_frame(ws, "", "input_text.flush")
                await send(ws, "cancel")
                await until(ws, "cancelled")
            if run >= 3:
                http.append(timing.ttfb_s)
                completed.append(after_end)
                flushed.append(after_flush)
    ratio = statistics.median(completed) / statistics.median(http)
    return {
        "http_ttfb_ms": summary_ms(http),
        "ws_sentence_end_to_audio_ms": summary_ms(completed),
        "ws_flush_to_audio_ms": summary_ms(flushed),
        "ratio_p50": round(ratio, 2),
        "ratio_p95": round(pct(completed, 0.95) / pct(http, 0.95), 2),
        "ratio_flush_p50": round(statistics.median(flushed) / statistics.median(http), 2),
    }


# ---------------------------------------------------------------------------------- normalisation
async def wait_normalizer(url: str, timeout_s: float = 60.0) -> None:
    """The replica loads the normaliser in the background: wait until a socket speaks "5" as a word."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with connect(ws_url(url)) as ws:
            await send(ws, "session.update", response_format="pcm", engine="flite", timestamps=True)
            await send(ws, "input_text.append", text="It is 5 now.")
            await send(ws, "input_text.flush")
            events, _ = await until(ws, "flushed")
        if "five" in [e["word"].lower() for e in events if e["type"] == "word"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the spoken-form normaliser did not become ready")
        await asyncio.sleep(1.0)


async def normalization(
    url: str, engine: str, runs: int, tokens_per_s: float, end_token: str, normalizer: Any
) -> dict[str, Any]:
    """Sentence end to first audio (socket, tokens at `tokens_per_s`) and HTTP TTFB, normalise on/off.

    "Off" sends the sentence's spoken form, made here by `normalizer` (the service's normaliser, in
    this process), with `normalize: false`: the engine then gets the same text either way, so the
    difference is the service's normalisation alone (engines take longer over "twenty twenty four"
    than over "2024", which would otherwise count against it, or for it).

    `end_token` "separate": the end punctuation is a token of its own and the next sentence's first
    token completes the sentence (how chat models stream); "joined": ". " arrives as one fragment, so
    nothing is known about the end before the sentence is complete."""
    gap_s = 1.0 / tokens_per_s
    ws_times: dict[bool, list[float]] = {True: [], False: []}
    http_times: dict[bool, list[float]] = {True: [], False: []}
    per_sentence: dict[tuple[int, bool], list[float]] = {}  # socket times by sentence and setting

    async def socket_run(text: str, normalize: bool) -> float:
        tokens = llm_tokens(text)
        tokens = [*tokens, NEXT_TOKEN] if end_token == "separate" else [*tokens[:-1], tokens[-1] + " "]
        async with connect(ws_url(url)) as ws:
            await send(ws, "session.update", response_format="pcm", engine=engine, normalize=normalize)
            for token in tokens[:-1]:
                await send(ws, "input_text.append", text=token)
                await asyncio.sleep(gap_s)
            started = time.perf_counter()
            await send(ws, "input_text.append", text=tokens[-1])
            async with asyncio.timeout(60):
                while not isinstance(await ws.recv(), bytes):
                    pass
            elapsed = time.perf_counter() - started
            await send(ws, "cancel")
            await until(ws, "cancelled")
        return elapsed

    rng = random.Random(13)
    async with httpx.AsyncClient(timeout=60) as client:
        for run in range(runs + 2):  # two warm-up rounds
            for number, template in enumerate(NUMBER_TEMPLATES):
                # One sentence for HTTP and another for the socket, both new: neither finds the other's windows.
                http_text, ws_text = number_sentence(template, rng), number_sentence(template, rng)
                spoken = {text: normalizer.normalize(text) for text in (http_text, ws_text)}
                for normalize in ((True, False) if run % 2 else (False, True)):
                    body: dict[str, object] = {
                        "model": "tts-1", "voice": "alloy", "input": http_text if normalize else spoken[http_text],
                        "response_format": "pcm", "engine": engine, "normalize": normalize,
                    }
                    http = (await timed_post(client, f"{url}/v1/audio/speech", body)).ttfb_s
                    ws = await socket_run(ws_text if normalize else spoken[ws_text], normalize)
                    if run >= 2:
                        http_times[normalize].append(http)
                        ws_times[normalize].append(ws)
                        per_sentence.setdefault((number, normalize), []).append(ws)

    def compare(times: dict[bool, list[float]]) -> dict[str, Any]:
        on, off = pct(times[True], 0.5), pct(times[False], 0.5)  # the p50 the summaries show
        return {"normalize_on_ms": summary_ms(times[True]), "normalize_off_ms": summary_ms(times[False]),
                "added_p50_ms": round((on - off) * 1000, 1), "added_share_of_first_byte": round((on - off) / off, 3)}

    return {
        "sentences": NUMBER_TEMPLATES,
        "tokens_per_s": tokens_per_s,
        "end_token": end_token,
        "ws_sentence_end_to_audio": compare(ws_times),
        "ws_added_p50_ms_by_sentence": [
            round((pct(per_sentence[(n, True)], 0.5) - pct(per_sentence[(n, False)], 0.5)) * 1000, 1)
            for n in range(len(NUMBER_TEMPLATES))
        ],
        "http_ttfb": compare(http_times),
    }


# ---------------------------------------------------------------------------------- barge-in
def flite_cpu(pid: int, in_ingress: bool) -> Callable[[], float]:
    """The CPU seconds Flite's synthesis has used so far in one replica (`bench.paired.tree_cpu`:
    the process and its helper processes, ended ones included).

    In its own deployment (`FLITE_IN_PROCESS=false`) that is the replica's whole tree. Inside the
    ingress (as shipped) the ingress's main thread is left out: it is the event loop, which keeps
    serving the socket.
    """
    tree = tree_cpu(pid)
    if not in_ingress:
        return tree
    process = psutil.Process(pid)

    def read() -> float:
        with contextlib.suppress(psutil.Error):
            loop_thread = next(t.user_time + t.system_time for t in process.threads() if t.id == pid)
            return tree() - loop_thread
        return tree()

    return read


class CpuWatch:
    """Samples a CPU counter every 4 ms in a thread: when did it stop growing after a moment?"""

    def __init__(self, cpu: Callable[[], float]) -> None:
        self._cpu = cpu
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self._cpu()))
            time.sleep(0.004)

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _cpu_at(self, moment: float) -> float:
        before = [cpu for at, cpu in self._samples if at <= moment]
        return before[-1] if before else self._samples[0][1]

    def stopped_after(self, moment: float, window_s: float, allowance_s: float = 0.011) -> tuple[float, float]:
        """(seconds after `moment` from which the process used at most `allowance_s` more CPU up to
        the end of the window, CPU seconds used in the window). /proc counts 10 ms ticks, and a
        replica has background work (metrics, health checks): one tick is allowed."""
        end = self._cpu_at(moment + window_s)
        used = end - self._cpu_at(moment)
        for at, cpu in self._samples:
            if moment <= at <= moment + window_s and end - cpu <= allowance_s:
                return at - moment, used
        return window_s, used

    def idle_cpu(self, start: float, window_s: float) -> float:
        return self._cpu_at(start + window_s) - self._cpu_at(start)


def replica_pid(deployment: str) -> int | None:
    """The process of a replica of our own cluster (a descendant of this process: other people's
    clusters on the host are left out), found by the title Ray gives it."""
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if f"ServeReplica:tts:{deployment}" in " ".join(process.cmdline()):
                return int(process.pid)
    return None


async def barge_in(url: str, engine: str, runs: int, fake: Any | None, delay_s: float = 0.0) -> dict[str, Any]:
    """`cancel` after the first audio frame (+ `delay_s`); see the module docstring."""
    acks: list[float] = []
    stops: list[float] = []
    used: list[float] = []
    idle: list[float] = []
    watch: CpuWatch | None = None
    if engine == "flite":
        own, ingress = replica_pid("FliteEngine"), replica_pid("Ingress")
        if own is not None or ingress is not None:
            watch = CpuWatch(flite_cpu(own, False) if own is not None else flite_cpu(int(ingress or 0), True))
    with watch if watch is not None else contextlib.nullcontext():
        async with connect(ws_url(url)) as ws:
            await send(ws, "session.update", response_format="pcm", engine=engine)
            for run in range(runs + 2):
                await send(ws, "input_text.append", text=LONG)
                async with asyncio.timeout(60):
                    while not isinstance(await ws.recv(), bytes):
                        pass
                if delay_s:
                    await asyncio.sleep(delay_s)
                closed_before = len(fake.closed) if fake is not None else 0
                started = time.perf_counter()
                cancelled_at = time.monotonic()
                await send(ws, "cancel")
                async with asyncio.timeout(30):
                    while True:
                        message = await ws.recv()
                        if isinstance(message, str) and json.loads(message)["type"] == "cancelled":
                            break
                ack = time.perf_counter() - started
                await asyncio.sleep(0.7)  # the window after the cancel
                quiet_from = time.perf_counter()
                await asyncio.sleep(0.7)  # an idle window: the replica's background CPU
                if run < 2:
                    continue
                acks.append(ack)
                if watch is not None:
                    stop, spent = watch.stopped_after(started, 0.6)
                    stops.append(stop)
                    used.append(spent)
                    idle.append(watch.idle_cpu(quiet_from, 0.6))
                elif fake is not None:
                    ends = [t - cancelled_at for t in fake.closed[closed_before:]]
                    if ends:
                        stops.append(max(0.0, max(ends)))
    result: dict[str, Any] = {"cancel_ack_ms": summary_ms(acks)}
    if stops:
        how = (
            "Flite's CPU (its replica, or inside the ingress its synthesis threads and helpers): no more"
            " than one 10 ms tick used after this point (600 ms window)"
            if watch else "fake Edge service saw the engine's sockets close"
        )
        result["engine_stopped_ms"] = {**summary_ms(stops), "measured_by": how}
    if used:
        result["replica_cpu_ms_in_600ms_after_cancel"] = summary_ms(used)
        result["replica_cpu_ms_in_600ms_idle"] = summary_ms(idle)
    return result


# ---------------------------------------------------------------------------------- word timing
def lag_s(received: bytes, original: bytes, rate: int = PCM_RATE, max_lag_s: float = 0.2) -> float:
    """The delay of `received` against `original` (same rate), by cross-correlating their first second."""
    a = np.frombuffer(received[: len(received) - len(received) % 2], dtype="<i2").astype(np.float64)[:rate]
    b = np.frombuffer(original[: len(original) - len(original) % 2], dtype="<i2").astype(np.float64)[:rate]
    lags = range(int(max_lag_s * rate))
    scores = [float(np.dot(a[lag : lag + len(b) - int(max_lag_s * rate)], b[: len(b) - int(max_lag_s * rate)]))
              for lag in lags]
    return int(np.argmax(scores)) / rate


def flite_reference(sentence: str) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Flite's own word starts for `sentence` (aligned to its words), and the estimate from its audio."""
    from serve_app.core.timing import WordMark, align_marks, estimate_words
    from serve_app.engines.flite import FliteEngine

    async def run() -> tuple[list[WordMark], bytes]:
        engine = FliteEngine(backend="library")
        marks: list[WordMark] = []
        pcm = b""
        async for piece in engine.synthesize(sentence, "slt"):
            if isinstance(piece, WordMark):
                marks.append(piece)
            else:
                pcm += piece
        return marks, pcm

    marks, pcm = asyncio.run(run())
    exact = [(w.word, w.start_s) for w in align_marks(sentence, marks)]
    estimated = [(w.word, w.start_s) for w in estimate_words(sentence, pcm, 16000)]
    return exact, estimated


async def word_timing(url: str, engine: str, fake: Any | None) -> dict[str, Any]:
    async with connect(ws_url(url), max_size=None) as ws:
        await send(ws, "session.update", response_format="pcm", engine=engine, timestamps=True, normalize=False,
                   voice="alloy")
        requests_before = len(fake.requests) if fake is not None else 0
        await send(ws, "input_text.append", text=TIMING_TEXT)
        await send(ws, "input_text.flush")
        _, ordered = await until(ws, "flushed")
    audio = b"".join(m for m, _ in ordered if isinstance(m, bytes))
    sentences: list[dict[str, Any]] = []
    for message, audio_before in ordered:
        if isinstance(message, dict) and message["type"] == "sentence.start":
            sentences.append({"text": message["text"], "audio_before_s": audio_before / (2 * PCM_RATE),
                              "start_s": message["start_s"], "words": []})
        elif isinstance(message, dict) and message["type"] == "word":
            sentences[-1]["words"].append((message["word"], message["start_s"]))
    errors: list[float] = []
    estimate_errors: list[float] = []
    lags: list[float] = []
    for sentence in sentences:
        if engine == "flite":
            reference, estimated = await asyncio.to_thread(flite_reference, sentence["text"])
            exact = dict(reference)
            estimate_errors += [abs(t - exact[w]) for w, t in estimated if w in exact]
            offset = 0.0
        else:
            assert fake is not None, "Edge's reference timings come from the fake service"
            # By text: a request cancelled by the barge-in part may still arrive after the snapshot.
            request = [r for r in fake.requests[requests_before:] if r.text == sentence["text"]][-1]
            reference = [(w, start) for w, start, _ in request.words]
            begin = int(sentence["audio_before_s"] * PCM_RATE) * 2
            offset = lag_s(audio[begin : begin + 2 * PCM_RATE], request.pcm)
            lags.append(offset)
        assert [w for w, _ in sentence["words"]] == [w for w, _ in reference], (sentence["words"], reference)
        for (_, ours), (_, theirs) in zip(sentence["words"], reference, strict=True):
            errors.append(abs(ours - (sentence["audio_before_s"] + offset + theirs)))
    result: dict[str, Any] = {
        "words": len(errors),
        "start_error_ms": summary_ms(errors),
        "sentence_start_vs_client_audio_ms": round(
            max(abs(s["start_s"] - s["audio_before_s"]) for s in sentences) * 1000, 1
        ),
    }
    if estimate_errors:
        result["estimate_vs_exact_ms"] = summary_ms(estimate_errors)
    if lags:
        result["mp3_codec_lag_measured_ms"] = round(statistics.median(lags) * 1000, 1)
    return result


# ---------------------------------------------------------------------------------- driver
@contextlib.contextmanager
def deployment(realtime_factor: float) -> Iterator[tuple[str, Any]]:
    from bench import serve_local
    from tests.fakes.edge_server import EdgeServerThread

    with EdgeServerThread("normal") as fake:
        fake.realtime_factor = realtime_factor
        info = serve_local.start(
            chain="zonos,edge,flite",
            database_url=serve_local.FALLBACK_DATABASE_URL,
            env={"EDGE_ENABLED": "true", "EDGE_WSS_URL": fake.url},
        )
        try:
            yield info["url"], fake
        finally:
            serve_local.stop()


async def measure(
    url: str, fake: Any, runs: int, engines: list[str], parts: list[str], tokens_per_s: float = 40.0,
    end_token: str = "separate",
) -> dict[str, Any]:
    report: dict[str, Any] = {}
    normalizer = None
    if "normalize" in parts:
        from serve_app.core.spoken import SpokenNormalizer

        normalizer = SpokenNormalizer(memo_size=0, build_if_missing=False)  # the client's own, for "off"
        normalizer.load()
        await wait_normalizer(url)
    for engine in engines:
        report[engine] = {}
        if "first_audio" in parts:
            print(f"[{engine}] first audio ...", flush=True)
            report[engine]["first_audio"] = await first_audio(url, engine, runs)
        if "barge_in" in parts:
            print(f"[{engine}] barge-in ...", flush=True)
            report[engine]["barge_in"] = await barge_in(url, engine, runs, fake if engine == "edge" else None)
            # The same once the engines have finished their look-ahead (the socket is pacing its
            # audio): the acknowledgement alone, without engine work competing for the 2 cores.
            report[engine]["barge_in_engines_idle"] = {
                "cancel_ack_ms": (await barge_in(url, engine, runs, None, delay_s=1.5))["cancel_ack_ms"]
            }
        if "normalize" in parts:
            print(f"[{engine}] normalisation ...", flush=True)
            report[engine]["normalize"] = await normalization(url, engine, runs, tokens_per_s, end_token, normalizer)
        if "word_timing" in parts:
            print(f"[{engine}] word timing ...", flush=True)
            report[engine]["word_timing"] = await word_timing(url, engine, fake)
        print(json.dumps(report[engine], indent=2), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--engines", default="flite,edge")
    parser.add_argument("--parts", default="first_audio,barge_in,word_timing,normalize")
    parser.add_argument("--tokens-per-s", type=float, default=40.0,
                        help="pace of the tokens in the normalisation part (an LLM streams 30-60)")
    parser.add_argument("--end-token", choices=("separate", "joined"), default="separate",
                        help="normalisation part: the end punctuation as its own token, or '. ' in one fragment")
    parser.add_argument("--edge-realtime-factor", type=float, default=4.0,
                        help="the fake Edge service streams audio this many times faster than real time")
    parser.add_argument("--report", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    import os

    load = os.getloadavg()
    with deployment(args.edge_realtime_factor) as (url, fake):
        report = asyncio.run(measure(url, fake, args.runs, args.engines.split(","), args.parts.split(","),
                                     args.tokens_per_s, args.end_token))
    report["host"] = {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load],
                      "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
