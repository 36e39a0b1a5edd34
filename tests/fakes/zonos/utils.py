"""Test double of `zonos.utils` (Zyphra/Zonos): the default device, chosen the same way."""

from __future__ import annotations

import torch


def find_multiple(n: int, k: int) -> int:
    if k == 0 or n % k == 0:
        return n
    return n + k - (n % k)


def get_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device(torch.cuda.current_device())
    return torch.device("cpu")


DEFAULT_DEVICE = get_device()
