"""Reading LAION-CLAP checkpoints (``.pt`` / ``.safetensors``) without unpickling arbitrary objects.

A released LAION-CLAP checkpoint (e.g. ``630k-audioset-best.pt``) is a ``torch.save`` of a dict whose
``"state_dict"`` holds keys like ``module.audio_branch.layers.0...`` (DDP prefix) or
``audio_branch...``; the text side is ``text_branch.*`` (RoBERTa) and ``text_projection.*``.
Everything here goes through ``torch.load(weights_only=True)``: a checkpoint that needs real
unpickling (custom classes) is refused with a :class:`~disse.schemas.SchemaError`, never executed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from disse.schemas.errors import SchemaError
from disse.trainer.model.weights import read_checkpoint

log = logging.getLogger(__name__)



def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint as a flat ``{key: tensor}`` on CPU, wrapper prefixes removed.

    Accepts a plain state dict, ``{"state_dict": ...}`` (LAION-CLAP / lightning) or ``{"model": ...}``, and
    ``.safetensors`` files; read by :func:`disse.trainer.model.weights.read_checkpoint`.
    """
    return read_checkpoint(path).state


def sub_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` (e.g. ``"audio_branch."``) with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@dataclass
class LoadReport:
    """What a partial load did: keys copied, keys the module expected but did not get, extra keys."""

    what: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        lines = [f"{self.what} <- {self.source}: {len(self.loaded)} tensors loaded"]
        if self.missing:
            lines.append(f"  missing (kept at init) {len(self.missing)}: {show(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (not used) {len(self.unexpected)}: {show(self.unexpected)}")
        if self.ignored:
            lines.append(f"  ignored (recomputed, not learned) {len(self.ignored)}: {show(self.ignored)}")
        return "\n".join(lines)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, what: str, source: str,
              ignore_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Copy matching tensors of ``state`` into ``module`` and report missing / unexpected keys.

    A key whose shape differs from the module's is an error (it means the wrong architecture,
    e.g. an HTSAT-base checkpoint for an HTSAT-tiny model). Loading nothing at all is an error too:
    the prefix or the file is wrong. Keys under ``ignore_prefixes`` (constants the module
    recomputes) are neither loaded nor reported as unexpected.
    """
    own = module.state_dict()
    report = LoadReport(what=what, source=source)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ignore_prefixes and key.startswith(ignore_prefixes):
            report.ignored.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            raise SchemaError(f"shape {tuple(value.shape)} in checkpoint, model expects {tuple(own[key].shape)}"
                              f" (wrong model size for this checkpoint?)", file=source, field=key)
        else:
            usable[key] = value
    report.missing = sorted(k for k in own if k not in usable
                            and not (ignore_prefixes and k.startswith(ignore_prefixes)))
    report.unexpected.sort()
    report.ignored.sort()
    report.loaded = sorted(usable)
    if not usable:
        raise SchemaError(f"no tensor of the checkpoint matches the {what} "
                          f"(first keys: {sorted(state)[:5]})", file=source)
    module.load_state_dict(usable, strict=False)
    log.info("%s", report)
    return report


# ---------------------------------------------------------------------------------------------------
# LAION-CLAP HTSAT -> transformers ClapAudioModel (the layout of the official DISSE preset)

# laion-clap module names -> transformers' (as transformers' own CLAP conversion renames them);
# the fused qkv projection is split separately.
_LAION_TO_HF_RENAMES = (
    (".attn.proj.", ".attention.output.dense."),
    (".attn.relative_position_bias_table", ".attention.self.relative_position_bias_table"),
    (".attn.relative_position_index", ".attention.self.relative_position_index"),
    (".norm1.", ".layernorm_before."),
    (".norm2.", ".layernorm_after."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
)
# In a LAION HTSAT state dict but not in ClapAudioModel: the waveform front end (transformers takes
# log-mel input), the AudioSet classifier (not on the path to the pooled embedding) and the shifted-
# window masks (recomputed in forward).
_LAION_NOT_IN_HF = ("spectrogram_extractor.", "logmel_extractor.", "tscam_conv.", "head.")


def laion_htsat_to_clap_audio(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A LAION-CLAP HTSAT state dict (``audio_branch.*`` with the prefix removed) -> the state dict of
    transformers' ``ClapAudioModel`` (keys ``audio_encoder.*``), and the LAION keys left out.

    ``bn0`` -> ``batch_norm``; per Swin block ``norm1/2`` -> ``layernorm_before/after``, ``attn.qkv``
    split in three (query, key, value), ``attn.proj`` -> ``attention.output.dense``, ``mlp.fc1/2`` ->
    ``intermediate.dense`` / ``output.dense``; ``patch_embed``, ``downsample`` and ``norm`` keep their
    names (fused checkpoints' ``fusion_model`` / ``mel_conv2d`` too). The front end, classifier head
    and ``attn_mask`` buffers have no counterpart and are returned as left out.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith(_LAION_NOT_IN_HF) or key.endswith(".attn_mask"):
            dropped.append(key)
            continue
        new = "batch_norm." + key[len("bn0."):] if key.startswith("bn0.") else key
        if ".attn.qkv." in new:
            base, kind = new.split(".attn.qkv.")
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"audio_encoder.{base}.attention.self.{name}.{kind}"] = part.clone()
            continue
        for old, repl in _LAION_TO_HF_RENAMES:
            new = new.replace(old, repl)
        out["audio_encoder." + new] = value
    return out, sorted(dropped)
