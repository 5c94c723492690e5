"""The official DISSE release's model (``takamichi-lab/disentangle``), checkpoint-compatible.

``DISSEOfficial`` has exactly the release's ``state_dict()`` names and shapes
(../shared/reference/disse-official-release.md §1.3; docs/official.md "Model preset"), so the
released ``disse_epoch20.pt`` loads with ``strict=True``:

* ``audio_encoder.htsat.model``: transformers' ``ClapAudioModel`` built from the **fused**
  ``laion/clap-htsat-fused`` audio config (:data:`CLAP_HTSAT_FUSED_AUDIO`, values written here, nothing
  fetched); its input is the CLAP feature extractor's log-mel of the 48 kHz W channel, called as the
  release calls it (``truncation="max_length"``, ``padding="repeatpad"``, 480 000 samples), i.e. one
  Slaney-mel plane and ``is_longer`` all False.
* ``audio_encoder.spatial_branch``: two CoordConv CNNs (``act``, ``rea``) over the 16 kHz intensity
  vectors ``[B, 3, 201, 1601]`` -> 2 x 1200 -> MLP 2400-128-32-44; ``spatial_to_elsa`` ELU + 44->192;
  ``audio_projection`` concat([spatial 192, HTSAT 768]) -> 768 (ELU) -> 512.
* ``text_encoder``: ``RobertaModel`` (with pooler) from a local ``roberta-base`` folder, pooler output
  -> ``proj1`` 768->640, ReLU (``reru``), ``proj2`` 640->512.
* four heads ELU + Linear(512, 512); one ``logit_scale``; physical heads (``direction`` 2-d,
  ``area``, ``distance``, ``reverb``) reading the un-normalised spatial audio embedding.

Embeddings are raw head outputs (not normalised), as in the release; :func:`load_official_checkpoint`
reads the release's container formats with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor, RobertaConfig, RobertaModel,
                          RobertaTokenizer)

from disse.configs import config_path
from disse.schemas.config import load_config
from disse.schemas.errors import SchemaError
from disse.trainer.model.hf import quiet_transformers
from disse.trainer.model.weights import read_checkpoint

# laion/clap-htsat-fused config.json, "audio_config" (the values the checkpoint's shapes pin, plus
# the non-shape ones: window size, depths' heads, fusion flags, dropouts, eps).
CLAP_HTSAT_FUSED_AUDIO: dict[str, Any] = {
    "model_type": "clap_audio_model",
    "hidden_size": 768,
    "projection_dim": 512,
    "projection_hidden_act": "relu",
    "patch_embeds_hidden_size": 96,
    "spec_size": 256,
    "patch_size": 4,
    "patch_stride": [4, 4],
    "num_mel_bins": 64,
    "num_hidden_layers": 4,
    "depths": [2, 2, 6, 2],
    "num_attention_heads": [4, 8, 16, 32],
    "window_size": 8,
    "enable_fusion": True,
    "fusion_type": None,
    "aff_block_r": 4,
    "patch_embed_input_channels": 1,
    "flatten_patch_embeds": True,
    "enable_patch_layer_norm": True,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.0,
    "drop_path_rate": 0.0,
    "qkv_bias": True,
    "mlp_ratio": 4.0,
    "layer_norm_eps": 1e-5,
    "num_classes": 527,
}

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000          # 10 s at 48 kHz: HTSAT input (omni_48k)
IV_SHAPE = (3, 201, 1601)      # [Y, Z, X] x 201 STFT bins x 1601 frames at 16 kHz (release §2.3)
EMBED_DIM = 512
MODALITIES = ("audio", "text")
PHYS_HEADS = {"direction": 2, "area": 1, "distance": 1, "reverb": 1}


@dataclass
class OfficialConfig:
    """``model.official`` (configs/official.yaml): what the official preset needs from the user."""

    roberta_dir: str | None = None   # local roberta-base folder: config.json, vocab.json, merges.txt
    checkpoint: str | None = None    # the released disse_epoch20.pt (or any checkpoint of this model)
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    text_max_length: int = 512       # the release pads every caption to 512 tokens
    strict: bool = True              # missing / unexpected / mismatched keys are an error


@dataclass
class _ModelSection:
    preset: str = "official"
    official: OfficialConfig = field(default_factory=OfficialConfig)


@dataclass
class _OfficialFile:
    model: _ModelSection = field(default_factory=_ModelSection)


def load_official_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> OfficialConfig:
    """``model.official`` of a YAML file (default the packaged configs/official.yaml), with dotted
    overrides (``model.official.roberta_dir=/data/roberta-base``); names and types are checked."""
    path = path or config_path("official.yaml")
    cfg = load_config(_OfficialFile, path, overrides)
    if cfg.model.preset != "official":
        raise SchemaError(f"model.preset is {cfg.model.preset!r}, not 'official'", file=str(path), field="model.preset")
    return cfg.model.official


# ---------------------------------------------------------------------------------------- audio
class AddCoords(nn.Module):
    """``(B, C, H, W) -> (B, C + 2, H, W)``: appends linspace(-1, 1) over H (frequency), then over W (time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        yy = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xx = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(b, 1, h, w)
        return torch.cat([x, yy, xx], dim=1)


class CoordConvCNN(nn.Module):
    """One intensity branch: ``(B, 3, 201, 1601) -> (B, 1200)``.

    Block 0 = AddCoords, Conv(5->16), BN, MaxPool(2), ELU; blocks 1-5 = Conv(16->16), BN, MaxPool, ELU;
    then Flatten (C, H, W) and Dropout(0.3). Sequential indices match the release's keys.
    """

    def __init__(self, in_channels: int = 3, channels: int = 16, blocks: int = 6, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(AddCoords(), nn.Conv2d(in_channels + 2, channels, 3, padding=1),
                                                 nn.BatchNorm2d(channels), nn.MaxPool2d(2), nn.ELU())]
        for _ in range(blocks - 1):
            layers.append(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                        nn.MaxPool2d(2), nn.ELU()))
        layers += [nn.Flatten(), nn.Dropout(dropout)]
        self.cnn = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)


