"""The contract every TTS engine keeps.

An engine turns one piece of text into an async stream of raw PCM (signed 16-bit little-endian,
mono) at `sample_rate`. Errors are typed (`serve_app.core.errors`) so the router can tell the
caller's mistakes (`InvalidInput`: never a strike) and a full engine (`EngineBusy`: never a strike)
from a broken one (`EngineUnavailable`, `EngineTimeout`: strikes).

A stream may yield an empty chunk first: it tells the router that the engine has started on this
request (it left the engine's queue), so the first-byte timer measures the engine, not its queue.

An engine that knows when each word is spoken (its service's word boundaries, its synthesizer's
segment times) also yields `WordMark`s between the chunks, in order, timed in seconds from the
start of its audio for this text; the router turns them into response times. Engines that yield none get timings
estimated from their audio (`serve_app.core.timing.estimate_words`).

`instructions` (OpenAI's free-text voice direction) reaches an engine only when it sets
`accepts_instructions` and takes an `instructions` keyword; speed cues in it ("slowly") are applied
by the router to every engine through `speed`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from serve_app.core.errors import (  # noqa: F401  (re-exported: engine modules import them from here)
    EngineBusy,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
)
from serve_app.core.gate import PRIORITY_NEW
from serve_app.core.timing import WordMark
from serve_app.core.voices import Catalogue, Voice


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
    # Set by the registry (the whole catalogue); an engine built alone knows only its own voices.
    catalogue: Catalogue = Catalogue({})
    # True when `synthesize` takes `instructions: str | None` (keyword) and follows some of it.
    accepts_instructions: ClassVar[bool] = False
    # True when a request can wait inside the engine behind others (a lock, a batch) before its work
    # begins: such an engine yields `b""` once this request's work begins. For the others the host
    # sends `b""` as soon as the replica has the request. Either way the router knows time before
    # `b""` as queueing (busy, never a strike) and times out only the engine's own work after it.
    queues_work: ClassVar[bool] = False
    # True when `synthesize` takes `priority: int` (keyword): an engine that queues work serves
    # lower numbers first (`PRIORITY_PLAYING` before `PRIORITY_NEW`).
    accepts_priority: ClassVar[bool] = False

    @abc.abstractmethod
    def synthesize(
        self, text: str, voice: str | None = None, *, language: str | None = None, speed: float = 1.0
    ) -> AsyncIterator[bytes | WordMark]:
        """Yield PCM s16le mono chunks for `text` (and `WordMark`s where known). Raise typed errors only."""

    @abc.abstractmethod
    def voices(self) -> list[Voice]:
        """Voices this engine can speak with."""

    @abc.abstractmethod
    async def check(self) -> EngineCheck:
        """Dependency check; never raises, reports the reason instead."""

    def open_stream(
        self,
        text: str,
        voice: str | None,
        *,
        language: str | None,
        speed: float,
        instructions: str | None = None,
        priority: int = PRIORITY_NEW,
    ) -> AsyncIterator[bytes | WordMark]:
        """`synthesize` with the optional arguments this engine takes (instructions, priority)."""
        extra: dict[str, Any] = {}
        if instructions is not None and self.accepts_instructions:
            extra["instructions"] = instructions
        if self.accepts_priority:
            extra["priority"] = priority
        return self.synthesize(text, voice, language=language, speed=speed, **extra)

    def resolve_voice(self, voice: str | None) -> str:
        """Map a requested voice (engine id or OpenAI name) to one of ours, or raise InvalidInput."""
        return self.catalogue.resolve(self.name, voice, [v.id for v in self.voices()])

    def prefer_language(self, chosen: str, language: str | None) -> str:
        """`chosen`, or one of our voices that speaks `language` (same gender where possible)."""
        return self.catalogue.prefer_language(self.name, chosen, language, [v.id for v in self.voices()])

    def check_speed(self, speed: float, speed_range: tuple[float, float]) -> None:
        if not speed_range[0] <= speed <= speed_range[1]:
            raise InvalidInput(f"speed must be between {speed_range[0]} and {speed_range[1]}", param="speed")
