"""Test double of `zonos.config`: the inference-state record the model's cache lives in (same fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InferenceParams:
    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: torch.Tensor | None = None
