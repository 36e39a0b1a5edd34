"""Zyphra Zonos: the primary engine, on GPU, batched, streaming, with voice cloning.

Loading is upstream's: `Zonos.from_pretrained(ZONOS_MODEL, device=ZONOS_DEVICE)` once per replica
(or a model handed in, for tests and benchmarks), a speaker embedding (`make_speaker_embedding`)
from ZONOS_SPEAKER_AUDIO or a registered clip, `make_cond_dict` per request, 44.1 kHz output from
the DAC autoencoder.

Cloned voices come from the `VoiceStore` the engine is given (built from VOICES_BACKEND: the
sessions database by default, or S3), never from a local directory, so a clip uploaded through any
ingress is spoken by any replica. `prepare` (on the replica's event loop) checks the voice exists
and fetches what this replica lacks: a speaker embedding another replica stored for this model, or
else the clip. The batch thread computes a missing embedding (serialised with the model's other
work) and hands it back to the loop, which stores it for the other replicas. Embeddings are kept
in a small per-replica LRU; a deleted voice is dropped from it and refused once the store says so
(within VOICES_CHECK_INTERVAL_S on replicas other than the one that deleted it).

torch and zonos are imported lazily, inside these paths only: the service
runs without them, and `check()` says why Zonos cannot serve (PyPI's `zonos` is an empty
placeholder; the real package installs from https://github.com/Zyphra/Zonos; or no CUDA).

Generation is our own loop around the model's modules, because upstream's `Zonos.generate` only
works for one request at a time:

- Batched conditioning. `make_cond_dict` builds one request's tensors as `[1, 1, k]`; the prefix
  conditioner calls each conditioner as `apply_cond(*value)`, so a `[1, 1, k]` tensor is unpacked
  into one `[1, k]` argument, while a stacked `[n, 1, k]` tensor becomes n arguments and fails
  (`FourierConditioner.apply_cond() takes 2 positional arguments but 3 were given`). We pass
  each batched value as a one-element tuple `([n, 1, k],)`, the calling convention `espeak`
  already uses (`(texts, languages)`), which every conditioner accepts and batches. Texts of
  different lengths are left-padded with PAD phonemes by upstream's own `tokenize_phonemes`.
  Requests with and without a speaker share a batch: the conditioner runs once with the speakers
  and once without, and each row takes its own (rows are independent in the conditioner).
- Batched prefill under classifier-free guidance. Upstream's `_prefill` expands `[n, 9, 1]`
  input ids to the `2n` rows (conditional, then unconditional), which only works for n = 1; we
  repeat them instead (`repeat(2, 1, 1)`, the layout `_decode_one_token` uses), then let the
  model's `_compute_logits` run the backbone, the heads and the guidance mix.
- Decoding steps are the model's `_decode_one_token` (CUDA graphs on the mamba backbone), with
  upstream's sampling (`sample_from_logits`, min-p), delay pattern, EOS rules (EOS only in
  codebook 0, then forced into codebook k at delay k) and repetition penalty. New tokens go in
  positionally (`torch.where`); upstream's `masked_scatter_` takes its source in flat order,
  which is only right for one row. For one request the codes equal upstream `generate`'s with
  the same seed (tested).
- Rows finish independently: each row ends at its own EOS or its own token budget (from its
  text length and speed), leaves the batch (its KV-cache rows are dropped, so a batch shrinks
  as rows end), and its audio is exactly its frames, no padding.
- Streaming: every step, each row's completed frames are decoded in windows with left context
  and lookahead (`serve_app.stream_decode`) and emitted, so the first audio leaves after a few
  frames instead of after the whole sentence. First and later chunk sizes are constructor
  arguments (`stream_first_frames`, `stream_chunk_frames`).
- Cancellation: the row's caller leaving (see `serve_app.batching`) drops the row at the next
  step; a batch with no rows left stops.

Requests reach the loop through a `Batcher` (batch window, max batch size, busy rejection,
admission marker `b""`); `serve_app.deployments` hosts the engine as a Serve deployment.
Faults: a CUDA error other than out-of-memory leaves the context unusable, so it is remembered,
`health()` fails and Serve replaces the replica. Bad input (empty or unspeakable text, an unknown
language or voice, a silent reference clip) is `InvalidInput` for that request only.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from config.settings import settings_config
from serve_app.batching import Batcher, Row
from serve_app.core.audio import SAMPLE_WIDTH, decode_audio
from serve_app.core.errors import ServiceUnavailable
from serve_app.core.gate import PRIORITY_NEW
from serve_app.core.imports import import_object, is_import_path
from serve_app.core.voices import Catalogue, Voice, VoiceTable, is_clone_id
from serve_app.engines.base import Engine, EngineCheck, EngineUnavailable, InvalidInput
from serve_app.engines.spec import DeploymentDefaults, EngineContext, EngineSettings, EngineSpec
from serve_app.stream_decode import StreamWindow, Window, to_pcm
from serve_app.voice_store import VoiceStore
from serve_app.voice_store.factory import build_voice_store

logger = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
SPEED_RANGE = (0.25, 4.0)
DEFAULT_SPEAKING_RATE = 15.0  # Zonos's default, "phonemes per minute" on its 0..40 scale
SPEAKING_RATE_RANGE = (5.0, 30.0)
FRAME_RATE = 86  # codes per second of audio (44.1 kHz, 512-sample hop)
MAX_SECONDS = 30.0  # Zonos's own default cap (86 * 30 tokens)
CHARS_PER_SECOND = 10.0  # a slow reading pace, so the token budget rarely cuts speech
DEFAULT_SPEAKER = "default"
WARMUP_TEXT = "Warming up the voice."
SILENT_CLIP_RMS = 1e-3  # a reference clip quieter than this (full scale 1.0) has no voice to clone
UNKNOWN_TOKEN = -1
CUDA_PROBE_WAIT_S = 5.0  # how long one health check waits on the CUDA probe before looking again later
INSTALL_HINT = (
    "install Zonos from source on GPU nodes: pip install '.[gpu]' 'zonos @ git+https://github.com/Zyphra/Zonos'"
)

OPENAI_NAMES = (
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip
VOICES = VoiceTable(
    voices=(Voice(DEFAULT_SPEAKER, "zonos", "Zonos default speaker", "en-US", None),),
    # One built-in speaker (ZONOS_SPEAKER_AUDIO or the model's own); timbre comes from clones.
    openai={name: DEFAULT_SPEAKER for name in OPENAI_NAMES},
)


@dataclass(frozen=True)
class SpeakerSource:
    """Where a clone's embedding comes from for one request, fetched on the event loop by `prepare`:
    this replica's cached tensor, else bytes another replica stored, else the clip to embed."""

    embedding: Any = None
    stored: bytes | None = None
    clip: tuple[int, np.ndarray] | None = None