class OfficialSpatialBranch(nn.Module):
    """``(i_act, i_rea)`` each ``(B, 3, 201, 1601)`` -> ``(B, 44)`` (ELSA's spatial attributes branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = CoordConvCNN()
        self.rea = CoordConvCNN()
        self.mlp = nn.Sequential(nn.Linear(2400, 128), nn.ELU(), nn.Linear(128, 32), nn.ELU(), nn.Linear(32, 44))

    def forward(self, i_act: torch.Tensor, i_rea: torch.Tensor) -> torch.Tensor:
        for name, x in (("i_act", i_act), ("i_rea", i_rea)):
            if tuple(x.shape[1:]) != IV_SHAPE:
                raise ValueError(f"{name} must be (B, {', '.join(map(str, IV_SHAPE))}) "
                                 f"(16 kHz intensity vectors of a 10 s clip), got {tuple(x.shape)}")
        return self.mlp(torch.cat([self.act(i_act), self.rea(i_rea)], dim=1))


def clap_audio_config(overrides: dict[str, Any] | None = None):
    """transformers ``ClapAudioConfig`` of ``laion/clap-htsat-fused`` (``overrides`` only for tests)."""
    values = {k: v for k, v in CLAP_HTSAT_FUSED_AUDIO.items() if k != "model_type"}
    values.update(overrides or {})
    return ClapAudioConfig(**values)


# The release's HTSAT input (reference §1.4): the hub preprocessor_config.json of
# laion/clap-htsat-fused, written here so nothing is fetched; the release calls the extractor with
# truncation="max_length" (Slaney mel, one plane, is_longer all False), never the default "fusion".
OFFICIAL_CLAP_PREPROCESSOR: dict = {
    "feature_size": 64, "sampling_rate": 48000, "hop_length": 480, "max_length_s": 10,
    "fft_window_size": 1024, "padding_value": 0.0, "return_attention_mask": False,
    "frequency_min": 50, "frequency_max": 14000, "top_db": None,
    "truncation": "fusion", "padding": "repeatpad",
}
OFFICIAL_CLAP_CALL: dict = {"sampling_rate": 48000, "padding": "repeatpad", "truncation": "max_length",
                            "max_length": 480000, "return_tensors": "pt"}


def official_htsat_inputs(omni_48k, extractor=None) -> dict:
    """W channel(s) at 48 kHz -> the release's HTSAT inputs, via transformers' ClapFeatureExtractor.

    ``omni_48k``: ``(T,)`` or ``(B, T)`` array / tensor, or a list of 1-D arrays (480000 samples each
    in the release). Returns ``{"input_features": (B, 1, 1001, 64) float32, "is_longer": (B, 1) bool}``
    as torch tensors on the CPU. ``extractor`` defaults to one built from
    :data:`OFFICIAL_CLAP_PREPROCESSOR` (no download).
    """
    if extractor is None:
        extractor = ClapFeatureExtractor(**OFFICIAL_CLAP_PREPROCESSOR)
    if hasattr(omni_48k, "detach"):
        omni_48k = omni_48k.detach().cpu().numpy()
    if isinstance(omni_48k, np.ndarray):
        omni_48k = [omni_48k] if omni_48k.ndim == 1 else list(omni_48k)
    items = [np.asarray(x, dtype=np.float32) for x in omni_48k]
    return dict(extractor(items, **OFFICIAL_CLAP_CALL))


class ClapHTSAT(nn.Module):
    """``omni_48k (B, T) -> (B, 768)``: CLAP feature extractor (release call) + ``ClapAudioModel`` pooler.

    The model is the attribute ``model`` (keys ``model.audio_encoder.*``). The feature extractor runs on
    CPU in numpy, like the release's ``ClapProcessor`` call.
    """

    def __init__(self, audio_config_overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        quiet_transformers()
        self.model = ClapAudioModel(clap_audio_config(audio_config_overrides))
        self._extractor = None

    def features(self, omni_48k: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, T)`` float W channel at 48 kHz -> ``{"input_features": (B, 1, 1001, 64), "is_longer": (B, 1)}``
        (:func:`official_htsat_inputs`: the release's ClapProcessor call)."""
        if omni_48k.dim() != 2:
            raise ValueError(f"omni_48k must be (B, T), got {tuple(omni_48k.shape)}")
        if self._extractor is None:
            self._extractor = ClapFeatureExtractor(**OFFICIAL_CLAP_PREPROCESSOR)
        return official_htsat_inputs(omni_48k.detach().to("cpu", torch.float32), self._extractor)

    def forward(self, omni_48k: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.features(omni_48k).items()}
        return self.model(**inputs).pooler_output


