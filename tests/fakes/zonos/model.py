"""Test double of `zonos.model.Zonos` (Zyphra/Zonos), importable as `zonos.model` in tests only.

Same entry points, argument names, shapes and dtypes as the real model, without weights:
- `Zonos.from_pretrained(repo_id, revision=None, device=DEFAULT_DEVICE)`: known repo ids only
  (anything else fails like a missing Hugging Face repo); moving to a device that is not there
  fails the way torch does;
- `make_speaker_embedding(wav [channels, samples] or [samples], sr)` -> bfloat16 [1, 1, 128],
  derived from the clip's content, so different clips give different embeddings;
- `prepare_conditioning(cond_dict)` -> bfloat16 [2 * batch, seq, 1024] (conditional rows, then
  unconditional rows, as classifier-free guidance needs); batches come from `espeak` lists and
  tensors with batch dimension `batch` or 1, with the real size check;
- `generate(prefix_conditioning, ..., batch_size=1, ...)` -> int64 codes [batch, 9, frames]:
  each row's length follows its text length and speaking rate; rows that end early are filled
  with 0 after their end (the real model's masked_fill of EOS/masked tokens); `max_new_tokens`
  cuts long rows; sampling uses torch's global generator, so `torch.manual_seed` repeats it;
- `autoencoder` (see `zonos.autoencoder`): `decode` -> float32 [batch, 1, frames * 512] at 44.1 kHz.

The conditioning tensor carries what `generate` needs (which positions are phonemes, the speaking
rate, the speaker) in a few channels; the real model learns that from the same inputs.
`generate_calls` records each call's batch size, so tests can see batching happen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from zonos.autoencoder import DACAutoencoder
from zonos.conditioning import tokenize_phonemes
from zonos.utils import DEFAULT_DEVICE

KNOWN_MODELS = {"Zyphra/Zonos-v0.1-hybrid", "Zyphra/Zonos-v0.1-transformer"}
D_MODEL = 1024
FRAME_RATE = 86  # codes per second at 44.1 kHz with a 512-sample hop
PHONEMES_PER_SECOND = 12.0  # at speaking_rate 15, Zonos's default
REQUIRED_KEYS = {"espeak", "language_id"}
SPEAKER_DIM = 128


class Zonos(nn.Module):
    def __init__(self, repo_id: str) -> None:
        super().__init__()
        self.repo_id = repo_id
        self.autoencoder = DACAutoencoder()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device and dtype, like real weights
        self.eos_token_id = 1024
        self.masked_token_id = 1025
        self.generate_calls: list[int] = []

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_pretrained(
        cls, repo_id: str, revision: str | None = None, device: str | torch.device = DEFAULT_DEVICE, **kwargs: object
    ) -> Zonos:
        if repo_id not in KNOWN_MODELS:
            raise OSError(f"{repo_id} is not a valid model identifier listed on 'https://huggingface.co/models'")
        model = cls(repo_id).to(device, torch.bfloat16)
        model.autoencoder.device = torch.device(device)
        return model

    def make_speaker_embedding(self, wav: torch.Tensor, sr: int) -> torch.Tensor:
        assert wav.ndim < 3
        if wav.ndim == 2:
            wav = wav.mean(0, keepdim=True)
        wav = wav.reshape(-1).to(torch.float32)
        spectrum = torch.fft.rfft(wav[: sr * 30]).abs()
        bands = torch.stack([band.mean() for band in spectrum.chunk(16)])
        features = torch.cat([bands / (bands.sum() + 1e-9), wav.abs().mean().reshape(1), wav.std().reshape(1)])
        projection = torch.randn(features.shape[0], SPEAKER_DIM, generator=torch.Generator().manual_seed(1234))
        embedding = torch.tanh(features @ projection * 4.0)
        return embedding.reshape(1, 1, SPEAKER_DIM).to(self.device).bfloat16()

    def _conditional_rows(self, cond_dict: dict) -> torch.Tensor:
        texts, languages = cond_dict["espeak"]
        assert len(texts) == len(languages)
        tokens, _ = tokenize_phonemes(list(texts))
        batch = len(texts)
        sizes = {batch} | {v.shape[0] for v in cond_dict.values() if isinstance(v, torch.Tensor)}
        max_bsz = max(sizes)
        assert all(size in (max_bsz, 1) for size in sizes), "conditioning batch sizes differ"
        seq = tokens.shape[1] + 10  # phonemes, then one position per other conditioner
        rows = torch.zeros(max_bsz, seq, D_MODEL)
        rows[:, : tokens.shape[1], 0] = (tokens != 0).to(torch.float32).expand(max_bsz, -1)
        rate = cond_dict.get("speaking_rate")
        rows[:, -1, 1] = (rate.reshape(-1).float() / 40.0) if rate is not None else 15.0 / 40.0
        speaker = cond_dict.get("speaker")
        if speaker is not None:
            rows[:, -2, 2 : 2 + SPEAKER_DIM] = speaker.reshape(speaker.shape[0], -1).float()
        return rows

    def prepare_conditioning(self, cond_dict: dict, uncond_dict: dict | None = None) -> torch.Tensor:
        missing = REQUIRED_KEYS - set(cond_dict)
        if missing:
            raise ValueError(f"Missing required keys: {missing}")
        cond = self._conditional_rows(cond_dict)
        uncond = torch.zeros_like(cond)
        return torch.cat([cond, uncond]).to(self.device, torch.bfloat16)

    @torch.inference_mode()
    def generate(
        self,
        prefix_conditioning: torch.Tensor,
        audio_prefix_codes: torch.Tensor | None = None,
        max_new_tokens: int = 86 * 30,
        cfg_scale: float = 2.0,
        batch_size: int = 1,
        sampling_params: dict = dict(min_p=0.1),  # noqa: B006 - the real signature
        progress_bar: bool = True,
        disable_torch_compile: bool = False,
        callback: Callable[[torch.Tensor, int, int], bool] | None = None,
    ) -> torch.Tensor:
        assert cfg_scale != 1, "TODO: add support for cfg_scale=1"
        assert prefix_conditioning.shape[0] == 2 * batch_size, "conditioning must hold 2 * batch_size rows"
        self.generate_calls.append(batch_size)
        cond = prefix_conditioning[:batch_size].float()
        phonemes = cond[:, :, 0].sum(dim=1)
        rate = (cond[:, -1, 1] * 40.0).clamp(min=1.0)
        seconds = phonemes / (PHONEMES_PER_SECOND * rate / 15.0) + 0.3
        lengths = (seconds * FRAME_RATE).round().to(torch.int64).clamp(min=1, max=max_new_tokens)
        frames = int(lengths.max())
        pitch = (cond[:, -2, 2:6].sum(dim=1) * 16).round().to(torch.int64) % 96 + 16
        codes = torch.randint(1, 1024, (batch_size, 9, frames), device=self.device)
        codes[:, 0, :] = (pitch.reshape(-1, 1) + torch.randint(0, 3, (batch_size, frames))).to(self.device)
        for step in range(frames):
            if callback is not None and not callback(codes[..., step : step + 1], step + 1, frames):
                frames = step + 1
                break
        codes = codes[..., :frames]
        for row, length in enumerate(lengths.tolist()):
            codes[row, :, length:] = 0
        return codes
