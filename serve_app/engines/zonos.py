"""Zyphra Zonos: the primary engine, on GPU, with batching and voice cloning.

The real Zonos code path, as Zyphra's `sample.py` uses it:
`Zonos.from_pretrained(ZONOS_MODEL, device=ZONOS_DEVICE)` once per replica, a speaker embedding
(`make_speaker_embedding`) from ZONOS_SPEAKER_AUDIO or a registered clip, `make_cond_dict` per
request, `prepare_conditioning`, `generate`, `autoencoder.decode`, 44.1 kHz output.

- torch and zonos are imported lazily, inside these paths only: the service (and this module)
  runs without them, and `check()` says why Zonos cannot serve (PyPI's `zonos` is an empty
  placeholder; the real package installs from https://github.com/Zyphra/Zonos; or no CUDA).
- Batching: `render_batch` speaks several requests with one `generate` call. Requests are turned
  into cond dicts one by one (`make_cond_dict` only takes one speaker) and merged along the batch
  dimension (`espeak` lists concatenated, tensors stacked), which is the shape the prefix
  conditioner takes; `generate(batch_size=n)` then runs them as one forward pass per step. Rows
  that finished early come back zero-filled after their end and are trimmed.
  `serve_app.engines.zonos_deployment` feeds it from `@serve.batch`; used directly, each request
  is its own batch.
- Streaming: Zonos produces a whole utterance per call (`generate` returns all codes, its
  callback only sees codes); the router speaks sentence by sentence, so we yield each sentence's
  PCM in short chunks as soon as it is decoded.
- Faults: GPU work runs in one worker thread at a time (the event loop stays free for health
  checks and streaming). A CUDA error other than out-of-memory leaves the context unusable, so it
  is remembered and `health()` fails, and Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from config.settings import Settings
from serve_app.audio import SAMPLE_WIDTH, decode_audio, iter_chunks
from serve_app.engines.base import Engine, EngineCheck, EngineUnavailable, InvalidInput, Voice
from serve_app.voice_store import VoiceStore
from serve_app.voices import is_clone_id, voices_for

logger = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
CHUNK_BYTES = int(SAMPLE_RATE * 0.2) * SAMPLE_WIDTH  # 200 ms of PCM per yielded chunk
SPEED_RANGE = (0.25, 4.0)
DEFAULT_SPEAKING_RATE = 15.0  # Zonos's default, "phonemes per minute" on its 0..40 scale
SPEAKING_RATE_RANGE = (5.0, 30.0)
FRAME_RATE = 86  # codes per second of audio (44.1 kHz, 512-sample hop)
MAX_SECONDS = 30.0  # Zonos's own default cap (86 * 30 tokens)
CHARS_PER_SECOND = 10.0  # a slow reading pace, so the token budget rarely cuts speech
DEFAULT_SPEAKER = "default"
WARMUP_TEXT = "Warming up the voice."
INSTALL_HINT = "install Zonos from source on GPU nodes: pip install '.[gpu]' 'zonos @ git+https://github.com/Zyphra/Zonos'"
BatchResult = bytes | Exception


@dataclass(frozen=True)
class ZonosRequest:
    """One sentence to speak; `speaker` is DEFAULT_SPEAKER or a registered clone id."""

    text: str
    language: str
    speaker: str
    speed: float = 1.0


@dataclass
class BatchStats:
    """How batching is going on this replica (reported by `check()`)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=32))

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.recent.append(size)

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "largest": self.largest, "recent": list(self.recent)}


def speaking_rate(speed: float) -> float:
    """OpenAI's `speed` on Zonos's speaking-rate scale, kept in the range where it still sounds like speech."""
    return min(max(DEFAULT_SPEAKING_RATE * speed, SPEAKING_RATE_RANGE[0]), SPEAKING_RATE_RANGE[1])


