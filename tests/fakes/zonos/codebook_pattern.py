"""Test double of `zonos.codebook_pattern`: the delay pattern (codebook k shifted right by k + 1).

This is a data-layout contract, not behaviour to fake: the double lays codes out exactly as the
real module does, so the engine's bookkeeping is checked against the real layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def apply_delay_pattern(codes: torch.Tensor, mask_token: int) -> torch.Tensor:
    q = codes.shape[1]
    padded = F.pad(codes, (0, q), value=mask_token)
    return torch.stack([padded[:, k].roll(k + 1) for k in range(q)], dim=1)


def revert_delay_pattern(codes: torch.Tensor) -> torch.Tensor:
    _, q, length = codes.shape
    return torch.stack([codes[:, k, k + 1 : length - q + k + 1] for k in range(q)], dim=1)
