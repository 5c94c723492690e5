"""DELSA: dual-embedding (source / space) spatial audio-text model with physical heads (DESIGN.md).

Audio: HTSAT(W) (+) spatial branch(intensity vectors, W) -> fusion MLP -> shared (512) -> source head
(512) and space head (256). Physical heads (area, distance, T30) read the space head's output (and,
with ``phys_input="space+spatial"``, the spatial branch's features); the direction is the spatial
branch's intensity-attention estimate (trainer/model/spatial.py), or a head on the space embedding with
``audio.spatial.direction="head"``.
Text: sentence encoder -> shared (512) -> source head and space head of the same sizes.
Embeddings are L2-normalised; two learnable log temperatures (source pair, space pair).

``text_input`` says which caption each text head reads: ``"separate"`` (default) - the source head
reads ``source_text`` and the space head reads ``space_text``; ``"full"`` - both read the full
spatialised ``caption``, as in the paper. :meth:`DELSA.text_pairs` / :meth:`DELSA.encode_batch_text`
apply it, so the trainer and the evaluator need not know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from disse.schemas.errors import SchemaError
from disse.trainer.model.adversary import SourceAdversary, SourceCritic
from disse.trainer.model.audio_encoder import AudioConfig, AudioEncoder, HTSATConfig, SpatialConfig, mlp
from disse.trainer.model.official import OfficialConfig
from disse.trainer.model.physics import SCALARS
from disse.trainer.model.spatial import ROOM_STATS_DIM
from disse.trainer.model.text_encoder import TextConfig, TextEncoder, Tokenizer

__all__ = ["ModelConfig", "AudioConfig", "HTSATConfig", "SpatialConfig", "TextConfig", "DELSA", "TEXT_INPUTS"]

TEXT_INPUTS = ("separate", "full")
PHYS_INPUTS = ("space", "space+spatial")
SPACE_INPUTS = ("fused", "spatial")


@dataclass
class ModelConfig:
    """The ``model:`` section of configs/{demo,paper}.yaml (``preset: official``: configs/official.yaml)."""

    # "project" (DELSA, the fields below) | "official" (the release's DISSEOfficial, built from ``official``)
    preset: str = "project"
    official: OfficialConfig = field(default_factory=OfficialConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    shared_dim: int = 512          # fused audio / projected text embedding
    source_dim: int = 512          # source embedding (both modalities)
    space_dim: int = 256           # spatial embedding (both modalities)
    head_hidden: int = 512         # hidden width of the source / space heads; 0 = a single linear layer
    phys_hidden: int = 128         # hidden width of each physical head
    dropout: float = 0.0           # in the source / space heads (fusion: audio.dropout)
    text_input: str = "separate"   # "separate" | "full" (see module docstring)
    # what the scalar physical heads read: the spatial embedding ("space", DESIGN.md) or it, the
    # spatial branch's features and its room statistics ("space+spatial": the physics reaches them unmixed)
    phys_input: str = "space"
    # what the audio space head reads: the fused embedding ("fused", DESIGN.md) or the spatial branch
    # alone ("spatial": intensity vectors and W's room statistics, no HTSAT), so the spatial audio
    # embedding cannot carry what is sounding
    space_input: str = "fused"
    init_temperature: float = 0.07  # CLIP's: logit scale starts at ln(1 / 0.07)
    # {attribute: [labels]} of the caption rule table: one cosine classifier per attribute, shared by
    # the audio and the text space embeddings (loss.descriptor_weight). The trainer fills it from the
    # rule table when that weight is > 0; empty = no classifiers.
    descriptor_classes: dict = field(default_factory=dict)
    # > 0: a source classifier over this many hashed source-id classes reads the audio spatial embedding
    # through gradient reversal (trainer/model/adversary.py; loss.source_adversary_weight); 0 = none
    source_adversary_buckets: int = 0
    source_adversary_hidden: int = 256
    # > 0: a critic with this hidden width predicts the audio source embedding from the audio spatial
    # embedding through gradient reversal (trainer/model/adversary.py; loss.source_critic_weight); 0 = none
    source_critic_hidden: int = 0


class DescriptorClassifier(nn.Module):
    """Cosine classifier ``(B, D)`` unit vectors -> ``(B, n)`` logits = scale * cos(x, w_k), scale
    fixed at 10 (unit-norm inputs: a learnable scale would only trade off against the weights)."""

    def __init__(self, dim: int, n: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x.float(), dim=-1) @ F.normalize(self.weight, dim=-1).T


def _head(cfg: ModelConfig, out_dim: int, in_dim: int | None = None) -> nn.Sequential:
    in_dim = cfg.shared_dim if in_dim is None else in_dim
    dims = [in_dim, cfg.head_hidden, out_dim] if cfg.head_hidden else [in_dim, out_dim]
    return mlp(dims, cfg.dropout)


class DELSA(nn.Module):
    """See the module docstring; contract in docs/internals.md (Model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.text_input not in TEXT_INPUTS:
            raise SchemaError(f"must be one of {list(TEXT_INPUTS)}, got {cfg.text_input!r}", field="model.text_input")
        if not 0 < cfg.init_temperature < 1:
            raise SchemaError("must be in (0, 1)", field="model.init_temperature")
        self.cfg = cfg
        self.audio = AudioEncoder(cfg.audio, cfg.shared_dim)
        self.text = TextEncoder(cfg.text, cfg.shared_dim)
        self.tokenizer = Tokenizer(cfg.text)
        self.audio_source_head = _head(cfg, cfg.source_dim)
        if cfg.space_input not in SPACE_INPUTS:
            raise SchemaError(f"must be one of {list(SPACE_INPUTS)}, got {cfg.space_input!r}", field="model.space_input")
        self.audio_space_head = _head(cfg, cfg.space_dim,
                                      cfg.audio.spatial.out_dim if cfg.space_input == "spatial" else None)
        self.text_source_head = _head(cfg, cfg.source_dim)
        self.text_space_head = _head(cfg, cfg.space_dim)
        if cfg.phys_input not in PHYS_INPUTS:
            raise SchemaError(f"must be one of {list(PHYS_INPUTS)}, got {cfg.phys_input!r}", field="model.phys_input")
        # With the intensity-attention direction the spatial branch predicts it; no head is built
        # (a parameter without gradient would stall DDP).
        heads = SCALARS if cfg.audio.spatial.direction == "attention" else ("direction", *SCALARS)
        phys_in = cfg.space_dim
        if cfg.phys_input == "space+spatial":
            phys_in += cfg.audio.spatial.out_dim + (ROOM_STATS_DIM if cfg.audio.spatial.room_stats else 0)
        self.phys_heads = nn.ModuleDict({
            name: mlp([phys_in, cfg.phys_hidden, 3 if name == "direction" else 1]) for name in heads})
        # One linear classifier per descriptor, applied to the audio AND the text space embedding:
        # both modalities must put each label in the same half-spaces, which is what zero-shot
        # classification with text prototypes asks of them (docs/spatial.md).
        self.descriptor_heads = nn.ModuleDict({
            attr: DescriptorClassifier(cfg.space_dim, len(labels)) for attr, labels in sorted(cfg.descriptor_classes.items())})
        self.source_adversary = (SourceAdversary(cfg.space_dim, cfg.source_adversary_buckets,
                                                 cfg.source_adversary_hidden)
                                 if cfg.source_adversary_buckets > 0 else None)
        self.source_critic = (SourceCritic(cfg.space_dim, cfg.source_dim, cfg.source_critic_hidden)
                              if cfg.source_critic_hidden > 0 else None)
        init = math.log(1.0 / cfg.init_temperature)
        self.logit_scale_source = nn.Parameter(torch.tensor(init))
        self.logit_scale_space = nn.Parameter(torch.tensor(init))

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``texts -> {"input_ids", "attention_mask"}`` (B, L) int64 on CPU."""
        return self.tokenizer(texts)

    def text_pairs(self, batch: dict) -> tuple[list[str], list[str]]:
        """The strings the (source head, space head) read for a Batch, per ``cfg.text_input``."""
        if self.cfg.text_input == "full":
            # training batches may carry spatial-only captions for the space head (DataConfig.space_caption_drop)
            return list(batch["caption"]), list(batch.get("space_head_text", batch["caption"]))
        return list(batch["source_text"]), list(batch["space_text"])

    def encode_text(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every row through both heads -> ``{"source": (B, source_dim), "space": (B, space_dim)}``, L2-normalised."""
        shared = self.text(tokens)
        return {"source": F.normalize(self.text_source_head(shared), dim=-1),
                "space": F.normalize(self.text_space_head(shared), dim=-1)}

    def encode_batch_text(self, batch: dict, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Text embeddings of a Batch honouring ``text_input``, with one backbone pass.

        ``"full"``: the caption once, both heads. ``"separate"`` (or a training batch whose space
        head reads some spatial-only captions): source and space-head texts stacked (2B rows),
        source head kept for the first B, space head for the last B.
        """
        src, spa = self.text_pairs(batch)
        b = len(src)
        texts = src if src == spa else src + spa
        tokens = {k: v.to(device) if device is not None else v for k, v in self.tokenize(texts).items()}
        out = self.encode_text(tokens)
        if src == spa:
            return out
        return {"source": out["source"][:b], "space": out["space"][b:]}

    # ------------------------------------------------------------------ audio
    def encode_audio(self, waveform: torch.Tensor, iv: torch.Tensor) -> dict:
        """``waveform (B, T)`` W channel at 48 kHz, ``iv (B, 6, F, M)`` -> embeddings and physical predictions.

        Returns ``{"source": (B, source_dim), "space": (B, space_dim)}`` L2-normalised and
        ``"phys": {"direction": (B, 3) unit vectors, "area", "distance", "t30": (B,) normalised}``
        (:func:`disse.trainer.model.physics.to_real_units` maps them to real units).
        """
        shared, spatial = self.audio(waveform, iv)
        source = self.audio_source_head(shared)
        space = self.audio_space_head(shared if self.cfg.space_input == "fused" else spatial["normed"])
        phys_in = space
        if self.cfg.phys_input == "space+spatial":
            phys_in = torch.cat([space, spatial["normed"]] + ([spatial["room"]] if spatial["room"] is not None else []), 1)
        if spatial["direction"] is not None:
            phys = {"direction": spatial["direction"].float()}
        else:
            phys = {"direction": F.normalize(self.phys_heads["direction"](phys_in).float(), dim=-1, eps=1e-6)}
        for name in SCALARS:
            phys[name] = self.phys_heads[name](phys_in).squeeze(-1).float()
        return {"source": F.normalize(source, dim=-1), "space": F.normalize(space, dim=-1), "phys": phys}

    def forward(self, waveform: torch.Tensor, iv: torch.Tensor, tokens: dict[str, torch.Tensor]) -> dict:
        """``{"audio": encode_audio(...), "text": encode_text(tokens)}`` in one call (one DDP forward)."""
        return {"audio": self.encode_audio(waveform, iv), "text": self.encode_text(tokens)}

    def descriptor_logits(self, space: torch.Tensor) -> dict[str, torch.Tensor]:
        """``space (B, space_dim)`` (either modality) -> ``{attribute: (B, n_labels) logits}``."""
        return {attr: head(space) for attr, head in self.descriptor_heads.items()}

    def descriptor_index(self, descriptors: list[dict]) -> torch.Tensor:
        """Labels of a batch -> ``(B, n_attributes)`` int64 class indices (attributes sorted), -1 when
        a label is unknown to the classifiers (ignored by the loss)."""
        rows = []
        for d in descriptors:
            rows.append([self.cfg.descriptor_classes[a].index(d[a]) if d.get(a) in self.cfg.descriptor_classes[a] else -1
                         for a in sorted(self.cfg.descriptor_classes)])
        return torch.tensor(rows, dtype=torch.int64).reshape(len(descriptors), len(self.cfg.descriptor_classes))

    # ------------------------------------------------------------------ info
    def param_counts(self) -> dict[str, tuple[int, int]]:
        """``{branch: (total, trainable)}`` parameter counts per top-level branch."""
        groups = {
            "htsat": self.audio.source, "spatial_cnn": self.audio.spatial, "fusion": nn.ModuleList([self.audio.norm_source, self.audio.norm_spatial, self.audio.fusion]),
            "text_backbone": self.text.backbone, "text_projection": self.text.projection,
            "heads": nn.ModuleList([self.audio_source_head, self.audio_space_head,
                                    self.text_source_head, self.text_space_head]),
            "phys_heads": self.phys_heads,
        }
        out = {k: (sum(p.numel() for p in m.parameters()),
                   sum(p.numel() for p in m.parameters() if p.requires_grad)) for k, m in groups.items()}
        out["total"] = (sum(p.numel() for p in self.parameters()),
                        sum(p.numel() for p in self.parameters() if p.requires_grad))
        return out
