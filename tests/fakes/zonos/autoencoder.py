"""Test double of `zonos.autoencoder.DACAutoencoder`: 9 codebooks of 1024 codes, 44.1 kHz, 512 samples a frame.

`decode` turns each frame's codes into 512 samples of a tone (pitch from codebook 0) instead of
running the DAC decoder; all-zero frames (what `generate` leaves after a row's end) decode to
silence, as padding decodes to near-silence in the real model. Shapes and dtypes are the real ones:
codes [batch, 9, frames] int64 in, float32 [batch, 1, frames * 512] out.
"""

from __future__ import annotations

import math

import torch

HOP = 512


class DACAutoencoder:
    def __init__(self) -> None:
        self.codebook_size = 1024
        self.num_codebooks = 9
        self.sampling_rate = 44_100
        self.device = torch.device("cpu")

    def preprocess(self, wav: torch.Tensor, sr: int) -> torch.Tensor:
        if sr != self.sampling_rate:
            length = round(wav.shape[-1] * self.sampling_rate / sr)
            wav = torch.nn.functional.interpolate(wav.reshape(1, 1, -1), size=length, mode="linear").reshape(
                *wav.shape[:-1], length
            )
        right_pad = math.ceil(wav.shape[-1] / HOP) * HOP - wav.shape[-1]
        return torch.nn.functional.pad(wav, (0, right_pad))

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // HOP
        level = wav.reshape(wav.shape[0], -1)[:, : frames * HOP].reshape(wav.shape[0], frames, HOP).abs().mean(-1)
        codes = (level * 1023).clamp(1, 1023).to(torch.int64)
        return codes.unsqueeze(1).expand(-1, self.num_codebooks, -1).contiguous()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        assert codes.ndim == 3 and codes.shape[1] == self.num_codebooks, "codes must be [batch, 9, frames]"
        batch, _, frames = codes.shape
        t = torch.arange(frames * HOP, dtype=torch.float32, device=codes.device) / self.sampling_rate
        pitch = (110.0 + codes[:, 0, :].to(torch.float32) % 128 * 2.0).repeat_interleave(HOP, dim=-1)
        voiced = (codes != 0).any(dim=1).to(torch.float32).repeat_interleave(HOP, dim=-1)
        wav = 0.3 * torch.sin(2 * math.pi * pitch * t) * voiced
        return wav.reshape(batch, 1, frames * HOP).float()
