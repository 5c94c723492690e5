"""HTSAT source branch on transformers' ``ClapAudioModel``: one HTSAT implementation for every preset.

``HTSATBranch(cfg)(waveform (B, T) at 48 kHz) -> (B, out_dim)``: the pooled HTSAT embedding.

* Front end (:class:`LogMel`): power spectrogram by FFT (Hann, centred, reflect padding) -> Slaney
  mel filterbank -> ``10 log10(max(x, 1e-10))``, i.e. exactly laion-clap's torchlibrosa front end,
  computed in torch (the filterbank from ``transformers.audio_utils``, no librosa).
* Backbone: transformers' ``ClapAudioModel`` (input batch norm over mel bins, Swin stages, pooled
  ``pooler_output``), the class the official DISSE preset uses (trainer/model/official.py).
  :data:`LAION_AUDIO_CFG` and :data:`PRESETS` are laion-clap's ``HTSAT-{tiny,base}`` values, written here.
* Two laion-clap behaviours ``ClapAudioModel`` lacks are restored: a stage smaller than the attention
  window gets a window of its own size (laion-clap shrinks the window there; transformers keeps the
  configured tables), and SpecAugment runs after the input batch norm (a forward hook), in training.
* LAION-CLAP checkpoints (``audio_branch.*``) load through
  :func:`disse.trainer.model.clap_checkpoint.laion_htsat_to_clap_audio`; a DISSE checkpoint saved with the
  earlier laion-clap backbone is mapped the same way when loaded.

laion-clap itself is no longer imported at run time; the tests use it as the reference
implementation (tests/test_clap_checkpoint.py: same weights, same embedding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import ClapAudioConfig, ClapAudioModel
from transformers.audio_utils import mel_filter_bank
from transformers.models.clap.modeling_clap import ClapAudioAttention, ClapAudioSelfAttention

from disse.schemas.errors import SchemaError
from disse.trainer.model.clap_checkpoint import LoadReport, laion_htsat_to_clap_audio, load_into, read_state_dict, \
    sub_state_dict
from disse.trainer.model.hf import quiet_transformers

# laion-clap model_configs/HTSAT-{tiny,base}.json "audio_cfg" (identical for both presets).
LAION_AUDIO_CFG: dict[str, Any] = {"clip_samples": 480000, "mel_bins": 64, "sample_rate": 48000,
                                   "window_size": 1024, "hop_size": 480, "fmin": 50, "fmax": 14000}
# Swin sizes of laion-clap's create_htsat_model presets (laion_clap/clap_module/htsat.py).
PRESETS = {
    "tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[4, 8, 16, 32], window_size=8, spec_size=256),
    "base": dict(embed_dim=128, depths=[2, 2, 12, 2], num_heads=[4, 8, 16, 32], window_size=8, spec_size=256),
}
PATCH = 4  # patch size and stride of every HTSAT
# laion-clap's SpecAugmentation: 2 time stripes up to 64 frames, 2 frequency stripes up to 8 mel bins
SPEC_AUGMENT = dict(time_width=64, time_stripes=2, freq_width=8, freq_stripes=2)


@dataclass
class HTSATConfig:
    """HTSAT source branch. ``preset`` picks laion-clap's architecture; any size set here overrides it.

    With no override the model is laion-clap's HTSAT-<preset> (LAION-CLAP checkpoints load).
    Pooled embedding size = ``embed_dim * 2 ** (len(depths) - 1)`` (768 for tiny, 1024 for base).
    """

    preset: str = "tiny"                 # "tiny" | "base"
    checkpoint: str | None = None        # local LAION-CLAP .pt / .safetensors; None = random init
    freeze: bool = False                 # no gradient, eval mode (BN stats, no SpecAugment)
    fft_stft: bool = True                # the spectrogram is always computed by FFT (kept for old configs)
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


def htsat_audio_cfg(cfg: HTSATConfig) -> dict:
    """laion-clap ``audio_cfg`` values with this config's STFT / mel overrides applied."""
    if cfg.preset not in PRESETS:
        raise SchemaError(f"unknown HTSAT preset {cfg.preset!r}; use one of {sorted(PRESETS)}",
                          field="model.audio.htsat.preset")
    audio = dict(LAION_AUDIO_CFG)
    for ours, theirs in (("mel_bins", "mel_bins"), ("n_fft", "window_size"), ("hop_size", "hop_size"),
                         ("fmin", "fmin"), ("fmax", "fmax")):
        if getattr(cfg, ours) is not None:
            audio[theirs] = getattr(cfg, ours)
    return audio


def htsat_arch(cfg: HTSATConfig) -> dict:
    """Resolved Swin sizes (preset + overrides), checked so that a bad size is a config error."""
    arch = dict(PRESETS.get(cfg.preset, PRESETS["tiny"]))
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
    if spec // 2 ** (n - 1) // PATCH // freq_ratio < 1:
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


