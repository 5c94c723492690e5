"""DELSA audio side: HTSAT source branch (laion-clap), intensity-vector CNN spatial branch, fusion.

``AudioEncoder(cfg, out_dim)(waveform (B, T), iv (B, 6, F, M)) -> ((B, out_dim), spatial)``: the shared
audio embedding and the spatial branch's outputs (trainer/spatial.py).

The HTSAT is laion-clap's own ``HTSAT_Swin_Transformer``, built by ``create_htsat_model`` with the
package's ``model_configs/HTSAT-{tiny,base}.json`` audio config (so released LAION-CLAP checkpoints
load), or, when sizes are overridden in the config (the CPU demo), by the same class with those sizes.
laion-clap's package ``__init__`` imports its training code, which fetches tokenizers from the
Hugging Face hub at import time; :func:`laion_clap_module` therefore loads single files of
``laion_clap/clap_module`` under a private package name without running that ``__init__``.
Never ``import laion_clap`` in DISSE.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from disse.schemas.errors import SchemaError
from disse.trainer.clap_checkpoint import LoadReport, load_into, read_state_dict, sub_state_dict
from disse.trainer.spatial import SpatialBranch, SpatialConfig, mlp  # noqa: F401  (re-exported)

_PRIVATE_PKG = "_disse_laion_clap_module"

# Architecture of laion-clap's create_htsat_model presets (laion_clap/clap_module/htsat.py).
_PRESETS = {
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[4, 8, 16, 32], window_size=8, spec_size=256),
    "base": dict(embed_dim=128, depths=[2, 2, 12, 2], num_heads=[4, 8, 16, 32], window_size=8, spec_size=256),
}
_PATCH = 4  # patch size and stride of every laion-clap HTSAT

# Sub-modules of HTSAT that are not on the path to its pooled "embedding" (they feed the AudioSet
# clipwise output only). Frozen so that every trainable parameter receives a gradient (DDP needs
# that) while their weights still load from a checkpoint.
_HTSAT_UNUSED = ("tscam_conv.", "head.")
# Fixed DFT kernels of torchlibrosa's STFT: recomputed by FFTSpectrogram, never learned.
_HTSAT_STFT_KEYS = ("spectrogram_extractor.",)


def laion_clap_dir() -> Path:
    """Folder of laion-clap's ``clap_module`` (found without importing the package)."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or spec.origin is None:
        raise SchemaError("the laion-clap package is not installed (pip install laion-clap==1.1.7)")
    return Path(spec.origin).parent / "clap_module"


def laion_clap_module(name: str) -> types.ModuleType:
    """``laion_clap.clap_module.<name>`` loaded without laion-clap's network-touching ``__init__``."""
    if _PRIVATE_PKG not in sys.modules:
        pkg = types.ModuleType(_PRIVATE_PKG)
        pkg.__path__ = [str(laion_clap_dir())]  # submodules resolve inside clap_module/
        pkg.__package__ = _PRIVATE_PKG
        sys.modules[_PRIVATE_PKG] = pkg
    return importlib.import_module(f"{_PRIVATE_PKG}.{name}")


@dataclass
class HTSATConfig:
    """HTSAT source branch. ``preset`` picks laion-clap's architecture; any size set here overrides it.

    With no override the model is exactly laion-clap's ``create_htsat_model`` (checkpoint-compatible).
    Pooled embedding size = ``embed_dim * 2 ** (len(depths) - 1)`` (768 for tiny, 1024 for base).
    """

    preset: str = "tiny"                 # "tiny" | "base" (laion_clap model_configs/HTSAT-<preset>.json)
    checkpoint: str | None = None        # local LAION-CLAP .pt / .safetensors; None = random init
    freeze: bool = False                 # no gradient, eval mode (BN stats, no SpecAugment)
    fft_stft: bool = True                # torch.stft instead of torchlibrosa's DFT-as-conv (same values, ~50x fewer FLOPs)
    spec_augment: bool = True            # laion-clap's SpecAugment in training (2 time + 2 freq stripes, 8 mel wide)
    embed_dim: int | None = None
    depths: list[int] | None = None
    num_heads: list[int] | None = None
    window_size: int | None = None       # attention window, in patches
    spec_size: int | None = None         # HTSAT "image" side; spec_size / mel_bins time folds
    mel_bins: int | None = None
    n_fft: int | None = None             # STFT window, samples at 48 kHz
    hop_size: int | None = None          # STFT hop, samples
    fmin: float | None = None            # Hz
    fmax: float | None = None            # Hz
    drop_path_rate: float = 0.1          # laion-clap's default


