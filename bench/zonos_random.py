"""The real upstream Zonos model, built from a config with random weights (no hub downloads).

Upstream loads everything from the Hugging Face hub (`Zonos.from_pretrained`, the DAC codec
`descript/dac_44khz`, the speaker-embedding network). Here the same classes are constructed
from configs with random weights, so tests run the real code paths on CPU in seconds and a GPU
benchmark measures real-size generation speed (which does not depend on the weights' values
once the number of frames is fixed):

- `Zonos(ZonosConfig.from_dict(...), backbone_cls)`, moved to the device in bfloat16 and passed
  through `load_state_dict` once, exactly as `Zonos.from_local` does (its vocabulary-padding
  hook runs);
- the autoencoder is upstream's `DACAutoencoder` around `DacModel(DacConfig(...))`: its
  constructor asks `DacModel.from_pretrained`, which we answer with the random codec while the
  model is built;
- `speaker_model()` is upstream's `SpeakerEmbeddingLDA` (ResNet293 + log-fbank front end + LDA)
  at a small width; the real one has 99 M parameters and takes ~9 s per clip on CPU.

Full-size numbers. Zonos-v0.1-transformer: d_model 2048, 26 attention layers, 16 heads with 4
key/value heads, MLP width 8192, and the seven conditioners below: from the model's
`config.json` on the Hugging Face hub (Zyphra/Zonos-v0.1-transformer), which the Zonos
repository does not contain; the same numbers are reproduced in independent ports (for example
zonos_mlx's config test and taproot's Zonos defaults). The hybrid (46 layers, Mamba2 plus 12
attention layers) needs the CUDA-only `mamba-ssm` package, so the benchmark's full size is the
transformer, which upstream's pure-torch backbone runs. The codec is DAC 44 kHz
(`descript/dac_44khz`): encoder width 64, decoder width 1536, strides 2/4/8/8 (512-sample hop),
9 codebooks of 1024 codes, codebook dimension 8.
"""

from __future__ import annotations

import copy
import functools
from typing import Any
from unittest import mock

CONDITIONERS: list[dict[str, Any]] = [
    {"type": "EspeakPhonemeConditioner", "name": "espeak"},
    {
        "type": "PassthroughConditioner",
        "name": "speaker",
        "cond_dim": 128,
        "uncond_type": "learned",
        "projection": "linear",
    },
    {"type": "FourierConditioner", "name": "emotion", "input_dim": 8, "uncond_type": "learned"},
    {"type": "FourierConditioner", "name": "fmax", "min_val": 0, "max_val": 24000, "uncond_type": "learned"},
    {"type": "FourierConditioner", "name": "pitch_std", "min_val": 0, "max_val": 400, "uncond_type": "learned"},
    {"type": "FourierConditioner", "name": "speaking_rate", "min_val": 0, "max_val": 40, "uncond_type": "learned"},
    {"type": "IntegerConditioner", "name": "language_id", "min_val": -1, "max_val": 126, "uncond_type": "learned"},
]


def _zonos_config(d_model: int, n_layer: int, heads: int, kv_heads: int, mlp: int) -> dict[str, Any]:
    return {
        "backbone": {
            "d_model": d_model,
            "d_intermediate": 0,
            "attn_mlp_d_intermediate": mlp,
            "n_layer": n_layer,
            "ssm_cfg": {},
            "attn_layer_idx": list(range(n_layer)),
            "attn_cfg": {
                "causal": True,
                "num_heads": heads,
                "num_heads_kv": kv_heads,
                "rotary_emb_dim": d_model // heads,
            },
            "rms_norm": False,
            "residual_in_fp32": False,
            "norm_epsilon": 1e-5,
        },
        "prefix_conditioner": {"conditioners": copy.deepcopy(CONDITIONERS), "projection": "linear"},
        "eos_token_id": 1024,
        "masked_token_id": 1025,
    }


# Zonos-v0.1-transformer at full size (see the module docstring for the source).
FULL = _zonos_config(d_model=2048, n_layer=26, heads=16, kv_heads=4, mlp=8192)
# A few layers of the same architecture: runs the real code paths on CPU at hundreds of frames/s.
SMALL = _zonos_config(d_model=128, n_layer=2, heads=4, kv_heads=2, mlp=256)

