"""The router's vocabulary: its configuration, a speech request, a chunk of audio."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from serve_app.core.timing import WordMark


@dataclass(frozen=True)
class EngineLimits:
    """Per-engine budgets; a GPU model and a local binary rarely deserve the same timeouts."""

    ttfb_timeout_s: float
    stall_timeout_s: float
    concurrency: int


@dataclass(frozen=True)
class RouterConfig:
    chain: tuple[str, ...] = ()  # empty: every client given to the router, in that order
    max_strikes: int = 3
    cooldown_s: float = 5.0
    max_cooldown_s: float = 120.0
    ttfb_timeout_s: float = 8.0
    stall_timeout_s: float = 8.0
    admission_wait_s: float = 2.0
    engine_concurrency: int = 64
    sentence_max_chars: int = 250
    lookahead: int = 2
    max_input_chars: int = 4096
    probe_text: str = "Probe."
    status_timeout_s: float = 2.0
    # Overrides per engine name; engines not listed use the three values above.
    engine_limits: dict[str, EngineLimits] = field(default_factory=dict)
    # Speed range each engine accepts; the request must fit the engines it may reach.
    speed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def limits_for(self, engine: str) -> EngineLimits:
        return self.engine_limits.get(
            engine, EngineLimits(self.ttfb_timeout_s, self.stall_timeout_s, self.engine_concurrency)
        )

    @classmethod
    def from_settings(
        cls,
        s: Settings,
        engines: Mapping[str, Any] | None = None,
        speed_ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> RouterConfig:
        """Global `TTS_*` values, with each engine's own budgets (its `EngineSettings`) where set."""
        return cls(
            chain=tuple(s.router.engine_chain),
            max_strikes=s.router.max_strikes,
            cooldown_s=s.router.breaker_cooldown_s,
            max_cooldown_s=s.router.breaker_max_cooldown_s,
            ttfb_timeout_s=s.router.ttfb_timeout_s,
            stall_timeout_s=s.router.stall_timeout_s,
            admission_wait_s=s.router.admission_wait_s,
            engine_concurrency=s.router.engine_concurrency,
            sentence_max_chars=s.router.sentence_max_chars,
            lookahead=s.router.lookahead_sentences,
            max_input_chars=s.http.max_input_chars,
            probe_text=s.router.probe_text,
            engine_limits={
                name: EngineLimits(
                    ttfb_timeout_s=own.ttfb_timeout_s or s.router.ttfb_timeout_s,
                    stall_timeout_s=own.stall_timeout_s or s.router.stall_timeout_s,
                    concurrency=own.concurrency or s.router.engine_concurrency,
                )
                for name, own in (engines or {}).items()
            },
            speed_ranges=dict(speed_ranges or {}),
        )


@dataclass
class SpeechRequest:
    """What to say and how. `text` is unused by `FallbackRouter.stream` (its sentences come in)."""

    text: str
    voice: str | None = None
    language: str | None = None
    speed: float = 1.0
    sample_rate: int = 24000  # 0: the engine's own rate (probes)
    engine: str | None = None
    # OpenAI's free-text direction: speed cues apply to every engine; the rest reaches engines that
    # accept it (serve_app.core.style).
    instructions: str | None = None
    # Word times on the chunks (`AudioChunk.words`); off, no estimation work is done.
    timestamps: bool = False
    # Spoken form (numbers, dates ... as words) before synthesis; off, engines get the text as written.
    normalize: bool = True


@dataclass(frozen=True)
class Sentence:
    """One sentence of `FallbackRouter.stream` whose spoken form the caller already made.

    The realtime socket normalises a sentence while its tokens arrive (`serve_app.core.spoken_stream`),
    so the router speaks `spoken` instead of normalising `text` again. A plain `str` sentence is
    normalised by the router (when the request asks for it).
    """

    text: str  # as written
    spoken: str  # what the engines say


@dataclass
class AudioChunk:
    """PCM at the requested rate, tagged with the engine that made it and its sentence index.

    `words` (only when the request asked for timestamps) are the words heard in full by the end of
    this chunk, in seconds from the start of the stream's audio. A chunk may carry words and no PCM
    (a sentence's last words, or estimated timings, come after its audio); the first chunk of a
    stream always has PCM.
    """

    pcm: bytes
    engine: str
    sentence: int
    words: tuple[WordMark, ...] = ()
