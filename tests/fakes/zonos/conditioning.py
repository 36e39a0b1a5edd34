"""Test double of `zonos.conditioning`: `make_cond_dict`, `phonemize` and the prefix conditioner.

Accepts exactly what the real module accepts (tests/unit/test_zonos_real.py runs the same calls
through both):
- `make_cond_dict` has the real signature, checks and output (`[1, 1, k]` tensors, `espeak` as
  `([text], [language])`, the emotion vector normalised);
- `PrefixConditioner` calls each conditioner as `apply_cond(*value)`, like the real one: a
  `[1, 1, k]` tensor is unpacked into one `[1, k]` argument (the result is expanded to the batch),
  a one-element tuple `([n, 1, k],)` is a batch of n, and a stacked `[n, 1, k]` tensor is n
  arguments and fails with the same TypeError; `None` gives the learned unconditional vector;
  the last dimension is checked per conditioner; `espeak` is required.

The real module phonemizes with eSpeak; `phonemize` here returns the text itself and the phoneme
"embedding" marks which positions hold a phoneme (upstream's left padding with PAD included).
The output channels carry what the double's model needs: channel 0 phoneme, 1 speaking rate / 40,
2..5 the speaker's first values, 7 "unconditional" marker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from zonos.utils import DEFAULT_DEVICE

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
D_MODEL = 16

supported_language_codes = [
    'af', 'am', 'an', 'ar', 'as', 'az', 'ba', 'bg', 'bn', 'bpy', 'bs', 'ca', 'cmn',
    'cs', 'cy', 'da', 'de', 'el', 'en-029', 'en-gb', 'en-gb-scotland', 'en-gb-x-gbclan',
    'en-gb-x-gbcwmd', 'en-gb-x-rp', 'en-us', 'eo', 'es', 'es-419', 'et', 'eu', 'fa',
    'fa-latn', 'fi', 'fr-be', 'fr-ch', 'fr-fr', 'ga', 'gd', 'gn', 'grc', 'gu', 'hak',
    'hi', 'hr', 'ht', 'hu', 'hy', 'hyw', 'ia', 'id', 'is', 'it', 'ja', 'jbo', 'ka',
    'kk', 'kl', 'kn', 'ko', 'kok', 'ku', 'ky', 'la', 'lfn', 'lt', 'lv', 'mi', 'mk',
    'ml', 'mr', 'ms', 'mt', 'my', 'nb', 'nci', 'ne', 'nl', 'om', 'or', 'pa', 'pap',
    'pl', 'pt', 'pt-br', 'py', 'quc', 'ro', 'ru', 'ru-lv', 'sd', 'shn', 'si', 'sk',
    'sl', 'sq', 'sr', 'sv', 'sw', 'ta', 'te', 'tn', 'tr', 'tt', 'ur', 'uz', 'vi',
    'vi-vn-x-central', 'vi-vn-x-south', 'yue'
]  # fmt: skip


def phonemize(texts: list[str], languages: list[str]) -> list[str]:
    """Stands in for eSpeak: the text itself, whitespace collapsed (one "phoneme" per character)."""
    assert len(texts) == len(languages)
    return [re.sub(r"\s+", " ", text).strip() for text in texts]


def tokenize_phonemes(phonemes: list[str]) -> tuple[torch.Tensor, list[int]]:
    ids = [[BOS_ID, *(4 + (ord(c) % 100) for c in p), EOS_ID] for p in phonemes]
    lengths = [len(i) for i in ids]
    longest = max(lengths)
    return torch.tensor([[PAD_ID] * (longest - len(i)) + i for i in ids]), lengths


class Conditioner:
    """One conditioner: `forward(None)` is the learned unconditional vector, else `apply_cond(*inputs)`."""

    def __init__(self, name: str, input_dim: int | None, learned_uncond: bool) -> None:
        self.name = name
        self.input_dim = input_dim
        self.learned_uncond = learned_uncond

    def apply_cond(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.input_dim
        out = torch.zeros(*x.shape[:-1], D_MODEL)
        if self.name == "speaking_rate":
            out[..., 1] = x[..., 0].float() / 40.0
        elif self.name == "speaker":
            if x.dtype != torch.bfloat16:  # the real projection is a bfloat16 Linear
                raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got {x.dtype} and BFloat16")
            out[..., 2:6] = x[..., :4].float()
        elif self.name == "language_id" and x.is_floating_point():  # the real one is an Embedding lookup
            raise RuntimeError("Expected tensor for argument #1 'indices' to have one of the following scalar types")
        return out

    def __call__(self, inputs: Any) -> torch.Tensor:
        if inputs is None:
            assert self.learned_uncond
            vector = torch.zeros(1, 1, D_MODEL)
            vector[..., 7] = 1.0
            return vector
        return self.apply_cond(*inputs)


class EspeakConditioner(Conditioner):
    def apply_cond(self, texts: list[str], languages: list[str]) -> torch.Tensor:  # type: ignore[override]
        ids, _ = tokenize_phonemes(phonemize(texts, languages))
        out = torch.zeros(*ids.shape, D_MODEL)
        out[..., 0] = (ids != PAD_ID).float()
        return out


class PrefixConditioner:
    """The real conditioner's contract: required keys, calling convention, batch-size rule."""

    def __init__(self) -> None:
        self.conditioners = [
            EspeakConditioner("espeak", None, learned_uncond=False),
            Conditioner("speaker", 128, learned_uncond=True),
            Conditioner("emotion", 8, learned_uncond=True),
            Conditioner("fmax", 1, learned_uncond=True),
            Conditioner("pitch_std", 1, learned_uncond=True),
            Conditioner("speaking_rate", 1, learned_uncond=True),
            Conditioner("language_id", 1, learned_uncond=True),
        ]
        self.required_keys = {c.name for c in self.conditioners if not c.learned_uncond}

    def __call__(self, cond_dict: dict) -> torch.Tensor:
        if not set(cond_dict).issuperset(self.required_keys):
            raise ValueError(f"Missing required keys: {self.required_keys - set(cond_dict)}")
        conds = [c(cond_dict.get(c.name)) for c in self.conditioners]
        max_bsz = max(map(len, conds))
        assert all(c.shape[0] in (max_bsz, 1) for c in conds)
        conds = [c.expand(max_bsz, -1, -1) for c in conds]
        return torch.cat(conds, dim=-2)