DAC_FULL: dict[str, Any] = {
    "encoder_hidden_size": 64,
    "downsampling_ratios": [2, 4, 8, 8],
    "decoder_hidden_size": 1536,
    "n_codebooks": 9,
    "codebook_size": 1024,
    "codebook_dim": 8,
    "sampling_rate": 44100,
}
DAC_SMALL: dict[str, Any] = {**DAC_FULL, "encoder_hidden_size": 8, "decoder_hidden_size": 64}

CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {"small": (SMALL, DAC_SMALL), "full": (FULL, DAC_FULL)}


def build_model(size: str = "small", device: str = "cpu", seed: int = 0) -> Any:
    """Upstream `Zonos` of `size` ("small" or "full") with random weights, ready for inference."""
    import torch
    from transformers import DacConfig, DacModel
    from zonos.backbone import BACKBONES
    from zonos.config import ZonosConfig
    from zonos.model import Zonos

    zonos_config, dac_config = CONFIGS[size]
    torch.manual_seed(seed)
    dac = DacModel(DacConfig(**dac_config))
    # Parameters are created (and randomly initialised) on the target device: at full size (1.6 B
    # parameters) that is seconds on a GPU instead of a minute on the host's CPU.
    with mock.patch.object(DacModel, "from_pretrained", lambda *args, **kwargs: dac), torch.device(device):
        model = Zonos(ZonosConfig.from_dict(zonos_config), BACKBONES["torch"]).to(device, torch.bfloat16)
    model.autoencoder.dac.to(device)
    model.load_state_dict(model.state_dict())  # as from_local does: runs the vocabulary-padding hook
    return model.requires_grad_(False).eval()


def speaker_model(device: str = "cpu", width: int = 8, seed: int = 0) -> Any:
    """Upstream's `SpeakerEmbeddingLDA` architecture at `width` planes (64 in the real one), random weights.

    Set as `model.spk_clone_model`, `Zonos.make_speaker_embedding` runs through it unchanged.
    """
    import torch
    from torch import nn
    from zonos.speaker_cloning import ResNet293_based, SpeakerEmbedding, SpeakerEmbeddingLDA, logFbankCal

    torch.manual_seed(seed)
    embedder = SpeakerEmbedding.__new__(SpeakerEmbedding)
    nn.Module.__init__(embedder)
    embedder.device = device
    embedder.model = ResNet293_based(in_planes=width)
    embedder.model.featCal = logFbankCal()
    lda = SpeakerEmbeddingLDA.__new__(SpeakerEmbeddingLDA)
    nn.Module.__init__(lda)
    lda.device = device
    lda.model = embedder
    lda.lda = nn.Linear(256, 128, bias=True, dtype=torch.float32)
    return lda.to(device).requires_grad_(False).eval()


def cloning_model(size: str = "small", device: str = "cpu") -> Any:
    """`build_model` with upstream's speaker network (`speaker_model`), so clones embed without the hub."""
    model = build_model(size, device)
    model.spk_clone_model = speaker_model(device)
    return model


def small_engine(*, stored_voices: bool = False, **engine_kwargs: Any) -> Any:
    """A `ZonosEngine` (CPU) on the small random-weight model: the engine factory for Serve tests.

    `stored_voices`: clone from the voice store the replica's settings name (VOICES_BACKEND, as the
    real deployment builds it), with the speaker network in the model. Module-level so that
    `functools.partial(small_engine, ...)` pickles by reference to a replica.
    """
    from serve_app.engines.zonos import ZonosEngine

    options: dict[str, Any] = {"device": "cpu", "stop_at_eos": False}
    options.update(engine_kwargs)
    if stored_voices:
        from config.settings import get_settings
        from serve_app.voice_store.factory import build_voice_store

        options.setdefault("voice_store", build_voice_store(get_settings()))
        options.setdefault("model_factory", functools.partial(cloning_model, "small", options["device"]))
    options.setdefault("model_factory", functools.partial(build_model, "small", options["device"]))
    return ZonosEngine(**options)
