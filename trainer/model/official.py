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
from disse.trainer.model.clap_checkpoint import laion_htsat_to_clap_audio, load_into, sub_state_dict
from disse.trainer.model.hf import quiet_transformers
from disse.trainer.model.htsat import LogMel
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
    text_max_length: int = 512       # truncation bound (the release pads to it; here: to the longest caption)
    strict: bool = True              # missing / unexpected / mismatched keys are an error
    # training starts (disse-train --config official; docs/official.md "Training the official model"); with
    # ``checkpoint`` set, every tensor comes from it and these two are not used
    htsat_init: str | None = None    # a LAION-CLAP fused .pt, or a local HF folder of laion/clap-htsat-fused
    roberta_init: bool = False       # load roberta-base's weights from roberta_dir (model.safetensors / .bin)
    # shrinks the HTSAT (ClapAudioConfig values, e.g. {hidden_size: 128, patch_embeds_hidden_size: 16});
    # tests and CPU demos only: a release-layout file of a shrunk model loads only into the same sizes
    htsat_overrides: dict = field(default_factory=dict)
    # z-score statistics of the physical targets, {area_m2|distance_m|t30_ms: [mean, std]}: filled by
    # disse-train from the training split (docs/official.md), carried by the config and the checkpoints
    target_stats: dict = field(default_factory=dict)


@dataclass
class _ModelSection:
    preset: str = "official"
    official: OfficialConfig = field(default_factory=OfficialConfig)


@dataclass
class _OfficialFile:
    """configs/official.yaml as the inference tools read it: ``model`` only; the trainer's sections (read by
    disse-train's TrainConfig) are accepted as they are."""

    model: _ModelSection = field(default_factory=_ModelSection)
    loss: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    log: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)


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


# OFFICIAL_CLAP_PREPROCESSOR's values in the form of trainer.model.htsat.LogMel (the same Slaney log-mel in torch)
OFFICIAL_LOG_MEL: dict = {"window_size": 1024, "hop_size": 480, "sample_rate": 48000, "mel_bins": 64,
                          "fmin": 50, "fmax": 14000}