def make_cond_dict(
    text: str = "It would be nice to have time for testing, indeed.",
    language: str = "en-us",
    speaker: torch.Tensor | None = None,
    emotion: list[float] = [0.3077, 0.0256, 0.0256, 0.0256, 0.0256, 0.0256, 0.2564, 0.3077],  # noqa: B006
    fmax: float = 22050.0,
    pitch_std: float = 20.0,
    speaking_rate: float = 15.0,
    vqscore_8: list[float] = [0.78] * 8,
    ctc_loss: float = 0.0,
    dnsmos_ovrl: float = 4.0,
    speaker_noised: bool = False,
    unconditional_keys: Iterable[str] = {"vqscore_8", "dnsmos_ovrl"},
    device: torch.device | str = DEFAULT_DEVICE,
) -> dict:
    assert language.lower() in supported_language_codes, "Please pick a supported language"
    language_code_to_id = {lang: i for i, lang in enumerate(supported_language_codes)}
    cond_dict: dict = {
        "espeak": ([text], [language]),
        "speaker": speaker,
        "emotion": emotion,
        "fmax": fmax,
        "pitch_std": pitch_std,
        "speaking_rate": speaking_rate,
        "language_id": language_code_to_id[language],
        "vqscore_8": vqscore_8,
        "ctc_loss": ctc_loss,
        "dnsmos_ovrl": dnsmos_ovrl,
        "speaker_noised": int(speaker_noised),
    }
    for k in unconditional_keys:
        cond_dict.pop(k, None)
    for k, v in cond_dict.items():
        if isinstance(v, (float, int, list)):
            v = torch.tensor(v)
        if isinstance(v, torch.Tensor):
            cond_dict[k] = v.view(1, 1, -1).to(device)
        if k == "emotion":
            cond_dict[k] /= cond_dict[k].sum(dim=-1)
    return cond_dict