@dataclass(frozen=True)
class ZonosRequest:
    """One sentence to speak; `speaker` is DEFAULT_SPEAKER or a registered clone id."""

    text: str
    language: str
    speaker: str
    speed: float = 1.0
    source: SpeakerSource | None = field(default=None, compare=False, repr=False)


def speaking_rate(speed: float) -> float:
    """OpenAI's `speed` on Zonos's speaking-rate scale, kept in the range where it still sounds like speech."""
    return min(max(DEFAULT_SPEAKING_RATE * speed, SPEAKING_RATE_RANGE[0]), SPEAKING_RATE_RANGE[1])


def token_budget(request: ZonosRequest) -> int:
    """A row's `max_new_tokens`: enough for its text at a slow pace, at most 30 s."""
    seconds = 2.0 + len(request.text) / (CHARS_PER_SECOND * min(request.speed, 1.0))
    return int(FRAME_RATE * min(seconds, MAX_SECONDS))


def match_language(requested: str, supported: list[str]) -> str | None:
    """An eSpeak code Zonos knows for a BCP 47 tag: exact, then the bare language, then its main variant."""
    tag = requested.replace("_", "-").lower()
    if tag in supported:
        return tag
    primary = tag.split("-")[0]
    if primary in supported:
        return primary
    variants = [code for code in supported if code.startswith(primary + "-")]
    preferred = {"en": "en-us", "fr": "fr-fr", "pt": "pt-br", "es": "es", "vi": "vi"}
    if preferred.get(primary) in variants:
        return preferred[primary]
    return variants[0] if variants else None


def batch_cond_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """One cond dict for a batch, in the calling convention the prefix conditioner batches.

    `espeak` lists are joined; every tensor key becomes a one-element tuple holding the
    `[n, 1, k]` stack (the conditioner calls `apply_cond(*value)`); a key that is None in every
    dict stays None (the conditioner's learned "unconditional" vector). Mixing None and tensors
    in one key is for the caller to split (see `batch_conditioning`).
    """
    import torch

    merged: dict[str, Any] = {}
    for key in dicts[0]:
        values = [d[key] for d in dicts]
        if key == "espeak":
            merged[key] = ([t for v in values for t in v[0]], [lang for v in values for lang in v[1]])
        elif all(v is None for v in values):
            merged[key] = None
        elif all(isinstance(v, torch.Tensor) for v in values):
            merged[key] = (torch.cat([v.reshape(1, 1, -1) for v in values], dim=0),)
        else:
            raise ValueError(f"cannot batch conditioning key {key!r} mixing tensors and None")
    return merged


def batch_conditioning(model: Any, dicts: list[dict[str, Any]]) -> Any:
    """`[2n, seq, d_model]` prefix for n requests: conditional rows, then unconditional rows.

    A batch mixing requests with and without a speaker runs the conditioner twice (with a zero
    placeholder speaker, then with none) and gives each row its own result.
    """
    import torch

    has_speaker = [d.get("speaker") is not None for d in dicts]
    if all(has_speaker) or not any(has_speaker):
        return model.prepare_conditioning(batch_cond_dicts(dicts))
    template = next(d["speaker"] for d in dicts if d.get("speaker") is not None)
    filled = [d if d.get("speaker") is not None else {**d, "speaker": torch.zeros_like(template)} for d in dicts]
    with_speaker = model.prepare_conditioning(batch_cond_dicts(filled))
    without = model.prepare_conditioning(batch_cond_dicts([{**d, "speaker": None} for d in dicts]))
    rows = torch.tensor([not s for s in has_speaker], device=with_speaker.device)
    mask = torch.cat([rows, torch.zeros_like(rows)]).reshape(-1, 1, 1)  # unconditional halves are equal
    return torch.where(mask, without, with_speaker)