_OVERRIDES = ("embed_dim", "depths", "num_heads", "window_size", "spec_size",
              "mel_bins", "n_fft", "hop_size", "fmin", "fmax")


def htsat_audio_cfg(cfg: HTSATConfig) -> dict:
    """laion-clap ``audio_cfg`` (json) with this config's STFT / mel overrides applied."""
    if cfg.preset not in _PRESETS:
        raise SchemaError(f"unknown HTSAT preset {cfg.preset!r}; use one of {sorted(_PRESETS)}",
                          field="model.audio.htsat.preset")
    with open(laion_clap_dir() / "model_configs" / f"HTSAT-{cfg.preset}.json") as f:
        audio = dict(json.load(f)["audio_cfg"])
    for ours, theirs in (("mel_bins", "mel_bins"), ("n_fft", "window_size"), ("hop_size", "hop_size"),
                         ("fmin", "fmin"), ("fmax", "fmax")):
        if getattr(cfg, ours) is not None:
            audio[theirs] = getattr(cfg, ours)
    return audio


def htsat_arch(cfg: HTSATConfig) -> dict:
    """Resolved Swin sizes (preset + overrides), checked so that a bad size is a config error."""
    arch = dict(_PRESETS.get(cfg.preset, _PRESETS["tiny"]))
    for key in ("embed_dim", "depths", "num_heads", "window_size", "spec_size"):
        if getattr(cfg, key) is not None:
            arch[key] = getattr(cfg, key)
    audio = htsat_audio_cfg(cfg)
    where = "model.audio.htsat"
    n = len(arch["depths"])
    if len(arch["num_heads"]) != n:
        raise SchemaError("depths and num_heads must have the same length", field=f"{where}.num_heads")
    for i, h in enumerate(arch["num_heads"]):
        if (arch["embed_dim"] * 2 ** i) % h:
            raise SchemaError(f"stage {i} width {arch['embed_dim'] * 2 ** i} not divisible by {h} heads",
                              field=f"{where}.num_heads")
    spec, mel = arch["spec_size"], audio["mel_bins"]
    if spec % mel or spec // mel < 1:
        raise SchemaError(f"spec_size {spec} must be a multiple of mel_bins {mel}", field=f"{where}.spec_size")
    freq_ratio = spec // mel
    frames = audio["clip_samples"] // audio["hop_size"] + 1
    if frames > spec * freq_ratio:
        raise SchemaError(f"{frames} STFT frames do not fit spec_size*spec_size/mel_bins = {spec * freq_ratio}; "
                          "raise hop_size or spec_size", field=f"{where}.hop_size")
    if spec // 2 ** (n - 1) // _PATCH // freq_ratio < 1:
        raise SchemaError("too few frequency patches at the last stage: raise spec_size or use fewer stages",
                          field=f"{where}.depths")
    return arch


class FFTSpectrogram(nn.Module):
    """Power spectrogram equal to torchlibrosa's ``Spectrogram`` (hann, centred, reflect pad), by FFT.

    Input ``(B, T)``; output ``(B, 1, frames, n_fft // 2 + 1)`` like torchlibrosa.
    """

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x.float(), self.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        return (spec.real ** 2 + spec.imag ** 2).transpose(1, 2)[:, None]


def build_htsat(cfg: HTSATConfig) -> nn.Module:
    """laion-clap's HTSAT (random init) for this config; see :class:`HTSATConfig`."""
    htsat = laion_clap_module("htsat")
    arch = htsat_arch(cfg)
    audio = types.SimpleNamespace(**htsat_audio_cfg(cfg))
    overridden = any(getattr(cfg, k) is not None for k in _OVERRIDES)
    with warnings.catch_warnings():
        # laion-clap's Swin blocks call torch.meshgrid without `indexing` (its default, "ij", is what
        # they need); the deprecation notice is about their code, not something a user can act on
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
        if not overridden and cfg.drop_path_rate == 0.1:
            return htsat.create_htsat_model(audio)  # the exact LAION-CLAP audio branch
        return htsat.HTSAT_Swin_Transformer(
            spec_size=arch["spec_size"], patch_size=_PATCH, patch_stride=(_PATCH, _PATCH),
            num_classes=audio.class_num, embed_dim=arch["embed_dim"], depths=arch["depths"],
            num_heads=arch["num_heads"], window_size=arch["window_size"], config=audio,
            drop_path_rate=cfg.drop_path_rate)


