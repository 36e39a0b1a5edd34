"""An AgentSession's outputs without a LiveKit room: a speaker that plays in real time, text sinks.

`PlayoutAudioOutput` follows the contract of livekit's own sinks (`room_io`'s participant output,
the console outputs): each segment (frames up to `flush()`) starts playing at its first frame, on
the wall clock, as a speaker would; `clear_buffer()` stops it at once; `playback_finished` reports
how much played and whether it was interrupted. livekit's `TranscriptSynchronizer` paces the
transcript against that clock, and `AgentSession` waits on it before a speech counts as done, so
the sink must play for real: a sink that "played" everything at once would make an interruption
land after the speech. It keeps every frame, grouped by segment, so a test sees what was heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from livekit import rtc
from livekit.agents.voice import io


@dataclass
class Segment:
    """One playback segment: the frames it was given and how its playback ended."""

    frames: list[rtc.AudioFrame] = field(default_factory=list)
    finished: io.PlaybackFinishedEvent | None = None

    @property
    def duration(self) -> float:
        return sum(f.duration for f in self.frames)


class PlayoutAudioOutput(io.AudioOutput):
    """A speaker on the wall clock; frames may arrive faster than real time (they are queued)."""

    def __init__(self, *, sample_rate: int | None = None) -> None:
        super().__init__(
            label="PlayoutSpeaker",
            capabilities=io.AudioOutputCapabilities(pause=False),
            next_in_chain=None,
            sample_rate=sample_rate,
        )
        self.segments: list[Segment] = []
        self.first_frame = asyncio.Event()
        self._current: Segment | None = None
        self._started_at = 0.0
        self._interrupted = asyncio.Event()
        self._playout: asyncio.Task[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._playout is not None and not self._playout.done():
            await self._playout  # the previous segment plays to its end (or its interruption) first
        if self._current is None:
            self._current = Segment()
            self.segments.append(self._current)
            self._started_at = time.monotonic()
            self.on_playback_started(created_at=time.time())
        self._current.frames.append(frame)
        self.first_frame.set()

    def flush(self) -> None:
        super().flush()
        if self._current is None:
            return
        segment, self._current = self._current, None
        self._playout = asyncio.create_task(self._play_out(segment))

    def clear_buffer(self) -> None:
        if self._current is not None or (self._playout is not None and not self._playout.done()):
            self._interrupted.set()

    async def _play_out(self, segment: Segment) -> None:
        """Wait until the segment has played, or until it is cleared; then report how far it got."""
        remaining = self._started_at + segment.duration - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupted.wait(), max(remaining, 0.0))
        interrupted = self._interrupted.is_set()
        self._interrupted.clear()
        played = min(max(time.monotonic() - self._started_at, 0.0), segment.duration)
        position = played if interrupted else segment.duration
        segment.finished = io.PlaybackFinishedEvent(playback_position=position, interrupted=interrupted)
        self.on_playback_finished(playback_position=position, interrupted=interrupted)

    async def aclose(self) -> None:
        if self._playout is not None:
            self._playout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._playout


class RecordingTextOutput(io.TextOutput):
    """Keeps every piece of text it is given (and passes it on when chained), per segment."""

    def __init__(self, label: str, next_in_chain: io.TextOutput | None = None) -> None:
        super().__init__(label=label, next_in_chain=next_in_chain)
        self.segments: list[list[str]] = [[]]

    async def capture_text(self, text: str) -> None:
        self.segments[-1].append(text)
        if self.next_in_chain is not None:
            await self.next_in_chain.capture_text(text)

    def flush(self) -> None:
        if self.segments[-1]:
            self.segments.append([])
        if self.next_in_chain is not None:
            self.next_in_chain.flush()

    @property
    def texts(self) -> list[list[str]]:
        """The finished segments (and the open one, if it has text)."""
        return [s for s in self.segments if s]
