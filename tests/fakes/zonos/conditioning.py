"""Test double of `zonos.conditioning`: `make_cond_dict` with the real signature, checks and output.

The real module phonemizes with eSpeak; the double tokenizes characters instead (BOS/EOS added,
left padding with PAD like `tokenize_phonemes`), which keeps lengths proportional to the text.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from zonos.utils import DEFAULT_DEVICE

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

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


def tokenize_phonemes(texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    ids = [[BOS_ID, *(4 + (ord(c) % 100) for c in text if not c.isspace()), EOS_ID] for text in texts]
    lengths = [len(i) for i in ids]
    longest = max(lengths)
    return torch.tensor([[PAD_ID] * (longest - len(i)) + i for i in ids]), lengths


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