class OfficialAudioEncoder(nn.Module):
    """``(i_act, i_rea, omni_48k) -> (B, 512)`` shared audio embedding (release §1.5)."""

    def __init__(self, audio_config_overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.htsat = ClapHTSAT(audio_config_overrides)
        self.spatial_branch = OfficialSpatialBranch()
        self.spatial_to_elsa = nn.Sequential(nn.ELU(), nn.Linear(44, 192))
        width = self.htsat.model.config.hidden_size
        self.audio_projection = nn.Sequential(nn.Linear(192 + width, 768), nn.ELU(), nn.Linear(768, EMBED_DIM))

    def forward(self, i_act: torch.Tensor, i_rea: torch.Tensor, omni_48k: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial_to_elsa(self.spatial_branch(i_act, i_rea))
        source = self.htsat(omni_48k)
        return self.audio_projection(torch.cat([spatial, source.to(spatial.dtype)], dim=1))


# ----------------------------------------------------------------------------------------- text
def resolve_roberta_dir(path: str | None) -> Path:
    """The local roberta-base folder, or a clear error saying how to get one."""
    if not path:
        raise SchemaError("the official preset needs a local copy of Hugging Face 'roberta-base' (config.json, "
                          "vocab.json, merges.txt; weights come from the DISSE checkpoint). Fetch it once on a "
                          "machine with internet, e.g. `huggingface-cli download roberta-base --local-dir "
                          "/data/roberta-base`, then set model.official.roberta_dir=/data/roberta-base",
                          field="model.official.roberta_dir")
    p = Path(path)
    missing = [f for f in ("config.json", "vocab.json", "merges.txt") if not (p / f).is_file()]
    if missing:
        raise SchemaError(f"{p} lacks {', '.join(missing)}: give a local Hugging Face roberta-base folder",
                          file=str(p), field="model.official.roberta_dir")
    return p


class OfficialTextEncoder(nn.Module):
    """``list[str] -> (B, 512)``: RoBERTa pooler -> proj1 (768->640) -> ReLU (``reru``) -> proj2 (640->512)."""

    def __init__(self, roberta_dir: str | None, max_length: int = 512) -> None:
        super().__init__()
        quiet_transformers()
        self.path = resolve_roberta_dir(roberta_dir)
        config = RobertaConfig.from_pretrained(str(self.path), local_files_only=True)
        self.roberta = RobertaModel(config)  # with pooler; weights from the DISSE checkpoint
        self.proj1 = nn.Linear(config.hidden_size, 640)
        self.reru = nn.ReLU()  # the release's (misspelt) attribute name, kept
        self.proj2 = nn.Linear(640, EMBED_DIM)
        limit = config.max_position_embeddings - 2  # RoBERTa positions start after the padding index
        if not 1 <= max_length <= limit:
            raise SchemaError(f"must be in 1..{limit} for this RoBERTa", field="model.official.text_max_length")
        self.max_length = max_length
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = RobertaTokenizer.from_pretrained(str(self.path), local_files_only=True)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``texts -> {"input_ids", "attention_mask"}`` (B, max_length): padded to max_length, as the release."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.proj1.weight.device
        tokens = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        pooled = self.roberta(**tokens).pooler_output
        return self.proj2(self.reru(self.proj1(pooled)))


# ---------------------------------------------------------------------------------------- model
class RegressionHead_for_physicalValue(nn.Module):  # noqa: N801  (the release's class name)
    """``(B, 512) -> (B, k)``: fc1 (512->64), ReLU, fc2 (64->k)."""

    def __init__(self, in_dim: int = EMBED_DIM, out_dim: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def _head() -> nn.Sequential:
    return nn.Sequential(nn.ELU(), nn.Linear(EMBED_DIM, EMBED_DIM))


class DISSEOfficial(nn.Module):
    """The release's ``DISSE`` model; a modality left out has no encoder, heads or keys (§1.1).

    ``audio_config_overrides`` shrinks the HTSAT for tests only; the preset uses the fused config.
    """

    def __init__(self, cfg: OfficialConfig | None = None, *,
                 audio_config_overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        cfg = cfg or OfficialConfig()
        mods = set(cfg.modalities)
        if not mods or not mods <= set(MODALITIES):
            raise SchemaError(f"must be a non-empty subset of {list(MODALITIES)}, got {cfg.modalities}",
                              field="model.official.modalities")
        self.cfg = cfg
        self.modalities = tuple(m for m in MODALITIES if m in mods)
        self.audio_encoder = self.audio_space_head = self.audio_source_head = None
        self.text_encoder = self.text_space_head = self.text_source_head = None
        if "audio" in mods:
            self.audio_encoder = OfficialAudioEncoder(audio_config_overrides)
            self.audio_space_head, self.audio_source_head = _head(), _head()
        if "text" in mods:
            self.text_encoder = OfficialTextEncoder(cfg.roberta_dir, cfg.text_max_length)
            self.text_space_head, self.text_source_head = _head(), _head()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        for name, k in PHYS_HEADS.items():
            setattr(self, f"{name}_head", RegressionHead_for_physicalValue(EMBED_DIM, k) if "audio" in mods else None)

    def encode_audio(self, audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"i_act", "i_rea": (B, 3, 201, 1601), "omni_48k": (B, 480000)}`` ->
        ``audio_space_emb``, ``audio_source_emb`` (B, 512) raw; ``direction`` (B, 2), ``area``,
        ``distance``, ``reverb`` (B, 1), all read from the un-normalised ``audio_space_emb``."""
        if self.audio_encoder is None:
            raise RuntimeError("this model was built without the audio modality")
        dev = self.logit_scale.device
        shared = self.audio_encoder(audio["i_act"].to(dev), audio["i_rea"].to(dev), audio["omni_48k"])
        space = self.audio_space_head(shared)
        out = {"audio_space_emb": space, "audio_source_emb": self.audio_source_head(shared)}
        for name in PHYS_HEADS:
            out[name] = getattr(self, f"{name}_head")(space)
        return out

    def encode_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``list[str]`` -> ``text_space_emb``, ``text_source_emb`` (B, 512), raw head outputs."""
        if self.text_encoder is None:
            raise RuntimeError("this model was built without the text modality")
        shared = self.text_encoder(texts)
        return {"text_space_emb": self.text_space_head(shared), "text_source_emb": self.text_source_head(shared)}

    def forward(self, audio: dict[str, torch.Tensor], texts: list[str]) -> dict[str, torch.Tensor]:
        """Both encodings, plus ``logit_scale = exp(min(logit_scale, ln 100))`` and ``tau = 1 / logit_scale``."""
        out = {**self.encode_audio(audio), **self.encode_text(texts)}
        scale = torch.exp(torch.clamp(self.logit_scale, max=math.log(100.0)))
        out["logit_scale"], out["tau"] = scale, 1.0 / scale
        return out


# -------------------------------------------------------------------------------------- loading

# Module names that differ between the transformers the release used (4.52.4) and the installed one:
# (pattern in the checkpoint, replacement). None differ for ClapAudioModel / RobertaModel up to 5.x
# (checked: docs/official.md); the hook stays so that a future rename is one line here.
KEY_RENAMES: list[tuple[str, str]] = []
# Buffers some transformers versions save and others recompute (constants, never learned): a
# checkpoint may have them while the installed model does not, or the reverse.
DERIVED_BUFFERS = re.compile(r"(\.relative_position_index|roberta\.embeddings\.(position_ids|token_type_ids))$")


def read_official_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a release-format checkpoint and its other top-level entries (e.g. ``epoch``).

    Containers: ``{"model_state_dict"|"state_dict"|"model": sd, ...}`` (first dict wins) or a bare
    state dict; a leading ``module.`` is stripped. Read by :func:`disse.trainer.model.weights.read_checkpoint`.
    """
    ckpt = read_checkpoint(path, expect=("official",))
    return ckpt.state, ckpt.entries


def map_release_keys(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Apply :data:`KEY_RENAMES`, drop derived buffers the installed model lacks and fill those it has
    but the checkpoint lacks (from ``own``). Returns ``(mapped state, notes)``."""
    mapped, notes = {}, []
    for key, value in state.items():
        new = key
        for pattern, repl in KEY_RENAMES:
            new = re.sub(pattern, repl, new)
        if new != key:
            notes.append(f"renamed {key} -> {new}")
        if new not in own and DERIVED_BUFFERS.search(new):
            notes.append(f"dropped derived buffer {new}")
            continue
        mapped[new] = value
    for key, value in own.items():
        if key not in mapped and DERIVED_BUFFERS.search(key):
            mapped[key] = value
            notes.append(f"kept the model's own derived buffer {key}")
    return mapped, notes


def _show(keys: list[str], limit: int = 20) -> str:
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_official_state(model: DISSEOfficial, state: dict[str, torch.Tensor], *, source: str = "checkpoint",
                        strict: bool = True) -> list[str]:
    """Load a release-layout state dict; one :class:`SchemaError` lists every mismatch when ``strict``.

    Keys of a modality the model was built without are ignored (the release's ``ignored_keys``).
    Returns the mapping notes.
    """
    own = model.state_dict()
    state, notes = map_release_keys(state, own)
    absent = tuple(f"{m}_" for m in MODALITIES if m not in model.modalities)
    if "audio" not in model.modalities:
        absent += tuple(f"{n}_head." for n in PHYS_HEADS)
    if absent:
        state = {k: v for k, v in state.items() if not k.startswith(absent)}
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k} {tuple(state[k].shape)} != model {tuple(own[k].shape)}"
                    for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if strict and (missing or unexpected or shapes):
        parts = [f"{len(missing)} missing: {_show(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {_show(unexpected)}" if unexpected else "",
                 f"{len(shapes)} shape mismatches: {_show(shapes)}" if shapes else ""]
        raise SchemaError("checkpoint does not match the official DISSE model (strict): "
                          + "; ".join(p for p in parts if p), file=source)
    if shapes:
        raise SchemaError(f"shape mismatches: {_show(shapes)}", file=source)
    model.load_state_dict(state, strict=strict)
    return notes


def build_official(cfg: OfficialConfig, *, checkpoint: str | None = None,
                   state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
                   audio_config_overrides: dict[str, Any] | None = None) -> DISSEOfficial:
    """The official model in eval mode, loaded from ``state`` (``(tensors, entries)`` of a checkpoint already
    read) or else from ``checkpoint`` (or ``cfg.checkpoint``), when given."""
    model = DISSEOfficial(cfg, audio_config_overrides=audio_config_overrides)
    path = checkpoint or cfg.checkpoint
    if state is None and path:
        state = read_official_state(path)
    if state is not None:
        tensors, meta = state
        model.load_notes = load_official_state(model, tensors, source=str(path or "checkpoint"), strict=cfg.strict)
        model.epoch = meta.get("epoch")
    return model.eval()
