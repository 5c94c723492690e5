"""DELSA audio side: HTSAT source branch, intensity-vector CNN spatial branch, fusion.

``AudioEncoder(cfg, out_dim)(waveform (B, T), iv (B, 6, F, M)) -> ((B, out_dim), spatial)``: the shared
audio embedding and the spatial branch's outputs (trainer/model/spatial.py).

The HTSAT is transformers' ``ClapAudioModel`` with laion-clap's HTSAT-{tiny,base} architecture and
front end (trainer/model/htsat.py), the class the official DISSE preset uses too; released LAION-CLAP
checkpoints load through a key mapping. laion-clap is not imported at run time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from disse.trainer.model.htsat import (FFTSpectrogram, HTSATBranch, HTSATConfig, htsat_arch,  # noqa: F401  (re-exported)
                                 htsat_audio_cfg)
from disse.schemas.errors import SchemaError
from disse.trainer.model.spatial import ROOM_STATS_DIM, SpatialBranch, SpatialConfig, mlp  # noqa: F401  (re-exported)
from disse.trainer.model.physics import iv_to_float


@dataclass
class AudioConfig:
    htsat: HTSATConfig = field(default_factory=HTSATConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    fusion_hidden: list[int] = field(default_factory=lambda: [1024])  # concat(htsat, spatial) -> hidden... -> shared
    dropout: float = 0.0
    # the fusion (the source embedding's input) also reads the full batch-normalised room statistics: with
    # ``spatial.room_dim`` the spatial features keep only a few room summaries, and the source side would lose the
    # band levels and onsets of W that help it name the sound (docs/spatial.md, leakage ablation)
    fusion_room_stats: bool = False


PCM16_SCALE = 2.0 ** -15  # int16 sample -> float in [-1, 1), the inverse of schemas.shard.w_to_pcm16


def audio_inputs_as_float(waveform: torch.Tensor, iv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches carry W as int16 PCM and the features as int8 q / 127 or float16 (a half or a quarter
    of float32's bytes through the loader's shared memory and to the GPU); the model computes in
    float32. Float inputs pass unchanged.

    ``waveform (B, T)`` int16 or float, ``iv (B, 6, F, M)`` int8 or any float -> both float32 (same device).
    """
    if waveform.dtype == torch.int16:
        waveform = waveform.float() * PCM16_SCALE
    elif not waveform.is_floating_point():
        raise TypeError(f"waveform must be int16 PCM or floating point, got {waveform.dtype}")
    return waveform.float(), iv_to_float(iv)


class AudioEncoder(nn.Module):
    """``(waveform (B, T), iv (B, 6, F, M)) -> (B, out_dim)`` shared audio embedding (not normalised).

    ``waveform``: int16 PCM (as batches carry it) or float in +-1; ``iv``: float16 or float32.
    """

    def __init__(self, cfg: AudioConfig, out_dim: int) -> None:
        super().__init__()
        self.source = HTSATBranch(cfg.htsat)
        self.spatial = SpatialBranch(cfg.spatial)
        # Each branch is layer-normalised before the concat: HTSAT's pooled output is about twice the
        # spatial branch's norm at init, and without this the fusion MLP follows the source branch and
        # the spatial side (direction, SPA) learns several times slower (measured on the demo).
        self.norm_source = nn.LayerNorm(self.source.out_dim)
        self.norm_spatial = nn.LayerNorm(self.spatial.out_dim)
        if cfg.fusion_room_stats and not cfg.spatial.room_stats:
            raise SchemaError("needs model.audio.spatial.room_stats: true", field="model.audio.fusion_room_stats")
        self.fusion_room_stats = cfg.fusion_room_stats
        room = ROOM_STATS_DIM if cfg.fusion_room_stats else 0
        self.fusion = mlp([self.source.out_dim + self.spatial.out_dim + room, *cfg.fusion_hidden, out_dim], cfg.dropout)

    def forward(self, waveform: torch.Tensor, iv: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """-> ``(shared (B, out_dim), spatial)``; ``spatial`` is :meth:`SpatialBranch.forward`'s dict
        (``features`` before the layer norm, ``direction`` or None) plus ``normed`` (after it)."""
        waveform, iv = audio_inputs_as_float(waveform, iv)
        source = self.norm_source(self.source(waveform))
        spatial = self.spatial(iv, waveform)
        spatial["normed"] = self.norm_spatial(spatial["features"])
        parts = [source, spatial["normed"]] + ([spatial["room"]] if self.fusion_room_stats else [])
        return self.fusion(torch.cat(parts, dim=1)), spatial