def undelay(delayed: Any, start: int, end: int) -> Any:
    """Frames [start, end) of delayed codes `[rows, q, positions]` as plain codes `[rows, q, frames]`.

    Codebook k of frame t sits at position t + k + 1 (upstream's delay pattern). Special tokens
    (EOS 1024, masked 1025) become 0, as upstream `generate` does before decoding.
    """
    import torch

    q = delayed.shape[1]
    codes = torch.stack([delayed[:, k, start + k + 1 : end + k + 1] for k in range(q)], dim=1)
    return codes.masked_fill(codes >= 1024, 0)


def is_fatal_cuda_error(exc: BaseException) -> bool:
    """True for errors after which the CUDA context is unusable (not out-of-memory, which passes)."""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return False
    text = str(exc)
    return type(exc).__name__ == "AcceleratorError" or any(
        marker in text for marker in ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error", "NCCL error")
    )


@dataclass
class _Live:
    """One row of a running batch: its caller, token budget, stream schedule and end."""

    row: Row[ZonosRequest]
    budget: int
    window: StreamWindow
    end: int | None = None  # audio frames, once EOS was sampled
    eos_step: int = -1  # steps left before EOS is forced into the last codebook (upstream's counter)
    frames: int = 0


@dataclass
class GenerationConfig:
    """How the loop samples and streams (constructor arguments of the engine)."""

    cfg_scale: float = 2.0
    sampling_params: Mapping[str, Any] = field(default_factory=lambda: {"min_p": 0.1})
    stream_first_frames: int = 8
    stream_chunk_frames: int = 32
    stream_context_frames: int = 8
    stream_lookahead_frames: int = 4
    streaming: bool = True
    max_new_frames: int | None = None  # fixed budget for every row (benchmarks), else per text
    stop_at_eos: bool = True  # False: EOS is never sampled, rows run to their budget (benchmarks)
    cuda_graphs: bool = True  # upstream's CUDA graphs (mamba backbone); one graph per model, so one batch at a time

    def window(self) -> StreamWindow:
        first = self.stream_first_frames if self.streaming else 1 << 30  # one-shot: everything at the end
        return StreamWindow(first, self.stream_chunk_frames, self.stream_context_frames, self.stream_lookahead_frames)


def generate_batch(
    model: Any,
    cond_dicts: list[dict[str, Any]],
    rows: list[Row[ZonosRequest]],
    budgets: list[int],
    config: GenerationConfig,
    decode_step: Callable[..., Any] | None = None,
) -> None:
    """Speak `rows` (one cond dict and token budget each) with one batched generation; stream each row.

    Runs under `torch.inference_mode()` in the caller's thread; ends every row it is given (finish
    when its audio is out, or nothing if its caller left). `decode_step` replaces the model's
    `_decode_one_token` (a `torch.compile`d version of it).
    """
    import torch
    from zonos.codebook_pattern import apply_delay_pattern
    from zonos.sampling import sample_from_logits

    device = model.device
    eos, masked = int(model.eos_token_id), int(model.masked_token_id)
    n = len(rows)
    prefix = batch_conditioning(model, cond_dicts)
    longest = max(budgets)
    live = [_Live(row, budget, config.window()) for row, budget in zip(rows, budgets, strict=True)]
    with torch.device(device):
        codes = torch.full((n, 9, longest), UNKNOWN_TOKEN)
        params = model.setup_cache(batch_size=2 * n, max_seqlen=prefix.shape[1] + longest + 9 + 1)
    for i, budget in enumerate(budgets):
        codes[i, :, budget:] = masked  # past its budget a row has nothing to generate
    delayed = apply_delay_pattern(codes, masked)
    sampling = dict(config.sampling_params)
    cudagraphs = bool(model.can_use_cudagraphs()) and config.cuda_graphs
    step = decode_step or model._decode_one_token

    # Prefill: the prefix and the first (all-masked) frame for all 2n rows.
    first = delayed[..., :1]
    hidden = torch.cat([prefix, model.embed_codes(first.repeat(2, 1, 1))], dim=1)
    logits = model._compute_logits(hidden, params, config.cfg_scale)
    token = sample_from_logits(logits, **sampling)
    offset = 1
    delayed[..., 1:2] = torch.where(delayed[..., 1:2] == UNKNOWN_TOKEN, token, delayed[..., 1:2])
    params.seqlen_offset += prefix.shape[1] + 1
    params.lengths_per_sample[:] += prefix.shape[1] + 1
    bias = torch.zeros_like(logits)
    bias[:, 1:, eos] = -torch.inf  # only codebook 0 may end the utterance
    if not config.stop_at_eos:
        bias[:, 0, eos] = -torch.inf
    cfg = torch.tensor(config.cfg_scale)

    while live:
        # Rows whose caller left stop here, before another step is spent on them.
        keep = [i for i, r in enumerate(live) if not r.row.cancelled]
        if len(keep) < len(live):
            delayed, bias = _compact(model, params, keep, delayed, bias)
            live = [live[i] for i in keep]
            if not live:
                break
        offset += 1
        logits = step(delayed[..., offset - 1 : offset], params, cfg, allow_cudagraphs=cudagraphs)
        logits += bias
        token = sample_from_logits(logits, generated_tokens=delayed[..., :offset], **sampling)
        for i, (r, ended) in enumerate(zip(live, (token[:, 0, 0] == eos).tolist(), strict=True)):
            if ended and r.end is None and offset - 1 < r.budget:
                r.end, r.eos_step = offset - 1, 0  # frame offset-1 is the EOS frame: audio is 0..offset-2
            if r.end is not None:
                index = min(r.eos_step, 8)
                token[i, :index] = masked
                token[i, index] = eos
                r.eos_step += 1
        frame = delayed[..., offset : offset + 1]
        delayed[..., offset : offset + 1] = torch.where(frame == UNKNOWN_TOKEN, token, frame)
        params.seqlen_offset += 1
        params.lengths_per_sample[:] += 1

        done: list[int] = []
        due: list[tuple[int, Window]] = []
        for i, r in enumerate(live):
            end = r.end if r.end is not None else r.budget
            r.frames = r.row.frames = min(offset - 8, end)  # frames whose 9 codebooks are all known
            final = r.frames >= end
            window = r.window.due(r.frames, final=final)
            if window is not None:
                due.append((i, window))
            if final:
                done.append(i)
        _decode_and_emit(model, delayed, live, due)
        for i in done:
            live[i].row.finish()
        if done:
            keep = [i for i in range(len(live)) if i not in set(done)]
            if keep:
                delayed, bias = _compact(model, params, keep, delayed, bias)
            live = [live[i] for i in keep]
    model._cg_graph = None  # upstream resets its CUDA graph after each generation too