class HTSATBranch(nn.Module):
    """W channel ``(B, T)`` at 48 kHz -> HTSAT pooled embedding ``(B, out_dim)``."""

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.htsat = build_htsat(cfg)
        self.out_dim = int(self.htsat.num_features)
        if cfg.fft_stft:
            ext = self.htsat.spectrogram_extractor.stft
            self.htsat.spectrogram_extractor = FFTSpectrogram(ext.n_fft, ext.hop_length)
        if not cfg.spec_augment:
            self.htsat.spec_augmenter = nn.Identity()
        for name, p in self.htsat.named_parameters():
            if name.startswith(_HTSAT_UNUSED):
                p.requires_grad_(False)
        self.load_report: LoadReport | None = None
        if cfg.checkpoint:
            self.load_checkpoint(cfg.checkpoint)
        if cfg.freeze:
            for p in self.htsat.parameters():
                p.requires_grad_(False)

    def load_checkpoint(self, path: str) -> LoadReport:
        """Load the ``audio_branch.*`` tensors of a LAION-CLAP checkpoint; returns the key report."""
        state = sub_state_dict(read_state_dict(path), "audio_branch.")
        if not state:
            raise SchemaError("no 'audio_branch.*' keys: not a LAION-CLAP checkpoint", file=str(path))
        ignore = _HTSAT_STFT_KEYS if self.cfg.fft_stft else ()
        self.load_report = load_into(self.htsat, state, what="HTSAT audio branch", source=str(path),
                                     ignore_prefixes=ignore)
        return self.load_report

    def train(self, mode: bool = True) -> "HTSATBranch":
        super().train(mode)
        if self.cfg.freeze:
            self.htsat.eval()  # a frozen backbone keeps its BN statistics and skips SpecAugment
        return self

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"waveform must be (B, T) mono W channel, got {tuple(waveform.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze):
            return self.htsat({"waveform": waveform})["embedding"]


@dataclass
class AudioConfig:
    htsat: HTSATConfig = field(default_factory=HTSATConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    fusion_hidden: list[int] = field(default_factory=lambda: [1024])  # concat(htsat, spatial) -> hidden... -> shared
    dropout: float = 0.0


PCM16_SCALE = 2.0 ** -15  # int16 sample -> float in [-1, 1), the inverse of schemas.shard.w_to_pcm16


def audio_inputs_as_float(waveform: torch.Tensor, iv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches carry W as int16 PCM and the features as float16 (half the bytes through the loader's
    shared memory and to the GPU); the model computes in float32. Float inputs pass unchanged.

    ``waveform (B, T)`` int16 or float, ``iv (B, 6, F, M)`` any float -> both float32 (same device).
    """
    if waveform.dtype == torch.int16:
        waveform = waveform.float() * PCM16_SCALE
    elif not waveform.is_floating_point():
        raise TypeError(f"waveform must be int16 PCM or floating point, got {waveform.dtype}")
    return waveform.float(), iv.float()


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
        self.fusion = mlp([self.source.out_dim + self.spatial.out_dim, *cfg.fusion_hidden, out_dim], cfg.dropout)

    def forward(self, waveform: torch.Tensor, iv: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """-> ``(shared (B, out_dim), spatial)``; ``spatial`` is :meth:`SpatialBranch.forward`'s dict
        (``features`` before the layer norm, ``direction`` or None) plus ``normed`` (after it)."""
        waveform, iv = audio_inputs_as_float(waveform, iv)
        source = self.norm_source(self.source(waveform))
        spatial = self.spatial(iv, waveform)
        spatial["normed"] = self.norm_spatial(spatial["features"])
        return self.fusion(torch.cat([source, spatial["normed"]], dim=1)), spatial
