"""Test double of `zonos.model.Zonos` (Zyphra/Zonos), importable as `zonos.model` in tests only.

The same entry points, argument names, shapes, dtypes and refusals as the real model for
everything the engine calls (tests/unit/test_zonos_real.py runs the same calls through both),
without weights:
- `Zonos.from_pretrained(repo_id, revision=None, device=DEFAULT_DEVICE)`: known repo ids only
  (anything else fails like a missing Hugging Face repo); moving to a device that is not there
  fails the way torch does;
- `make_speaker_embedding(wav [channels, samples] or [samples], sr)` -> bfloat16 `[1, 1, 128]`,
  derived from the clip's content, so different clips give different embeddings;
- `prepare_conditioning(cond_dict, uncond_dict=None)` -> bfloat16 `[2 * batch, seq, d_model]`
  through the double's `PrefixConditioner` (the real calling convention, see
  `zonos.conditioning`);
- `setup_cache(batch_size, max_seqlen)` -> `InferenceParams` with a per-layer cache whose first
  dimension is the batch, `embed_codes` (codes must be 0..1025, like the real embeddings),
  `_compute_logits` (backbone, heads, classifier-free guidance over the two halves),
  `_prefill` (with upstream's `expand`, which only works for one request), `_decode_one_token`
  (`repeat(2, 1, 1)` for guidance), `can_use_cudagraphs()`; logits `[batch, 9, 1025]` float32;
- `autoencoder` (see `zonos.autoencoder`): `decode` -> float32 `[batch, 1, frames * 512]`.

The "backbone" keeps the hidden states it is given in its cache, like the real KV cache, and
reads what it needs from there: how many phonemes the prefix holds, the speaking rate, the
speaker, how many audio frames were fed. The heads then make the next frame's code depend on
the speaker and end the utterance (EOS in codebook 0) once the row has spoken for as long as its
text takes at its rate: a row's length follows its text and speed, as with the real model.
Unconditional rows (no speaking rate in their prefix) give zero logits, so guidance keeps the
conditional choice.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from zonos.autoencoder import DACAutoencoder
from zonos.conditioning import D_MODEL, PrefixConditioner
from zonos.config import InferenceParams
from zonos.utils import DEFAULT_DEVICE, find_multiple

KNOWN_MODELS = {"Zyphra/Zonos-v0.1-hybrid", "Zyphra/Zonos-v0.1-transformer"}
FRAME_RATE = 86  # codes per second at 44.1 kHz with a 512-sample hop
PHONEMES_PER_SECOND = 12.0  # at speaking_rate 15, Zonos's default
SPEAKER_DIM = 128
VOCAB = 1025


class Backbone(nn.Module):
    """Writes its input into the cache (as attention writes keys and values) and summarises each row."""

    def allocate_inference_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype = torch.bfloat16) -> dict:
        return {0: (torch.zeros(batch_size, max_seqlen, D_MODEL, dtype=torch.float32), None)}

    def forward(self, hidden_states: torch.Tensor, inference_params: InferenceParams) -> torch.Tensor:
        cache, _ = inference_params.key_value_memory_dict[0]
        start = inference_params.batch_size_offset
        end = start + hidden_states.shape[0]
        seq_end = inference_params.seqlen_offset + hidden_states.shape[1]
        assert end <= cache.shape[0]
        assert seq_end <= cache.shape[1]
        cache[start:end, inference_params.seqlen_offset : seq_end] = hidden_states.float()
        seen = cache[start:end, :seq_end]
        out = torch.zeros(hidden_states.shape[0], hidden_states.shape[1], D_MODEL, device=hidden_states.device)
        out[:, -1, 0] = seen[..., 0].sum(dim=1)  # phonemes in the prefix
        out[:, -1, 1] = seen[..., 1].amax(dim=1) * 40.0  # speaking rate (0: an unconditional row)
        out[:, -1, 2] = seen[..., 2:6].sum(dim=(1, 2))  # the speaker's signature
        out[:, -1, 3] = seen[..., 8].sum(dim=1)  # audio frames fed so far
        return out.to(hidden_states.dtype)


class Zonos(nn.Module):
    def __init__(self, repo_id: str) -> None:
        super().__init__()
        self.repo_id = repo_id
        self.autoencoder = DACAutoencoder()
        self.backbone = Backbone()
        self.prefix_conditioner = PrefixConditioner()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device and dtype, like real weights
        self.eos_token_id = 1024
        self.masked_token_id = 1025
        self._cg_graph = None

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

    def prepare_conditioning(self, cond_dict: dict, uncond_dict: dict | None = None) -> torch.Tensor:
        if uncond_dict is None:
            uncond_dict = {k: cond_dict[k] for k in self.prefix_conditioner.required_keys}
        return torch.cat([self.prefix_conditioner(cond_dict), self.prefix_conditioner(uncond_dict)]).to(
            self.device, torch.bfloat16
        )

    def setup_cache(self, batch_size: int, max_seqlen: int, dtype: torch.dtype = torch.bfloat16) -> InferenceParams:
        max_seqlen = find_multiple(max_seqlen, 8)
        memory = self.backbone.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)
        lengths_per_sample = torch.full((batch_size,), 0, dtype=torch.int32)
        return InferenceParams(max_seqlen, batch_size, 0, 0, memory, lengths_per_sample)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if int(codes.min()) < 0 or int(codes.max()) > 1025:
            raise IndexError("index out of range in self")
        hidden = torch.zeros(codes.shape[0], codes.shape[2], D_MODEL, device=codes.device, dtype=torch.bfloat16)
        hidden[..., 8] = 1.0
        return hidden

    def apply_heads(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`[rows, 1, d]` -> `[rows, 9, 1, 1025]`: the next frame's codes and, in codebook 0, EOS when due."""
        state = hidden_states[:, -1].float()
        phonemes, rate, speaker, frames = state[:, 0], state[:, 1], state[:, 2], state[:, 3]
        conditional = rate > 0
        seconds = phonemes / (PHONEMES_PER_SECOND * rate.clamp(min=1.0) / 15.0) + 0.3
        due = frames >= (seconds * FRAME_RATE).round()
        pitch = ((speaker * 16).round().to(torch.int64) % 96 + 16).clamp(0, 1023)
        logits = torch.zeros(state.shape[0], 9, 1, VOCAB, device=state.device)
        rows = torch.arange(state.shape[0], device=state.device)
        for k in range(9):
            code = (pitch * (k + 1) + frames.to(torch.int64) * (k % 3)) % 1024
            logits[rows, k, 0, code] = 12.0
        logits[:, 0, 0, self.eos_token_id] = torch.where(due, 30.0, -30.0)
        logits[~conditional] = 0.0
        return logits.to(hidden_states.dtype)

    def _compute_logits(
        self, hidden_states: torch.Tensor, inference_params: InferenceParams, cfg_scale: float | torch.Tensor
    ) -> torch.Tensor:
        last_hidden_states = self.backbone(hidden_states, inference_params)[:, -1, :].unsqueeze(1)
        logits = self.apply_heads(last_hidden_states).squeeze(2).float()
        if cfg_scale != 1.0:
            cond_logits, uncond_logits = logits.chunk(2)
            logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
        logits[..., 1025:].fill_(-torch.inf)
        return logits

    def _decode_one_token(
        self,
        input_ids: torch.Tensor,
        inference_params: InferenceParams,
        cfg_scale: float | torch.Tensor,
        allow_cudagraphs: bool = True,
    ) -> torch.Tensor:
        hidden_states = self.embed_codes(input_ids)
        if cfg_scale != 1.0:
            hidden_states = hidden_states.repeat(2, 1, 1)
        return self._compute_logits(hidden_states, inference_params, cfg_scale)

    def _prefill(
        self,
        prefix_hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        inference_params: InferenceParams,
        cfg_scale: float,
    ) -> torch.Tensor:
        if cfg_scale != 1.0:
            input_ids = input_ids.expand(prefix_hidden_states.shape[0], -1, -1)  # upstream: one request only
        hidden_states = torch.cat([prefix_hidden_states, self.embed_codes(input_ids)], dim=1)
        return self._compute_logits(hidden_states, inference_params, cfg_scale)

    def can_use_cudagraphs(self) -> bool:
        return False