def token_budget(requests: list[ZonosRequest]) -> int:
    """`max_new_tokens` for a batch: enough for the longest text at a slow pace, at most 30 s."""
    seconds = max(2.0 + len(r.text) / (CHARS_PER_SECOND * min(r.speed, 1.0)) for r in requests)
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


def merge_cond_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """One batched cond dict from per-request ones: `espeak` lists joined, tensors stacked on dim 0."""
    import torch

    merged: dict[str, Any] = {}
    for key in dicts[0]:
        values = [d[key] for d in dicts]
        if key == "espeak":
            merged[key] = ([t for v in values for t in v[0]], [lang for v in values for lang in v[1]])
        elif all(v is None for v in values):
            merged[key] = None
        elif all(isinstance(v, torch.Tensor) for v in values):
            merged[key] = torch.cat(values, dim=0)
        else:
            raise ValueError(f"cannot batch conditioning key {key!r} mixing tensors and None")
    return merged


def trim_rows(codes: Any, wavs: Any) -> list[np.ndarray]:
    """Each row's float waveform cut at its own end: the last frame with any non-zero code."""
    frames = int(codes.shape[-1])
    hop = int(wavs.shape[-1]) // max(frames, 1)
    voiced = (codes != 0).any(dim=1).cpu().numpy()  # [batch, frames]
    out: list[np.ndarray] = []
    for row in range(int(codes.shape[0])):
        live = np.flatnonzero(voiced[row])
        length = (int(live[-1]) + 1) * hop if live.size else 0
        out.append(wavs[row, 0, :length].float().cpu().numpy())
    return out


