"""The one model factory: a checkpoint of any kind this project knows -> the model that reads it.

``disse-eval``, ``disse-embed`` and ``disse-train --resume`` all come through :func:`disse.trainer.model.weights.read_checkpoint`
(the file is read once); this module builds DELSA (project checkpoints) or DISSEOfficial (release checkpoints).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from disse.schemas.config import _build
from disse.schemas.errors import SchemaError
from disse.trainer.model.delsa import DELSA, ModelConfig
from disse.trainer.model.official import DISSEOfficial, OfficialConfig, build_official
from disse.trainer.model.weights import Checkpoint, as_checkpoint


def model_config(ckpt: Checkpoint) -> ModelConfig:
    """The ``model`` section of a project checkpoint's config, as the ModelConfig it was trained with."""
    return _build(ModelConfig, ckpt.config.get("model") or {}, "model", str(ckpt.path))


def load_delsa(ckpt: str | Path | Checkpoint, device: str | torch.device = "cpu") -> DELSA:
    """The DELSA model of a project checkpoint, in eval mode on ``device``."""
    ckpt = as_checkpoint(ckpt, expect=("project",))
    if (ckpt.config.get("model") or {}).get("preset") == "official":
        raise SchemaError("is a disse-train checkpoint of the official preset (DISSEOfficial): give its release-layout "
                          "export instead (checkpoints/*_release.pt, train.export_release), which disse-eval and "
                          "disse-embed read as the released file", file=str(ckpt.path), field="model.preset")
    # the weights come from this checkpoint: pretrained files that training started from need not exist
    # here (HTSAT then starts from random init before being overwritten; the text side keeps a file that
    # is present, since a RoBERTa without a CLAP file needs its hf_dir weights instead)
    cfg = copy.deepcopy(model_config(ckpt))
    cfg.audio.htsat.checkpoint = None
    if cfg.text.checkpoint and not Path(cfg.text.checkpoint).is_file():
        cfg.text.checkpoint = None
    model = DELSA(cfg)
    missing, unexpected = model.load_state_dict(ckpt.state, strict=False)
    if missing or unexpected:
        raise SchemaError(f"checkpoint does not match the model of its config: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}", file=str(ckpt.path), field="model")
    return model.to(device).eval()


def load_official(ckpt: str | Path | Checkpoint, cfg: OfficialConfig | None = None,
                  device: str | torch.device = "cpu", *, audio_config_overrides: dict | None = None) -> DISSEOfficial:
    """The official DISSE model of a release-layout checkpoint, loaded (strictly unless ``cfg.strict`` is off).
    ``audio_config_overrides`` shrinks the HTSAT (tests only, as in :class:`DISSEOfficial`)."""
    ckpt = as_checkpoint(ckpt, expect=("official",))
    cfg = copy.copy(cfg) if cfg is not None else OfficialConfig()
    cfg.checkpoint = str(ckpt.path)
    return build_official(cfg, state=(ckpt.state, ckpt.entries),
                          audio_config_overrides=audio_config_overrides).to(device)