def _compact(model: Any, params: Any, keep: list[int], delayed: Any, bias: Any) -> tuple[Any, Any]:
    """Drop finished or cancelled rows from the batch: codes, logit bias and both CFG halves of the cache."""
    import torch

    n = delayed.shape[0]
    index = torch.tensor(keep, device=delayed.device)
    both = torch.cat([index, index + n])
    for layer, state in list(params.key_value_memory_dict.items()):
        params.key_value_memory_dict[layer] = tuple(
            t.index_select(0, both.to(t.device)) if isinstance(t, torch.Tensor) else t for t in state
        )
    params.lengths_per_sample = params.lengths_per_sample.index_select(0, both.to(params.lengths_per_sample.device))
    params.max_batch_size = 2 * len(keep)
    model._cg_graph = None  # a captured CUDA graph points at the old cache tensors
    return delayed.index_select(0, index), bias.index_select(0, index)


def _decode_and_emit(model: Any, delayed: Any, live: list[_Live], due: list[tuple[int, Window]]) -> None:
    """Decode every due window (windows of equal length together) and emit each row's new audio."""
    import torch

    by_length: dict[int, list[tuple[int, Window]]] = {}
    for item in due:
        by_length.setdefault(item[1].frames, []).append(item)
    for group in by_length.values():
        codes = torch.cat([undelay(delayed[i : i + 1], w.start, w.end) for i, w in group])
        wavs = model.autoencoder.decode(codes)
        hop = wavs.shape[-1] // group[0][1].frames
        for (i, window), wav in zip(group, wavs, strict=True):
            live[i].row.emit(to_pcm(wav[0, window.keep(hop)].float().cpu().numpy()))
            live[i].window.mark(window)


