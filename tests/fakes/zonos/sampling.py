"""Test double of `zonos.sampling`: `sample_from_logits` with the real signature and output shape.

Temperature, min-p, top-k and the repetition penalty over a short window, then one draw per
codebook with torch's global generator (so `torch.manual_seed` repeats it). `[batch, q, vocab]`
logits in, `[batch, q, 1]` int64 tokens out.
"""

from __future__ import annotations

import torch


def sample_from_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 0.0,
    top_k: int = 0,
    min_p: float = 0.0,
    linear: float = 0.0,
    conf: float = 0.0,
    quad: float = 0.0,
    generated_tokens: torch.Tensor | None = None,
    repetition_penalty: float = 3.0,
    repetition_penalty_window: int = 2,
) -> torch.Tensor:
    if repetition_penalty != 1.0 and generated_tokens is not None:
        recent = generated_tokens[..., -repetition_penalty_window:].clamp_max(logits.shape[-1] - 1).to(torch.int64)
        factors = torch.ones_like(logits).scatter_reduce(
            2, recent, torch.full_like(logits, repetition_penalty), reduce="prod"
        )
        logits = torch.where(logits <= 0, logits * factors, logits / factors)
    if temperature <= 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k > 0:
        pivot = torch.topk(probs, min(top_k, probs.shape[-1])).values[..., -1:]
        probs = torch.where(probs < pivot, 0.0, probs)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    q = torch.empty_like(probs).exponential_(1)
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(torch.int64)
