"""Test double of `zonos.autoencoder.DACAutoencoder`: 9 codebooks of 1024 codes, 44.1 kHz, 512 samples a frame.

`decode` turns each frame's codes into 512 samples of a tone (pitch from codebook 0) instead of
running the DAC decoder. Each frame is decoded on its own (the real decoder looks ~7 frames
either way), so a windowed decode equals the one-shot decode exactly. Accepts what the real one
accepts: int64 codes `[batch, 9, frames]` in 0..1023 (the real codebook lookup raises IndexError
for EOS 1024 or the mask token 1025), float32 `[batch, 1, frames * 512]` out.
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

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 3 or codes.shape[1] != self.num_codebooks:
            raise RuntimeError(f"codes must be [batch, {self.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise IndexError("index out of range in self")
        batch, _, frames = codes.shape
        n = torch.arange(HOP, dtype=torch.float32, device=codes.device) / self.sampling_rate
        pitch = 110.0 + (codes[:, 0, :].to(torch.float32) % 128) * 2.0  # [batch, frames]
        wav = 0.3 * torch.sin(2 * math.pi * pitch.unsqueeze(-1) * n)  # [batch, frames, HOP]
        return wav.reshape(batch, 1, frames * HOP).float()