class ZonosEngine(Engine):
    """Zonos as an `Engine`; `load()` once per replica, then `synthesize` (batched by `self.batcher`)."""

    name = "zonos"
    sample_rate = SAMPLE_RATE
    queues_work = True  # the batcher yields `b""` when a request joins a batch
    accepts_priority = True

    def __init__(
        self,
        *,
        model_name: str = "Zyphra/Zonos-v0.1-hybrid",
        device: str = "cuda",
        language: str = "en-us",
        speaker_audio: str | None = None,
        voice_store: VoiceStore | None = None,
        embedding_key: str | None = None,
        seed: int | None = None,
        voice_cache_size: int = 64,
        catalogue: Catalogue | None = None,
        model: Any = None,
        model_factory: Callable[[], Any] | None = None,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.02,
        max_queued: int = 32,
        max_concurrent_batches: int = 1,
        stream_first_frames: int = 8,
        stream_chunk_frames: int = 32,
        stream_context_frames: int = 8,
        stream_lookahead_frames: int = 4,
        streaming: bool = True,
        cfg_scale: float = 2.0,
        sampling_params: Mapping[str, Any] | None = None,
        max_new_frames: int | None = None,
        stop_at_eos: bool = True,
        warmup_on_start: bool = True,
        compile_decoder: bool = False,
        hang_timeout_s: float = 60.0,
    ) -> None:
        """`model` (built) or `model_factory` (called by `load()`) replace `Zonos.from_pretrained`
        (tests, benchmarks with random weights); the `stream_*` arguments set the chunk schedule
        (`serve_app.stream_decode`); `max_new_frames`/`stop_at_eos=False` fix every row's length;
        `compile_decoder` runs the decoding step through `torch.compile` as upstream `generate` does
        (worth it on a GPU with the transformer backbone; the first batches of each size compile);
        `hang_timeout_s` is how long running requests may go without audio before the health check
        calls the replica hung; `voice_store` holds the registered clones (None: clones are refused),
        `embedding_key` names this model's embeddings in it (default `zonos:<model_name>`)."""
        self.catalogue = catalogue or Catalogue({self.name: VOICES})
        self.model_name = model_name
        self.device = device
        self.language = language
        self.speaker_audio = speaker_audio
        self.seed = seed
        self.voice_store = voice_store
        self.embedding_key = embedding_key or f"zonos:{model_name}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saving: set[asyncio.Future[None]] = set()
        self.voice_cache_size = voice_cache_size
        self.warmup_on_start = warmup_on_start
        self.compile_decoder = compile_decoder
        self.hang_timeout_s = hang_timeout_s
        self._cuda_probe: asyncio.Future[None] | None = None
        self._cuda_probe_started = 0.0
        self._decode_step: Callable[..., Any] | None = None
        self.generation = GenerationConfig(
            cfg_scale=cfg_scale,
            sampling_params=dict(sampling_params) if sampling_params is not None else {"min_p": 0.1},
            stream_first_frames=stream_first_frames,
            stream_chunk_frames=stream_chunk_frames,
            stream_context_frames=stream_context_frames,
            stream_lookahead_frames=stream_lookahead_frames,
            streaming=streaming,
            max_new_frames=max_new_frames,
            stop_at_eos=stop_at_eos,
            cuda_graphs=max_concurrent_batches == 1,
        )
        self.generation.window()  # validates the chunk schedule now, not at the first request
        self.batcher: Batcher[ZonosRequest] = Batcher(
            self,
            name=self.name,
            max_batch_size=max_batch_size,
            wait_s=batch_wait_s,
            max_queued=max_queued,
            max_concurrent_batches=max_concurrent_batches,
        )
        self._model: Any = model
        self._model_factory = model_factory
        self._injected = model is not None or model_factory is not None
        self._languages: list[str] = []
        self._problem: str | None = None
        self._fatal: str | None = None
        self._default_speaker: Any = None
        self._speakers: OrderedDict[str, Any] = OrderedDict()
        self._speaker_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._ready = False

    # --- dependencies and loading -------------------------------------------------------------

    def dependency_problem(self) -> str | None:
        """Why Zonos cannot run in this process, or None. Cheap; imports nothing heavy twice."""
        if importlib.util.find_spec("torch") is None:
            return f"torch is not installed; {INSTALL_HINT}"
        if importlib.util.find_spec("zonos") is None:
            return f"package 'zonos' is not installed; {INSTALL_HINT}"
        try:
            importlib.import_module("zonos.model")
            importlib.import_module("zonos.conditioning")
        except Exception as exc:  # PyPI's placeholder has no zonos.model; a broken install fails here too
            return (
                f"package 'zonos' is not the Zyphra model (PyPI's 'zonos' is an empty placeholder): "
                f"{type(exc).__name__}: {str(exc)[:160]}; {INSTALL_HINT}"
            )
        if self.device.startswith("cuda") and not self._injected:
            import torch

            if not torch.cuda.is_available():
                return "CUDA is not available (ZONOS_DEVICE=cuda): no GPU visible to this process"
        return None

    @property
    def loaded(self) -> bool:
        return self._ready

    def load(self) -> None:
        """Load the model and the default speaker (blocking, idempotent); failures become `check()`'s reason."""
        with self._load_lock:
            if self._ready or self._problem is not None:
                return
            problem = self.dependency_problem()
            if problem is not None:
                self._problem = problem
                logger.warning("zonos unavailable: %s", problem)
                return
            from zonos.conditioning import supported_language_codes

            try:
                if self._model is None and self._model_factory is not None:
                    self._model = self._model_factory()
                if self._model is None:
                    from zonos.model import Zonos

                    self._model = Zonos.from_pretrained(self.model_name, device=self.device)
                self._model.requires_grad_(False).eval()
                if self.compile_decoder and not self._model.can_use_cudagraphs():  # mamba: CUDA graphs instead
                    import torch

                    self._decode_step = torch.compile(self._model._decode_one_token, dynamic=True)
                self._languages = list(supported_language_codes)
                if match_language(self.language, self._languages) is None:
                    raise ValueError(f"ZONOS_LANGUAGE={self.language} is not a language Zonos speaks")
                if self.speaker_audio:
                    self._default_speaker = self._embed(*decode_audio(Path(self.speaker_audio).read_bytes()))
            except Exception as exc:
                self._model = None
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                self._problem = f"loading {self.model_name} on {self.device} failed: {reason}"
                logger.error("zonos unavailable: %s", self._problem)
                return
            self._ready = True
            logger.info("zonos loaded model=%s device=%s", self.model_name, self.device)

    def warmup(self) -> None:
        """One sentence at replica start (allocations, kernels, caches), so no user pays for it."""
        if not self._ready or not self.warmup_on_start:
            return
        result = self.batcher.run_now([ZonosRequest(WARMUP_TEXT, self._language(None), DEFAULT_SPEAKER)])[0]
        if isinstance(result, BaseException):
            logger.warning("zonos warm-up failed: %s", result)
        else:
            logger.info("zonos warm-up done (%.2f s of audio)", len(result) / (SAMPLE_WIDTH * SAMPLE_RATE))

    # --- speakers ---------------------------------------------------------------------------

    def _embed(self, rate: int, samples: np.ndarray) -> Any:
        import torch

        wav = samples.astype(np.float32) / 32768.0
        if wav.size == 0 or float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < SILENT_CLIP_RMS:
            raise InvalidInput("the reference clip is silent: there is no voice in it to clone", param="voice")
        return self._model.make_speaker_embedding(torch.from_numpy(wav).unsqueeze(0), rate)  # [channels=1, samples]

    def _speaker(self, request: ZonosRequest) -> Any:
        """The embedding for a row (in the batch thread): the default speaker, this replica's cached
        one, one another replica stored, or one computed now from the clip (and stored for the others)."""
        if request.speaker == DEFAULT_SPEAKER:
            return self._default_speaker
        source = request.source
        if source is None:
            raise InvalidInput(f"voice '{request.speaker}' is not registered", param="voice")
        if source.embedding is not None:
            return source.embedding
        if source.stored is not None:
            import torch

            embedding = torch.load(io.BytesIO(source.stored), map_location=self._model.device, weights_only=True)
        elif source.clip is not None:
            embedding = self._embed(*source.clip)
            self._share(request.speaker, embedding)
        else:
            raise InvalidInput(f"voice '{request.speaker}' is not registered", param="voice")
        self._remember(request.speaker, embedding)
        return embedding

    def _remember(self, voice_id: str, embedding: Any) -> None:
        with self._speaker_lock:
            self._speakers[voice_id] = embedding
            self._speakers.move_to_end(voice_id)
            while len(self._speakers) > self.voice_cache_size:
                self._speakers.popitem(last=False)

    def _forget(self, voice_id: str) -> None:
        with self._speaker_lock:
            self._speakers.pop(voice_id, None)

    def _cached(self, voice_id: str) -> Any:
        with self._speaker_lock:
            if voice_id in self._speakers:
                self._speakers.move_to_end(voice_id)
                return self._speakers[voice_id]
        return None

    def _share(self, voice_id: str, embedding: Any) -> None:
        """Hand a computed embedding to the event loop, which stores it for the other replicas."""
        import torch

        if self.voice_store is None or self._loop is None or self._loop.is_closed():
            return
        buffer = io.BytesIO()
        torch.save(embedding.detach().cpu(), buffer)
        self._loop.call_soon_threadsafe(self._spawn_save, voice_id, buffer.getvalue())

    def _spawn_save(self, voice_id: str, data: bytes) -> None:
        if self.voice_store is None:
            return
        task = asyncio.ensure_future(self.voice_store.save_embedding(voice_id, self.embedding_key, data))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def _speaker_source(self, voice_id: str) -> SpeakerSource:
        """Check a clone still exists and fetch what the batch thread needs (on the event loop)."""
        if self.voice_store is None:
            raise InvalidInput(f"voice '{voice_id}' is not registered (no voice store)", param="voice")
        try:
            if not await self.voice_store.exists(voice_id):
                self._forget(voice_id)
                raise InvalidInput(f"voice '{voice_id}' is not registered", param="voice")
            cached = self._cached(voice_id)
            if cached is not None:
                return SpeakerSource(embedding=cached)
            stored = await self.voice_store.embedding(voice_id, self.embedding_key)
            if stored is not None:
                return SpeakerSource(stored=stored)
            clip = await self.voice_store.load(voice_id)
        except ServiceUnavailable as exc:  # database or object store down: this engine cannot clone now
            raise EngineUnavailable(f"voice store unavailable: {str(exc)[:160]}") from None
        if clip is None:
            self._forget(voice_id)
            raise InvalidInput(f"voice '{voice_id}' is not registered", param="voice")
        return SpeakerSource(clip=clip)

    # --- the batch runner (called by self.batcher in a worker thread) -------------------------

    def run_batch(self, rows: list[Row[ZonosRequest]]) -> None:
        """Speak a batch: per-row preparation (a bad row fails alone), then one generation."""
        import torch

        if self._model is None:
            for row in rows:
                row.fail(EngineUnavailable(self._problem or "zonos is not loaded"))
            return
        if self._fatal:
            for row in rows:
                row.fail(EngineUnavailable(self._fatal))
            return
        try:
            with torch.inference_mode():
                ready, cond_dicts, budgets = self._prepare_rows(rows)
                if not ready:
                    return
                if self.seed is not None:
                    torch.manual_seed(self.seed)
                generate_batch(self._model, cond_dicts, ready, budgets, self.generation, self._decode_step)
        except Exception as exc:
            error = self._as_engine_error(exc)
            for row in rows:
                row.fail(error)
            return
        logger.debug("zonos batch size=%d done", len(rows))

    def _prepare_rows(
        self, rows: list[Row[ZonosRequest]]
    ) -> tuple[list[Row[ZonosRequest]], list[dict[str, Any]], list[int]]:
        """Rows that can be spoken, with their cond dicts and budgets; the others fail alone."""
        from zonos.conditioning import make_cond_dict, phonemize

        ready: list[Row[ZonosRequest]] = []
        cond_dicts: list[dict[str, Any]] = []
        budgets: list[int] = []
        for row in rows:
            if row.cancelled:
                continue
            request = row.request
            try:
                phonemes = phonemize([request.text], [request.language])[0]
                if not any(ch.isalpha() for ch in phonemes):
                    raise InvalidInput("the text has nothing speakable in it", param="input")
                cond = make_cond_dict(
                    text=request.text,
                    language=request.language,
                    speaker=self._speaker(request),
                    speaking_rate=speaking_rate(request.speed),
                    device=self._model.device,
                )
            except Exception as exc:
                row.fail(self._row_error(exc))
                continue
            ready.append(row)
            cond_dicts.append(cond)
            budgets.append(self.generation.max_new_frames or token_budget(request))
        return ready, cond_dicts, budgets

    def _row_error(self, exc: BaseException) -> Exception:
        """A problem with one request (eSpeak cannot read the text in that language, a bad clip)."""
        if isinstance(exc, InvalidInput | EngineUnavailable):
            return exc
        if isinstance(exc, RuntimeError | ValueError | AssertionError) and not is_fatal_cuda_error(exc):
            return InvalidInput(f"zonos cannot speak this request: {type(exc).__name__}: {str(exc)[:80]}")
        return self._as_engine_error(exc)

    def _as_engine_error(self, exc: BaseException) -> Exception:
        if isinstance(exc, InvalidInput | EngineUnavailable):
            return exc
        if is_fatal_cuda_error(exc):
            self._fatal = f"CUDA error: {str(exc)[:200]}"
            logger.error("zonos replica unhealthy: %s", self._fatal)
        elif type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            self._empty_cache()
        return EngineUnavailable(f"zonos failed: {type(exc).__name__}: {str(exc)[:200]}")

    def _empty_cache(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- Engine contract ----------------------------------------------------------------------

    def voices(self) -> list[Voice]:
        return self.catalogue.voices_for(self.name) or list(VOICES.voices)

    def _language(self, requested: str | None) -> str:
        if not self._languages:
            return self.language
        code = match_language(requested or self.language, self._languages)
        if code is None:
            raise InvalidInput(f"Zonos does not speak language '{(requested or '')[:16]}'", param="language")
        return code

    async def _speaker_of(self, voice: str | None) -> tuple[str, SpeakerSource | None]:
        if voice and is_clone_id(voice):
            return voice, await self._speaker_source(voice)
        self.resolve_voice(voice)  # OpenAI names and other engines' voices map to the default speaker
        return DEFAULT_SPEAKER, None

    async def prepare(self, text: str, voice: str | None, language: str | None, speed: float) -> ZonosRequest:
        """Check a request and load the model; every error here is raised before the request queues."""
        if self._fatal:
            raise EngineUnavailable(self._fatal)
        if not text.strip():
            raise InvalidInput("text is empty", param="input")
        if not any(ch.isalnum() for ch in text):
            raise InvalidInput("the text has nothing speakable in it", param="input")
        self.check_speed(speed, SPEED_RANGE)
        if not self._ready:
            await asyncio.to_thread(self.load)
        if not self._ready:
            raise EngineUnavailable(self._problem or "zonos is not loaded")
        self._loop = asyncio.get_running_loop()
        code = self._language(language)
        speaker, source = await self._speaker_of(voice)
        request = ZonosRequest(text, code, speaker, speed, source)
        # Lengths only: per-sentence excerpts would add up to the whole user text in a DEBUG log.
        logger.debug("zonos synthesize speaker=%s lang=%s chars=%d", request.speaker, request.language, len(text))
        return request

    async def synthesize(
        self,
        text: str,
        voice: str | None = None,
        *,
        language: str | None = None,
        speed: float = 1.0,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes]:
        """`b""` when the request joins a batch (the router's first-byte timer starts there), then PCM
        chunks. Waiting requests join batches by `priority` (`serve_app.core.gate`)."""
        request = await self.prepare(text, voice, language, speed)
        async for chunk in self.batcher.stream(request, priority):
            yield chunk

    async def check(self) -> EngineCheck:
        details: dict[str, Any] = {
            "model": self.model_name,
            "device": self.device,
            "loaded": self.loaded,
            "speakers_cached": len(self._speakers),
            "voice_store": self.voice_store.backend_name if self.voice_store is not None else None,
            "batching": {
                **self.batcher.stats.to_dict(),
                "queued": self.batcher.queued,
                "running": self.batcher.running,
                "max_batch_size": self.batcher.max_batch_size,
            },
            "streaming": {
                "enabled": self.generation.streaming,
                "first_frames": self.generation.stream_first_frames,
                "chunk_frames": self.generation.stream_chunk_frames,
            },
        }
        if self._fatal:
            return EngineCheck(self.name, False, self._fatal, details)
        problem = self._problem or (None if self._ready else self.dependency_problem())
        return EngineCheck(self.name, problem is None, problem, details)

    async def health(self) -> str | None:
        """Serve's health probe: a CUDA error seen, a batch that stopped making progress, or a CUDA
        context that no longer answers. Serve replaces a replica whose probe fails, which is the only
        cure for a hung kernel; a replica that is merely busy keeps delivering chunks and passes."""
        if self._fatal:
            return self._fatal
        stalled = self.batcher.stalled_for()
        if stalled > self.hang_timeout_s:
            return f"no audio from {self.batcher.running} running request(s) for {stalled:.0f}s (hung)"
        if self._model is None or not self.device.startswith("cuda"):
            return None
        return await self._cuda_answers()

    async def _cuda_answers(self) -> str | None:
        """At most one CUDA probe thread at a time: a probe still running from an earlier check is
        waited on again rather than joined by another (a hung device would otherwise leak a thread
        per check), and one outstanding for longer than the hang timeout fails the check."""
        if self._cuda_probe is None or self._cuda_probe.done():
            self._cuda_probe = asyncio.ensure_future(asyncio.to_thread(self._touch_cuda))
            self._cuda_probe_started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self._cuda_probe), timeout=CUDA_PROBE_WAIT_S)
        except TimeoutError:
            waited = time.monotonic() - self._cuda_probe_started
            if waited > self.hang_timeout_s:
                return f"CUDA did not answer a one-element probe for {waited:.0f}s (hung)"
            return None  # a long kernel of a busy batch; the next check looks again
        except Exception as exc:
            if is_fatal_cuda_error(exc):
                self._fatal = f"CUDA error: {str(exc)[:200]}"
                return self._fatal
        return None

    def _touch_cuda(self) -> None:
        import torch

        probe = torch.ones(1, device=self.device)
        torch.cuda.synchronize(probe.device)
        float(probe.sum().item())