class ClapHTSAT(nn.Module):
    """``omni_48k (B, T) -> (B, 768)``: the release's HTSAT input + ``ClapAudioModel`` pooler.

    The model is the attribute ``model`` (keys ``model.audio_encoder.*``). The input is computed in torch on
    the model's device by ``front`` (:class:`disse.trainer.model.htsat.LogMel` with the hub's values: periodic
    Hann 1024, hop 480, power, Slaney mel 50-14000 Hz, 10 log10), which equals the release's ClapProcessor call
    (:func:`official_htsat_inputs`, numpy on the CPU) within float tolerance (tests/test_official_train.py).
    """

    def __init__(self, audio_config_overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        quiet_transformers()
        self.model = ClapAudioModel(clap_audio_config(audio_config_overrides))
        self.front = LogMel(OFFICIAL_LOG_MEL)  # non-persistent buffers: not in the state dict

    def features(self, omni_48k: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` float W channel at 48 kHz (480000 samples) -> ``input_features (B, 1, 1001, 64)`` (float32,
        on the model's device; ``is_longer`` is all False in the release's call)."""
        if omni_48k.dim() != 2:
            raise ValueError(f"omni_48k must be (B, T), got {tuple(omni_48k.shape)}")
        device = self.front.mel.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return self.front(omni_48k.to(device, torch.float32))

    def forward(self, omni_48k: torch.Tensor | None = None, input_features: torch.Tensor | None = None
                ) -> torch.Tensor:
        if input_features is None:
            input_features = self.features(omni_48k)
        # the release's call marks no clip longer: the fused patch-embed reads the global mel plane only
        is_longer = torch.zeros(input_features.shape[0], 1, dtype=torch.bool, device=input_features.device)
        return self.model(input_features=input_features, is_longer=is_longer).pooler_output


class OfficialAudioEncoder(nn.Module):
    """``(i_act, i_rea, omni_48k) -> (B, 512)`` shared audio embedding (release §1.5)."""

    def __init__(self, audio_config_overrides: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.htsat = ClapHTSAT(audio_config_overrides)
        self.spatial_branch = OfficialSpatialBranch()
        self.spatial_to_elsa = nn.Sequential(nn.ELU(), nn.Linear(44, 192))
        width = self.htsat.model.config.hidden_size
        self.audio_projection = nn.Sequential(nn.Linear(192 + width, 768), nn.ELU(), nn.Linear(768, EMBED_DIM))

    def forward(self, i_act: torch.Tensor, i_rea: torch.Tensor, omni_48k: torch.Tensor | None = None,
                input_features: torch.Tensor | None = None) -> torch.Tensor:
        spatial = self.spatial_to_elsa(self.spatial_branch(i_act, i_rea))
        source = self.htsat(omni_48k, input_features)
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
        """``texts -> {"input_ids", "attention_mask"}`` (B, L): padded to the longest caption of the batch, cut at
        ``max_length``. The release pads to 512; with the attention mask the embeddings are the same within
        float tolerance (the pads are masked and RoBERTa's positions skip them) at a fraction of the cost."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, texts: list[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Captions, or their :meth:`tokenize` output, -> ``(B, 512)``."""
        device = self.proj1.weight.device
        tokens = texts if isinstance(texts, dict) else self.tokenize(texts)
        tokens = {k: v.to(device) for k, v in tokens.items()}
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
        if audio_config_overrides is None:
            audio_config_overrides = dict(cfg.htsat_overrides) or None
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
        self.target_stats = dict(cfg.target_stats) or None  # z-score statistics of the physical targets
        for name, k in PHYS_HEADS.items():
            setattr(self, f"{name}_head", RegressionHead_for_physicalValue(EMBED_DIM, k) if "audio" in mods else None)

    def train(self, mode: bool = True) -> "DISSEOfficial":
        """As ``nn.Module.train``, except that a part whose parameters are all frozen (``train.freeze``) stays in
        eval mode: its BatchNorm statistics are kept and it has no dropout, so fine-tuning leaves every tensor
        it does not train exactly as loaded."""
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters(recurse=True))
                if m is not self and params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def encode_audio(self, audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"i_act", "i_rea": (B, 3, 201, 1601), "omni_48k": (B, 480000)}`` (or ``"input_features"``
        ``(B, 1, 1001, 64)``, the HTSAT input already computed, instead of ``omni_48k``) ->
        ``audio_space_emb``, ``audio_source_emb`` (B, 512) raw; ``direction`` (B, 2), ``area``,
        ``distance``, ``reverb`` (B, 1), all read from the un-normalised ``audio_space_emb``."""
        if self.audio_encoder is None:
            raise RuntimeError("this model was built without the audio modality")
        dev = self.logit_scale.device
        shared = self.audio_encoder(audio["i_act"].to(dev), audio["i_rea"].to(dev), audio.get("omni_48k"),
                                    audio.get("input_features"))
        space = self.audio_space_head(shared)
        out = {"audio_space_emb": space, "audio_source_emb": self.audio_source_head(shared)}
        for name in PHYS_HEADS:
            out[name] = getattr(self, f"{name}_head")(space)
        return out

    def encode_text(self, texts: list[str] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``list[str]`` (or its ``text_encoder.tokenize`` output) -> ``text_space_emb``, ``text_source_emb``
        (B, 512), raw head outputs."""
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


# --------------------------------------------------------------------------- training starts (paper's)

TARGET_STATS_KEYS = ("area_m2", "distance_m", "t30_ms")   # the z-scored targets of the area / distance / reverb heads
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _hf_weights(folder: Path, field_name: str) -> Path:
    for name in _HF_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise SchemaError(f"{folder} holds no {' or '.join(_HF_WEIGHTS)}: give a local Hugging Face folder with its "
                      "weights", file=str(folder), field=field_name)


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The keys under the first of ``prefixes`` that any key has, with it removed ("" = as they are)."""
    for prefix in prefixes:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return {}


def load_htsat_init(htsat: ClapAudioModel, path: str) -> list[str]:
    """The paper's HTSAT start: a LAION-CLAP fused ``.pt`` (``audio_branch.*``, mapped onto ClapAudioModel's names by
    :func:`disse.trainer.model.clap_checkpoint.laion_htsat_to_clap_audio`) or a local Hugging Face folder of
    ``laion/clap-htsat-fused`` (``ClapModel``'s ``audio_model.audio_encoder.*`` or ``ClapAudioModel``'s
    ``audio_encoder.*``). Every tensor of ``htsat`` must be filled (derived buffers aside): a wrong file is one
    :class:`SchemaError` naming it and ``model.official.htsat_init``. Returns the keys left out."""
    field_name = "model.official.htsat_init"
    p = Path(path)
    if not p.exists():
        raise SchemaError("not found (a LAION-CLAP fused .pt or a local laion/clap-htsat-fused folder)", file=str(p),
                          field=field_name)
    if p.is_dir():
        state = read_checkpoint(_hf_weights(p, field_name)).state
        own = _strip(state, ("audio_model.audio_encoder.", "audio_encoder.", "clap.audio_model.audio_encoder."))
        mapped, dropped = {"audio_encoder." + k: v for k, v in own.items()}, []
    else:
        ckpt = read_checkpoint(p, what=field_name)
        laion = sub_state_dict(ckpt.state, "audio_branch.")
        if not laion:
            raise SchemaError(f"no 'audio_branch.*' keys: not a LAION-CLAP checkpoint (it is a {ckpt.kind} file)",
                              file=str(p), field=field_name)
        mapped, dropped = laion_htsat_to_clap_audio(laion)
    if not mapped:
        raise SchemaError("no HTSAT tensor found (keys audio_model.audio_encoder.* or audio_encoder.*)", file=str(p),
                          field=field_name)
    report = load_into(htsat, mapped, what="official HTSAT", source=str(p))
    missing = [k for k in report.missing if not DERIVED_BUFFERS.search(k)]
    if missing:
        raise SchemaError(f"not the fused HTSAT: {len(missing)} tensors missing ({_show(missing, 5)}); the official "
                          "preset starts from laion/clap-htsat-fused", file=str(p), field=field_name)
    return dropped + report.unexpected


def load_roberta_init(roberta: RobertaModel, folder: str | Path) -> None:
    """roberta-base's pretrained weights from the local folder (``roberta.*`` of RobertaForMaskedLM or a bare
    RobertaModel); the pooler is kept at its initialisation when the file has none (roberta-base's hub file
    has one). A file that fills none of the encoder is one error naming it and ``model.official.roberta_dir``."""
    field_name = "model.official.roberta_dir"
    weights = _hf_weights(Path(folder), field_name)
    state = _strip(read_checkpoint(weights).state, ("roberta.", ""))
    own = roberta.state_dict()
    report = load_into(roberta, {k: v for k, v in state.items() if k in own}, what="RoBERTa", source=str(weights))
    missing = [k for k in report.missing if not DERIVED_BUFFERS.search(k) and not k.startswith("pooler.")]
    if missing:
        raise SchemaError(f"not a roberta-base checkpoint: {len(missing)} tensors missing ({_show(missing, 5)})",
                          file=str(weights), field=field_name)


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
        stats = meta.get("target_stats")
        if stats is not None and not cfg.target_stats:
            model.target_stats = stats_from_tensor(stats, source=str(path or "checkpoint"))
    else:
        if cfg.htsat_init and model.audio_encoder is not None:
            model.load_notes = load_htsat_init(model.audio_encoder.htsat.model, cfg.htsat_init)
        if cfg.roberta_init and model.text_encoder is not None:
            load_roberta_init(model.text_encoder.roberta, model.text_encoder.path)
    return model.eval()


def check_target_stats(stats: dict, *, source: str = "config", field_name: str = "model.official.target_stats"
                       ) -> dict[str, tuple[float, float]]:
    """``{area_m2|distance_m|t30_ms: [mean, std]}`` checked (all three, finite, std > 0) -> tuples."""
    out = {}
    for key in TARGET_STATS_KEYS:
        value = stats.get(key) if isinstance(stats, dict) else None
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value) and value[1] > 0):
            raise SchemaError(f"needs {key}: [mean, std > 0] (got {value!r}); the physical heads predict z-scores "
                              "and only these statistics turn them into units", file=source, field=f"{field_name}.{key}")
        out[key] = (float(value[0]), float(value[1]))
    return out


def stats_to_tensor(stats: dict) -> torch.Tensor:
    """The checkpoint form of the target statistics: float64 ``(3, 2)``, rows :data:`TARGET_STATS_KEYS`,
    columns (mean, std) (a tensor, so the release's readers, which keep only non-dict entries, keep it)."""
    s = check_target_stats(stats)
    return torch.tensor([s[k] for k in TARGET_STATS_KEYS], dtype=torch.float64)


def stats_from_tensor(value: Any, *, source: str) -> dict[str, tuple[float, float]]:
    if not (torch.is_tensor(value) and tuple(value.shape) == (len(TARGET_STATS_KEYS), 2)):
        raise SchemaError(f"target_stats must be a (3, 2) tensor, got {getattr(value, 'shape', type(value))}",
                          file=source, field="target_stats")
    return check_target_stats({k: value[i].tolist() for i, k in enumerate(TARGET_STATS_KEYS)}, source=source,
                              field_name="target_stats")


def physical_units(out: dict[str, torch.Tensor], stats: dict | None, *, source: str = "checkpoint"
                   ) -> dict[str, torch.Tensor]:
    """The area / distance / reverb heads' z-scores -> ``area_m2``, ``distance_m``, ``t30_ms`` ``(B,)`` in m², m, ms
    (``z * std + mean`` with the training split's statistics). ``stats`` missing is one error naming ``source``
    and ``target_stats`` (the released checkpoint publishes none)."""
    if not stats:
        raise SchemaError("has no target_stats: its physical heads give z-scores that cannot be turned into units "
                          "(the released checkpoint publishes none; a disse-train checkpoint of the official preset "
                          "carries them)", file=source, field="target_stats")
    s = check_target_stats(stats, source=source, field_name="target_stats")
    return {key: out[head].squeeze(-1).double() * s[key][1] + s[key][0]
            for key, head in zip(TARGET_STATS_KEYS, ("area", "distance", "reverb"))}