def slaney_mel(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filterbank ``(n_fft // 2 + 1, n_mels)`` (librosa's default)."""
    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=fmin,
                         max_frequency=fmax, sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
    return torch.as_tensor(fb, dtype=torch.float32)


class LogMel(nn.Module):
    """``(B, T)`` waveform -> ``(B, 1, frames, n_mels)`` log-mel in dB (ref 1, amin 1e-10, no top_db)."""

    def __init__(self, audio: dict) -> None:
        super().__init__()
        self.spectrogram = FFTSpectrogram(int(audio["window_size"]), int(audio["hop_size"]))
        self.register_buffer("mel", slaney_mel(int(audio["sample_rate"]), int(audio["window_size"]),
                                               int(audio["mel_bins"]), float(audio["fmin"]), float(audio["fmax"])),
                             persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        power = self.spectrogram(waveform)
        return 10.0 * torch.log10(torch.clamp(power @ self.mel, min=1e-10))


def drop_stripes(x: torch.Tensor, dim: int, width: int, stripes: int) -> torch.Tensor:
    """Zero ``stripes`` random bands of up to ``width`` along ``dim`` of ``(B, C, T, F)``, per item
    (torchlibrosa's ``DropStripes``)."""
    total = x.shape[dim]
    keep = torch.ones(x.shape[0], total, device=x.device, dtype=x.dtype)
    for b in range(x.shape[0]):
        for _ in range(stripes):
            w = int(torch.randint(0, width, (1,)))
            start = int(torch.randint(0, max(1, total - w), (1,)))
            keep[b, start:start + w] = 0
    shape = [x.shape[0], 1, 1, 1]
    shape[dim] = total
    return x * keep.view(shape)


def _laion_init(model: nn.Module) -> None:
    """laion-clap's HTSAT initialisation: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0),
    relative-position tables trunc-normal(0.02), convolutions and batch norms PyTorch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()
        if isinstance(m, ClapAudioSelfAttention):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)


def build_htsat(cfg: HTSATConfig) -> nn.Module:
    """transformers ``ClapAudioModel`` for this config (laion-clap's architecture and init)."""
    quiet_transformers()
    arch, audio = htsat_arch(cfg), htsat_audio_cfg(cfg)
    n = len(arch["depths"])
    config = ClapAudioConfig(
        spec_size=arch["spec_size"], num_mel_bins=audio["mel_bins"], patch_size=PATCH, patch_stride=[PATCH, PATCH],
        patch_embeds_hidden_size=arch["embed_dim"], hidden_size=arch["embed_dim"] * 2 ** (n - 1),
        depths=list(arch["depths"]), num_attention_heads=list(arch["num_heads"]), num_hidden_layers=n,
        window_size=arch["window_size"], enable_fusion=False, drop_path_rate=cfg.drop_path_rate,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True, mlp_ratio=4.0,
        layer_norm_eps=1e-5, hidden_act="gelu", num_classes=527)
    model = ClapAudioModel(config)
    enc = model.audio_encoder
    for i, stage in enumerate(enc.layers):  # laion-clap: a stage smaller than the window attends over all of it
        side = min(enc.input_resolutions[i])
        if side < config.window_size:
            for block in stage.blocks:
                block.attention = ClapAudioAttention(config, config.patch_embeds_hidden_size * 2 ** i,
                                                     config.num_attention_heads[i], window_size=side)
                block.window_size, block.shift_size = side, 0
    _laion_init(model)
    return model


def _is_laion_layout(keys: list[str]) -> bool:
    return any(k.startswith(("bn0.", "layers.", "patch_embed.", "spectrogram_extractor.", "logmel_extractor."))
               for k in keys)


class HTSATBranch(nn.Module):
    """W channel ``(B, T)`` at 48 kHz -> HTSAT pooled embedding ``(B, out_dim)``."""

    def __init__(self, cfg: HTSATConfig) -> None:
        super().__init__()
        if not cfg.fft_stft:
            raise SchemaError("the spectrogram is computed by FFT only (torchlibrosa's DFT convolution gives the "
                              "same values); set fft_stft: true", field="model.audio.htsat.fft_stft")
        self.cfg = cfg
        self.front = LogMel(htsat_audio_cfg(cfg))
        self.htsat = build_htsat(cfg)
        self.out_dim = int(self.htsat.config.hidden_size)
        self.htsat.audio_encoder.batch_norm.register_forward_hook(self._spec_augment)
        self.register_load_state_dict_pre_hook(self._map_laion_layout)
        self.load_report: LoadReport | None = None
        if cfg.checkpoint:
            self.load_checkpoint(cfg.checkpoint)
        if cfg.freeze:
            for p in self.htsat.parameters():
                p.requires_grad_(False)

    def _spec_augment(self, _module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor | None:
        """After the input batch norm (output ``(B, mel, T, C)``), in training: laion-clap's SpecAugment."""
        if not (self.training and self.cfg.spec_augment and not self.cfg.freeze):
            return None
        x = out.transpose(1, 3)                                        # (B, C, T, mel)
        x = drop_stripes(x, 2, SPEC_AUGMENT["time_width"], SPEC_AUGMENT["time_stripes"])
        x = drop_stripes(x, 3, SPEC_AUGMENT["freq_width"], SPEC_AUGMENT["freq_stripes"])
        return x.transpose(1, 3)

    @staticmethod
    def _map_laion_layout(module: nn.Module, state_dict: dict, prefix: str, *_args: Any) -> None:
        """A DISSE checkpoint saved with laion-clap's HTSAT (``<prefix>htsat.layers...``) -> this layout."""
        head = prefix + "htsat."
        keys = [k[len(head):] for k in state_dict if k.startswith(head)]
        if not keys or not _is_laion_layout(keys):
            return
        old = {k: state_dict.pop(head + k) for k in keys}
        mapped, _dropped = laion_htsat_to_clap_audio(old)  # front-end constants, classifier, masks: recomputed
        state_dict.update({head + k: v for k, v in mapped.items()})

    def load_checkpoint(self, path: str) -> LoadReport:
        """Load the ``audio_branch.*`` tensors of a LAION-CLAP checkpoint; returns the key report."""
        state = sub_state_dict(read_state_dict(path), "audio_branch.")
        if not state:
            raise SchemaError("no 'audio_branch.*' keys: not a LAION-CLAP checkpoint", file=str(path))
        mapped, dropped = laion_htsat_to_clap_audio(state)
        self.load_report = load_into(self.htsat, mapped, what="HTSAT audio branch", source=str(path))
        self.load_report.ignored = dropped
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
            return self.htsat(input_features=self.front(waveform)).pooler_output