class ZonosSettings(EngineSettings):
    """`ZONOS_*`: model, device, speaker, batching and streaming (ZONOS_NUM_GPUS: GPUs per replica)."""

    model_config = settings_config(env_prefix="ZONOS_")

    num_gpus: float | None = Field(1.0, ge=0)
    model: str = "Zyphra/Zonos-v0.1-hybrid"
    # "package.module:callable", called as callable(device=ZONOS_DEVICE) in the replica to build the
    # model instead of Zonos.from_pretrained(ZONOS_MODEL): weights kept elsewhere than the hub, or the
    # small random-weight model that tests a cluster's plumbing without weights (bench.zonos_random).
    model_factory: str | None = None
    device: str = "cuda"
    language: str = "en-us"
    speaker_audio: str | None = None
    max_batch_size: int = Field(8, ge=1, le=64)
    batch_wait_timeout_s: float = Field(0.02, ge=0)
    max_queued: int = Field(32, ge=0)
    stream_first_frames: int = Field(8, ge=1, le=512)
    stream_chunk_frames: int = Field(32, ge=1, le=1024)
    seed: int | None = None
    warmup: bool = True
    compile_decoder: bool = False
    voice_cache_size: int = Field(64, ge=1, le=4096)
    # Running requests without audio for this long make the health check fail (Serve replaces the replica).
    hang_timeout_s: float = Field(60.0, gt=0)

    @field_validator("model_factory")
    @classmethod
    def _factory_is_an_import_path(cls, value: str | None) -> str | None:
        if value is not None and not is_import_path(value):
            raise ValueError("must be of the form package.module:callable")
        return value


