"""PCM helpers, resampling (libsoxr) and streaming encoders (PyAV), in-process.

Everything inside the system is raw PCM: signed 16-bit little-endian mono. Engines produce it at
their own rate; `StreamResampler` converts a stream to the caller's rate without gaps or clicks at
chunk boundaries (it keeps filter state between chunks); `StreamEncoder` turns PCM into the
requested container chunk by chunk, so the first bytes leave before the last sentence is spoken.

Resampling uses libsoxr (`soxr`), not PyAV's resampler: every sentence of every request opens a
resampler, and PyAV's builds a filter graph that starts and stops a pool of threads each time,
which profiling found to be the largest share of the ingress's own work under load (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Iterator
from typing import ClassVar, cast

import av
import numpy as np
import soxr

SAMPLE_WIDTH = 2  # bytes per s16 sample


def pcm_duration(pcm_bytes: int, sample_rate: int) -> float:
    """Seconds of mono s16 audio in `pcm_bytes` bytes."""
    return pcm_bytes / (SAMPLE_WIDTH * sample_rate)


def rms_level(pcm: bytes) -> float:
    """Root-mean-square level (0..32767) of s16 PCM; 0 for silence or nothing."""
    if len(pcm) < SAMPLE_WIDTH:
        return 0.0
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def _frame(pcm: bytes, rate: int) -> av.AudioFrame:
    samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = rate
    return frame


class StreamResampler:
    """Stateful s16 mono resampler; identity when the rates match.

    libsoxr's high-quality filter holds back about 36 ms of audio until the next piece (or
    `flush`): the first piece still leaves at once, shortened by that much.
    """

    _EMPTY: ClassVar[np.ndarray] = np.zeros(0, dtype=np.int16)

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._carry = b""
        self._resampler = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")
        )

    def feed(self, pcm: bytes) -> bytes:
        pcm = self._carry + pcm
        odd = len(pcm) % SAMPLE_WIDTH
        self._carry = pcm[len(pcm) - odd :] if odd else b""
        pcm = pcm[: len(pcm) - odd]
        if not pcm:
            return b""
        if self._resampler is None:
            return pcm
        return _le_bytes(self._resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)))

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        return _le_bytes(self._resampler.resample_chunk(self._EMPTY, last=True))


def _le_bytes(samples: np.ndarray) -> bytes:
    return samples.astype("<i2", copy=False).tobytes()


def resample_pcm(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole buffer at once."""
    resampler = StreamResampler(in_rate, out_rate)
    return resampler.feed(pcm) + resampler.flush()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM WAV header; sizes are 0xFFFFFFFF when streaming an unknown length."""
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * SAMPLE_WIDTH, SAMPLE_WIDTH, 16
    ) + b"data" + struct.pack("<I", data_size)


class _Sink(io.RawIOBase):
    """A write-only file object for PyAV's muxer; `drain()` hands out what was written so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buffer.extend(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class StreamEncoder:
    """Encodes a PCM stream into one of OpenAI's response formats, chunk by chunk."""

    # format -> (container, codec, required sample rate or None, content type)
    FORMATS: ClassVar[dict[str, tuple[str | None, str | None, int | None, str]]] = {
        "pcm": (None, None, None, "audio/pcm"),
        "wav": (None, None, None, "audio/wav"),
        "mp3": ("mp3", "libmp3lame", None, "audio/mpeg"),
        "opus": ("ogg", "libopus", 48000, "audio/ogg"),
        "aac": ("adts", "aac", None, "audio/aac"),
        "flac": ("flac", "flac", None, "audio/flac"),
    }

    def __init__(self, response_format: str, sample_rate: int, *, bitrate: int = 64000) -> None:
        if response_format not in self.FORMATS:
            raise ValueError(f"unsupported format {response_format}")
        self.format = response_format
        self.sample_rate = sample_rate
        container, codec, _rate, self.content_type = self.FORMATS[response_format]
        self._header_sent = False
        self._container: av.container.OutputContainer | None = None
        self._sink: _Sink | None = None
        if container is not None and codec is not None:
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=container)
            added = self._container.add_stream(codec, rate=sample_rate, layout="mono")
            stream = cast(av.audio.stream.AudioStream, added)
            if codec != "flac":
                stream.bit_rate = bitrate
            self._stream = stream
            self._pts = 0

    @classmethod
    def rate_for(cls, response_format: str, requested: int) -> int:
        """Sample rate the container needs (Opus is always 48 kHz)."""
        return cls.FORMATS[response_format][2] or requested

    def feed(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        if self.format == "pcm":
            return pcm
        if self.format == "wav":
            if not self._header_sent:
                self._header_sent = True
                return wav_header(self.sample_rate) + pcm
            return pcm
        assert self._container is not None and self._sink is not None
        frame = _frame(pcm, self.sample_rate)
        frame.pts = self._pts
        self._pts += frame.samples
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.drain()

    def finish(self) -> bytes:
        if self.format == "wav" and not self._header_sent:
            self._header_sent = True
            return wav_header(self.sample_rate, 0)
        if self._container is None or self._sink is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.drain()

    def close(self) -> None:
        """Release codec resources when a stream is abandoned mid-way."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # already closed or half-written: nothing left to free
                self._container.close()
            self._container = None


def decode_audio(data: bytes, *, max_seconds: float | None = None) -> tuple[int, np.ndarray]:
    """Decode any container PyAV knows to (rate, mono s16 samples); used by tests and voice upload.

    `max_seconds` stops decoding with ValueError once exceeded: a few MB of low-bitrate audio can
    decode to hours of PCM, so uploads are bounded by duration as well as by bytes.
    """
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=stream.rate or 16000)
        chunks: list[np.ndarray] = []
        limit = None if max_seconds is None else int(max_seconds * (stream.rate or 16000))
        decoded = 0
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                decoded += out.samples
            if limit is not None and decoded > limit:
                raise ValueError(f"audio is longer than {max_seconds:g} seconds")
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
        rate = int(stream.rate or 16000)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return rate, samples


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """Split a buffer into chunks of at most `size` bytes (sample-aligned)."""
    size -= size % SAMPLE_WIDTH
    for start in range(0, len(data), size):
        yield data[start : start + size]