def to_pcm(wav: np.ndarray) -> bytes:
    return (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def is_fatal_cuda_error(exc: BaseException) -> bool:
    """True for errors after which the CUDA context is unusable (not out-of-memory, which passes)."""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return False
    text = str(exc)
    return type(exc).__name__ == "AcceleratorError" or any(
        marker in text for marker in ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error", "NCCL error")
    )


class ZonosEngine(Engine):
    """Zonos as an `Engine`; `load()` once per replica, then `synthesize` or `render_batch`."""

    name = "zonos"
    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        *,
        model_name: str = "Zyphra/Zonos-v0.1-hybrid",
        device: str = "cuda",
        language: str = "en-us",
        speaker_audio: str | None = None,
        voices_dir: str = "./data/voices",
        seed: int | None = None,
        voice_cache_size: int = 64,
    ) -> None:
        self.model_name = model_name
        self.device = device
        self.language = language
        self.speaker_audio = speaker_audio
        self.seed = seed
        self.voice_store = VoiceStore(voices_dir)
        self.voice_cache_size = voice_cache_size
        self.stats = BatchStats()
        self._model: Any = None
        self._languages: list[str] = []
        self._problem: str | None = None
        self._fatal: str | None = None
        self._default_speaker: Any = None
        self._speakers: OrderedDict[str, Any] = OrderedDict()
        self._load_lock = threading.Lock()
        self._gpu_lock = threading.Lock()
        self._renderer: Callable[[ZonosRequest], Awaitable[BatchResult]] = self._render_alone

    @classmethod
    def from_settings(cls, settings: Settings) -> ZonosEngine:
        return cls(
            model_name=settings.zonos_model,
            device=settings.zonos_device,
            language=settings.zonos_language,
            speaker_audio=settings.zonos_speaker_audio,
            voices_dir=settings.zonos_voices_dir,
            seed=settings.zonos_seed,
            voice_cache_size=settings.zonos_voice_cache_size,
        )

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
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return "CUDA is not available (ZONOS_DEVICE=cuda): no GPU visible to this process"
        return None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model and the default speaker (blocking, idempotent); failures become `check()`'s reason."""
        with self._load_lock:
            if self._model is not None or self._problem is not None:
                return
            problem = self.dependency_problem()
            if problem is not None:
                self._problem = problem
                logger.warning("zonos unavailable: %s", problem)
                return
            from zonos.conditioning import supported_language_codes
            from zonos.model import Zonos

            try:
                model = Zonos.from_pretrained(self.model_name, device=self.device)
                model.requires_grad_(False).eval()
                self._model = model
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
            logger.info("zonos loaded model=%s device=%s", self.model_name, self.device)

    def warmup(self) -> None:
        """One synthesis at replica start (compiles kernels, fills caches), so no user pays for it."""
        if self._model is None:
            return
        result = self.render_batch_blocking([ZonosRequest(WARMUP_TEXT, self._language(None), DEFAULT_SPEAKER)])[0]
        if isinstance(result, Exception):
            logger.warning("zonos warm-up failed: %s", result)
        else:
            logger.info("zonos warm-up done (%.2f s of audio)", len(result) / (SAMPLE_WIDTH * SAMPLE_RATE))

    # --- speakers ---------------------------------------------------------------------------

    def _embed(self, rate: int, samples: np.ndarray) -> Any:
        import torch

        wav = torch.from_numpy(samples.astype(np.float32) / 32768.0).unsqueeze(0)  # [channels=1, samples]
        return self._model.make_speaker_embedding(wav, rate)

    def _speaker(self, key: str) -> Any:
        """Embedding for DEFAULT_SPEAKER or a clone id; clones are cached (LRU) per replica."""
        if key == DEFAULT_SPEAKER:
            return self._default_speaker
        if key in self._speakers:
            self._speakers.move_to_end(key)
            return self._speakers[key]
        try:
            rate, samples = self.voice_store.load(key)
        except KeyError:
            raise InvalidInput(f"voice '{key}' is not registered") from None
        embedding = self._embed(rate, samples)
        self._speakers[key] = embedding
        while len(self._speakers) > self.voice_cache_size:
            self._speakers.popitem(last=False)
        return embedding

    # --- batched rendering --------------------------------------------------------------------

    def render_batch_blocking(self, requests: list[ZonosRequest]) -> list[BatchResult]:
        """PCM (or the error) for each request, with as few `generate` calls as possible. GPU-serialised."""
        with self._gpu_lock:
            results: list[BatchResult | None] = [None] * len(requests)
            speakers: dict[int, Any] = {}
            for index, request in enumerate(requests):
                try:
                    speakers[index] = self._speaker(request.speaker)
                except Exception as exc:
                    results[index] = self._as_engine_error(exc)
            # The prefix conditioner stacks speakers, so "no speaker" and "a speaker" cannot share a batch.
            groups: dict[bool, list[int]] = {}
            for index, speaker in speakers.items():
                groups.setdefault(speaker is None, []).append(index)
            for indices in groups.values():
                try:
                    pcms = self._generate([requests[i] for i in indices], [speakers[i] for i in indices])
                except Exception as exc:
                    error = self._as_engine_error(exc)
                    for i in indices:
                        results[i] = error
                    continue
                for i, pcm in zip(indices, pcms, strict=True):
                    results[i] = pcm
            return [r if r is not None else EngineUnavailable("no result") for r in results]

    def _generate(self, requests: list[ZonosRequest], speakers: list[Any]) -> list[bytes]:
        import torch
        from zonos.conditioning import make_cond_dict

        cond_dicts = [
            make_cond_dict(
                text=r.text, language=r.language, speaker=s, speaking_rate=speaking_rate(r.speed), device=self.device
            )
            for r, s in zip(requests, speakers, strict=True)
        ]
        conditioning = self._model.prepare_conditioning(merge_cond_dicts(cond_dicts))
        if self.seed is not None:
            torch.manual_seed(self.seed)
        codes = self._model.generate(
            conditioning, max_new_tokens=token_budget(requests), batch_size=len(requests), progress_bar=False
        )
        wavs = self._model.autoencoder.decode(codes)
        self.stats.record(len(requests))
        logger.debug("zonos batch size=%d frames=%d", len(requests), int(codes.shape[-1]))
        return [to_pcm(wav) for wav in trim_rows(codes, wavs)]

    def _as_engine_error(self, exc: BaseException) -> Exception:
        if isinstance(exc, InvalidInput | EngineUnavailable):
            return exc
        if is_fatal_cuda_error(exc):
            self._fatal = f"CUDA error: {str(exc)[:200]}"
            logger.error("zonos replica unhealthy: %s", self._fatal)
        elif type(exc).__name__ == "OutOfMemoryError":
            self._empty_cache()
        return EngineUnavailable(f"zonos failed: {type(exc).__name__}: {str(exc)[:200]}")

    def _empty_cache(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    async def render_batch(self, requests: list[ZonosRequest]) -> list[BatchResult]:
        """`render_batch_blocking` in a worker thread; the Serve deployment's `@serve.batch` calls this."""
        if self._model is None:
            await asyncio.to_thread(self.load)
        if self._model is None:
            error = EngineUnavailable(self._problem or "zonos is not loaded")
            return [error for _ in requests]
        return await asyncio.to_thread(self.render_batch_blocking, requests)

    async def _render_alone(self, request: ZonosRequest) -> BatchResult:
        return (await self.render_batch([request]))[0]

    def use_renderer(self, renderer: Callable[[ZonosRequest], Awaitable[BatchResult]]) -> None:
        """Route `synthesize` through `renderer` (the deployment's batching queue) instead of alone."""
        self._renderer = renderer

    # --- Engine contract ----------------------------------------------------------------------

    def voices(self) -> list[Voice]:
        return voices_for(self.name)

    def _language(self, requested: str | None) -> str:
        if not self._languages:
            return self.language
        code = match_language(requested or self.language, self._languages)
        if code is None:
            raise InvalidInput(f"Zonos does not speak language '{(requested or '')[:16]}'")
        return code

    def _speaker_key(self, voice: str | None) -> str:
        if voice and is_clone_id(voice):
            if not self.voice_store.exists(voice):
                raise InvalidInput(f"voice '{voice}' is not registered")
            return voice
        self.resolve_voice(voice)  # OpenAI names and other engines' voices map to the default speaker
        return DEFAULT_SPEAKER

    async def synthesize(
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0
    ) -> AsyncIterator[bytes]:
        if self._fatal:
            raise EngineUnavailable(self._fatal)
        if not text.strip():
            raise InvalidInput("text is empty")
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise InvalidInput(f"speed must be between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}")
        if self._model is None:
            await asyncio.to_thread(self.load)
        if self._model is None:
            raise EngineUnavailable(self._problem or "zonos is not loaded")
        request = ZonosRequest(text, self._language(language), self._speaker_key(voice), speed)
        # Lengths only: per-sentence excerpts would add up to the whole user text in a DEBUG log.
        logger.debug("zonos synthesize speaker=%s lang=%s chars=%d", request.speaker, request.language, len(text))
        result = await self._renderer(request)
        if isinstance(result, Exception):
            raise result
        for chunk in iter_chunks(result, CHUNK_BYTES):
            yield chunk

    async def check(self) -> EngineCheck:
        details: dict[str, Any] = {
            "model": self.model_name,
            "device": self.device,
            "loaded": self.loaded,
            "speakers_cached": len(self._speakers),
            "batching": self.stats.to_dict(),
        }
        if self._fatal:
            return EngineCheck(self.name, False, self._fatal, details)
        problem = self._problem or (None if self.loaded else self.dependency_problem())
        return EngineCheck(self.name, problem is None, problem, details)

    async def health(self) -> str | None:
        """Serve's health probe: a CUDA error seen, or a CUDA context that no longer answers."""
        if self._fatal:
            return self._fatal
        if self._model is None or not self.device.startswith("cuda"):
            return None
        try:
            await asyncio.wait_for(asyncio.to_thread(self._touch_cuda), timeout=10.0)
        except TimeoutError:
            return None  # busy with a long batch; not a fault
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
