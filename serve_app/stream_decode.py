"""Streaming audio out of a codec decoder while the codes are still being generated.

A token-based TTS model produces codec frames one step at a time; a convolutional codec decoder
turns frames into audio, but each output sample depends on a few frames on either side (for DAC,
about 7 frames each way). Decoding only the new frames would leave audible clicks at every seam.
`StreamWindow` decides, per stream, when a chunk is due and which frames to decode for it:

- `left_context` frames already emitted are decoded again in front of the new ones, so the
  decoder's state at the seam is what it would have been in a one-shot decode;
- `lookahead` frames after the chunk are decoded too but not emitted yet (they lack their own
  right context), so a chunk's last samples also see what follows them;
- chunk sizes ramp up: the first chunk leaves after `first_frames`, each later one is as large as
  everything emitted so far, capped at `chunk_frames`. If generation runs faster than real time,
  the listener's buffer therefore never runs dry between chunks, while the first audio leaves
  early.

With context and lookahead at least the decoder's receptive field the streamed waveform equals
the one-shot decode up to float rounding; `seam_error` measures it (tests and the benchmark).
Nothing here knows a particular model: the caller supplies codes and a decode function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Decode frames [start, end) and keep the audio of frames [emit_from, emit_to)."""

    start: int
    end: int
    emit_from: int
    emit_to: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    def keep(self, hop: int) -> slice:
        """The samples of the decoded window that belong to this chunk."""
        return slice((self.emit_from - self.start) * hop, (self.emit_to - self.start) * hop)


@dataclass
class StreamWindow:
    """Chunk schedule for one stream of frames (see the module docstring)."""

    first_frames: int = 8
    chunk_frames: int = 32
    left_context: int = 8
    lookahead: int = 4
    emitted: int = 0

    def __post_init__(self) -> None:
        if self.first_frames < 1 or self.chunk_frames < 1:
            raise ValueError("chunk sizes must be at least one frame")
        if self.left_context < 0 or self.lookahead < 0:
            raise ValueError("context and lookahead cannot be negative")

    def next_size(self) -> int:
        if self.emitted == 0:
            return self.first_frames
        return max(min(self.emitted, self.chunk_frames), 1)

    def due(self, available: int, final: bool = False) -> Window | None:
        """The window to decode now that `available` frames are complete, or None to wait.

        `final`: no more frames will come; everything not yet emitted is due.
        """
        if final:
            emit_to = available
        else:
            ready = available - self.lookahead
            if ready - self.emitted < self.next_size():
                return None
            emit_to = ready
        if emit_to <= self.emitted:
            return None
        start = max(0, self.emitted - self.left_context)
        end = available if final else min(available, emit_to + self.lookahead)
        return Window(start, end, self.emitted, emit_to)

    def mark(self, window: Window) -> None:
        self.emitted = window.emit_to


def to_pcm(wav: np.ndarray) -> bytes:
    """Float audio in [-1, 1] as signed 16-bit little-endian PCM."""
    return (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def seam_error(streamed: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Max and RMS difference (full scale = 1.0) between a streamed and a one-shot waveform."""
    if streamed.shape != reference.shape:
        raise ValueError(f"lengths differ: streamed {streamed.shape} vs one-shot {reference.shape}")
    diff = streamed.astype(np.float64) - reference.astype(np.float64)
    if diff.size == 0:
        return {"max": 0.0, "rms": 0.0}
    return {"max": float(np.abs(diff).max()), "rms": float(np.sqrt(np.mean(diff**2)))}
