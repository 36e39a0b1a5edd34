"""The contract every TTS engine keeps, and the typed errors the router reasons about.

An engine turns one piece of text into an async stream of raw PCM (signed 16-bit little-endian,
mono) at `sample_rate`. Errors are typed so the router can tell the caller's mistakes
(`InvalidInput`: never a strike) from the engine's (`EngineUnavailable`, `EngineTimeout`: strikes).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any


class TTSError(Exception):
    """Base of every error an engine or the router raises on purpose."""

    code = "tts_error"


class InvalidInput(TTSError):
    """The request itself is wrong (empty text, unknown voice): the caller's fault, never a strike."""

    code = "invalid_input"


class EngineUnavailable(TTSError):
    """The engine cannot serve now (missing dependency, crashed, network down)."""

    code = "engine_unavailable"


class EngineTimeout(EngineUnavailable):
    """The engine did not produce audio in time (first byte or between chunks)."""

    code = "engine_timeout"


@dataclass(frozen=True)
class Voice:
    """One voice of one engine, as listed by `GET /v1/audio/voices`."""

    id: str
    engine: str
    name: str
    language: str = "en-US"
    gender: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EngineCheck:
    """Result of a dependency check: whether the engine can serve, and if not, why."""

    name: str
    available: bool
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Engine(abc.ABC):
    """A TTS engine. Subclasses are plain classes, wrapped as Serve deployments in `deployments.py`."""

    name: str = "engine"
    sample_rate: int = 16000

    @abc.abstractmethod
    def synthesize(
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0
    ) -> AsyncIterator[bytes]:
        """Yield PCM s16le mono chunks for `text`. Raise typed errors only."""

    @abc.abstractmethod
    def voices(self) -> list[Voice]:
        """Voices this engine can speak with."""

    @abc.abstractmethod
    async def check(self) -> EngineCheck:
        """Dependency check; never raises, reports the reason instead."""

    def resolve_voice(self, voice: str | None) -> str:
        """Map a requested voice (engine id or OpenAI name) to one of ours, or raise InvalidInput."""
        from serve_app.voices import resolve_voice

        return resolve_voice(self.name, voice, [v.id for v in self.voices()])