def model_factory(path: str, device: str) -> Callable[[], Any]:
    """ZONOS_MODEL_FACTORY as the engine's `model_factory`: imported when the replica loads, not when
    the app is built, so the module need only exist where Zonos runs; failing to import or build it
    makes the engine unavailable with the reason (like a failed `from_pretrained`)."""

    def build() -> Any:
        return import_object(path)(device=device)

    return build


def _build(settings: ZonosSettings, context: EngineContext) -> ZonosEngine:
    return ZonosEngine(
        model_name=settings.model,
        model_factory=model_factory(settings.model_factory, settings.device) if settings.model_factory else None,
        device=settings.device,
        language=settings.language,
        speaker_audio=settings.speaker_audio,
        voice_store=build_voice_store(context.settings),
        seed=settings.seed,
        voice_cache_size=settings.voice_cache_size,
        max_batch_size=settings.max_batch_size,
        batch_wait_s=settings.batch_wait_timeout_s,
        max_queued=settings.max_queued,
        stream_first_frames=settings.stream_first_frames,
        stream_chunk_frames=settings.stream_chunk_frames,
        warmup_on_start=settings.warmup,
        compile_decoder=settings.compile_decoder,
        hang_timeout_s=settings.hang_timeout_s,
        catalogue=context.catalogue,
    )


ENGINE = EngineSpec(
    name="zonos",
    title="Zyphra Zonos on GPU: batched, streaming, voice cloning (the primary engine)",
    model_id="zonos-v0.1",
    settings=ZonosSettings,
    build=_build,
    voices=VOICES,
    speed_range=SPEED_RANGE,
    word_timing="estimated",
    # max_ongoing_requests covers a full batch plus the engine's own queue (ZONOS_MAX_QUEUED).
    deployment=DeploymentDefaults(num_cpus=1.0, num_gpus=1.0, max_ongoing_requests=48, max_queued_requests=16),
    honours={"speed": "speaking rate", "language": "eSpeak language", "voice": "registered clones"},
)
