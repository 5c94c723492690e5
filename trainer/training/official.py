"""The official preset's objective: how ``disse-train`` trains DISSEOfficial through the one training loop.

The loop (:mod:`disse.trainer.training.loop`) asks its *objective* for the few things that differ between model
presets: which inputs the loader decodes, how the model is built, what one micro-batch's forward takes, the
loss, validation and what else a checkpoint save writes. :class:`OfficialObjective` answers for the release's
model (docs/official.md, "Training the official model"); streaming, AMP, DDP, exact accumulation, mid-epoch
resume, W&B and the progress bar are the loop's and the same for both presets.

The published objective (../shared/reference/disse-official-release.md §1.7, §5.3, §7):

* two multi-positive supervised contrastive losses, audio source <-> text source (positives: same
  ``source_id``) and audio space <-> text space (same ``space_id``), each symmetric over both directions,
  sharing the one ``logit_scale`` (initialised to ln(1/0.07); ``exp(min(logit_scale, ln 100))`` as the
  release's forward); embeddings L2-normalised in the loss;
* direction: ``-cos(direction_head, [azimuth, elevation] in radians)``;
* area, distance, T30: MSE on z-scores, with the training split's statistics (``model.official.target_stats``);
* ``total = w_src L_src + w_spa L_spa + [physics] (w_dir L_dir + w_area L_area + w_dist L_dist + w_t30 L_t30)``
  (``loss.*_weight``, ``loss.physics``; the research code summed them with weight 1).

Not in the release: the project preset's HSIC penalties (``loss.independence_weight``,
``loss.source_independence_weight``, ``loss.text_source_independence_weight``; docs/spatial.md, leakage
ablation) apply here by the same fields, off by default.

Both text heads read the one full caption (the release trains them on the same sentence).
"""
from __future__ import annotations

import copy
import logging
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from disse.schemas import SchemaError
from disse.schemas.features import OfficialFeatureParams
from disse.schemas.shard import decode_meta, group_tar_members
from disse.trainer.data.loader import ShardList, check_foa_inputs, eval_loader
from disse.trainer.evaluation.embedder import Embedder
from disse.trainer.evaluation.evaluate import evaluate_embeddings
from disse.trainer.evaluation.inference import embed_official, official_batches, official_inputs
from disse.trainer.model.official import (PHYS_HEADS, TARGET_STATS_KEYS, DISSEOfficial, build_official,
                                          check_target_stats, stats_to_tensor)
from disse.trainer.model.physics import direction_from_angles
from disse.trainer.model.weights import read_checkpoint
from disse.trainer.training.losses import (LossConfig, distillation_gap, independence_penalties,
                                          multi_positive_contrastive, room_parameters, source_contrast)

log = logging.getLogger("disse.train")

FUSED_ONLY = ".patch_embed.fusion_model."  # with mel_conv2d (below): the fused HTSAT's "longer clip" path
RELEASE_SUFFIX = "_release.pt"   # latest.pt -> latest_release.pt: the release's checkpoint layout
_META_FIELDS = {"area_m2": "area_m2", "distance_m": "source_distance_m", "t30_ms": "t30_ms"}


# --------------------------------------------------------------------------- statistics of the targets

def target_statistics(shards: ShardList) -> dict[str, list[float]]:
    """``{area_m2, distance_m, t30_ms: [mean, std]}`` over every sample of ``shards`` (population std), read from
    the ``json`` members only (no audio is decoded). The release's research code z-scored with such statistics
    of its training RIR catalogue (reference §5.3); here they come from the training split the run reads."""
    values: dict[str, list[float]] = {k: [] for k in TARGET_STATS_KEYS}
    for url in shards.urls:
        try:
            with tarfile.open(url, mode="r:") as tar:
                for key, group in group_tar_members(tar):
                    if "json" not in group:
                        continue
                    meta = decode_meta(tar.extractfile(group["json"]).read(), where=f"{url}:{key}")
                    for k, attr in _META_FIELDS.items():
                        values[k].append(float(getattr(meta, attr)))
        except (OSError, EOFError, tarfile.TarError):
            continue  # the loader skips and counts a bad shard; the statistics use the readable ones
        except SchemaError:
            continue
    if not values["area_m2"]:
        raise SchemaError("no readable sample metadata for the target statistics", field="data.train")
    out = {}
    for k, v in values.items():
        a = np.asarray(v, dtype=np.float64)
        out[k] = [float(a.mean()), float(max(a.std(), 1e-6))]  # one room in the split: std 0 -> no division by 0
    return out


# --------------------------------------------------------------------------- forward and loss

class OfficialDual(nn.Module):
    """One forward for the loss (DDP sees one forward per backward): the release's inputs already computed ->
    ``{"audio": {source, space, direction, area, distance, reverb}, "text": {source, space}, "scales": {logit}}``."""

    def __init__(self, model: DISSEOfficial) -> None:
        super().__init__()
        self.model = model

    def forward(self, i_act: torch.Tensor, i_rea: torch.Tensor, input_features: torch.Tensor,
                tokens: dict[str, torch.Tensor], source_tokens: dict[str, torch.Tensor] | None = None) -> dict:
        a = self.model.encode_audio({"i_act": i_act, "i_rea": i_rea, "input_features": input_features})
        t = self.model.encode_text(tokens)
        audio = {"source": a["audio_source_emb"], "space": a["audio_space_emb"],
                 **{k: a[k] for k in ("direction", "area", "distance", "reverb")}}
        text = {"source": t["text_source_emb"], "space": t["text_space_emb"]}
        if source_tokens is not None:  # the clips' own captions (objective_for in training/loop.py says when)
            with torch.no_grad():  # a target only (distillation, split source contrast): no RoBERTa graph for it
                text["source_of_source_text"] = self.model.encode_text(source_tokens)["text_source_emb"]
        return {"audio": audio, "text": text, "scales": {"logit": self.model.logit_scale}}


class OfficialLoss(nn.Module):
    """``(audio, text, meta, logit_scale) -> (total, {term: detached tensor})`` (module docstring).

    ``meta``: ``source_id``, ``space_id`` (N,), ``targets_z``: ``direction`` (N, 2) [az, el] in radians and the
    z-scored ``area``, ``distance``, ``reverb`` (N,). Terms: ``source``, ``space``, ``direction`` (-cos, in
    [-1, 1]), ``area``, ``distance``, ``t30`` (unweighted), ``scale`` (the clamped logit scale) and ``total``.
    """

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, audio: dict, text: dict, meta: dict, logit_scale: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        scale = torch.exp(torch.clamp(logit_scale.float(), max=math.log(100.0)))
        a, t = ({name: F.normalize(side[name].float(), dim=-1) for name in ("source", "space")} for side in (audio, text))
        if "source_of_source_text" in text:  # the clips' own captions, normalised as the contrast's other rows
            t["source_of_source_text"] = F.normalize(text["source_of_source_text"].float(), dim=-1)
        terms = {"source": source_contrast(a["source"], t, meta["source_id"], scale, c.full_caption_source_grad),
                 "space": multi_positive_contrastive(a["space"], t["space"], meta["space_id"], scale)}
        total = c.source_weight * terms["source"] + c.space_weight * terms["space"]
        # the disentanglement penalties of the project preset, same fields
        room = None
        if c.room_independence_weight and meta.get("targets_z") is not None:
            z = meta["targets_z"]
            az, el = torch.rad2deg(z["direction"].float()).unbind(-1)
            room = room_parameters(direction_from_angles(az, el), [z["area"], z["distance"], z["reverb"]])
        for name, (weight, value) in independence_penalties(c, a, t, room).items():
            terms[name] = value
            total = total + weight * value
        if c.source_caption_distill_weight and "source_of_source_text" in text:
            terms["source_caption_distill"] = distillation_gap(text["source"], text["source_of_source_text"]).mean()
            total = total + c.source_caption_distill_weight * terms["source_caption_distill"]
        if c.physics:
            z = meta["targets_z"]
            terms["direction"] = -F.cosine_similarity(audio["direction"].float(), z["direction"], dim=-1).mean()
            total = total + c.direction_weight * terms["direction"]
            for term, head, weight in (("area", "area", c.area_weight), ("distance", "distance", c.distance_weight),
                                       ("t30", "reverb", c.t30_weight)):
                terms[term] = F.mse_loss(audio[head].float().squeeze(-1), z[head])
                total = total + weight * terms[term]
        out = {k: v.detach() for k, v in terms.items()}
        out["scale"], out["total"] = scale.detach(), total.detach()
        return total, out


def official_targets(targets: dict, stats: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A Batch's ``targets`` (real units) -> the release's: ``direction`` [deg2rad(az), deg2rad(el)] (N, 2) and
    z-scores ``area``, ``distance``, ``reverb`` (N,) with ``stats`` (:func:`target_statistics`)."""
    s = check_target_stats(stats)
    f = lambda k: targets[k].to(device, torch.float64)  # noqa: E731
    out = {"direction": torch.stack([torch.deg2rad(f("azimuth_deg")), torch.deg2rad(f("elevation_deg"))], dim=-1)}
    for head, key in (("area", "area_m2"), ("distance", "distance_m"), ("reverb", "t30_ms")):
        out[head] = (f(key) - s[key][0]) / s[key][1]
    return {k: v.float() for k, v in out.items()}


# --------------------------------------------------------------------------- the objective

@dataclass
class OfficialObjective:
    """What the loop needs to train DISSEOfficial (``model.preset: official``)."""

    inputs: str = "foa"   # the loader decodes every shard's FOA; the front end runs on the training device
    name: str = "official"
    source_text: bool = False  # also feed the clips' own captions (objective_for in training/loop.py says when)

    def prepare(self, cfg: Any, shards: ShardList, val: ShardList | None) -> None:
        """Checks before anything is built, and the target statistics into ``cfg`` (so config.yaml and every
        checkpoint carry them)."""
        if cfg.data.rotate_azimuth:
            raise SchemaError("the official preset reads the shards' FOA, which is not rotated; set it false",
                              field="data.rotate_azimuth")
        if cfg.data.space_caption_drop:
            raise SchemaError("the release trains both text heads on the one full caption; set it 0",
                              field="data.space_caption_drop")
        check_foa_inputs(shards, what="data.train")
        if val is not None:
            check_foa_inputs(val, what="data.val")
        o = cfg.model.official
        if o.checkpoint:
            read_checkpoint(o.checkpoint, expect=("official",), what="model.official.checkpoint")
        if not o.target_stats:
            o.target_stats = target_statistics(shards)
        check_target_stats(o.target_stats, field_name="model.official.target_stats")

    def build_model(self, cfg: Any) -> nn.Module:
        """Random init, or the paper's start (``htsat_init``, ``roberta_init``), or a release-layout
        ``checkpoint`` (fine-tuning); ``apply_freeze`` then freezes by name as for the project preset."""
        o = copy.copy(cfg.model.official)
        state = None
        if o.checkpoint:
            ckpt = read_checkpoint(o.checkpoint, expect=("official",), what="model.official.checkpoint")
            state = (ckpt.state, {k: v for k, v in ckpt.entries.items() if k != "target_stats"})
        model = build_official(o, state=state)
        model.target_stats = dict(cfg.model.official.target_stats)
        # parameters the objective never reaches get no gradient; frozen, so DDP need not look for unused ones:
        # the fused patch-embed's branches for "longer" clips (the release's call marks none) and, without the
        # physical loss, the physical heads
        unused = [FUSED_ONLY, ".patch_embed.mel_conv2d."] + ([] if cfg.loss.physics else [f"{h}_head." for h in PHYS_HEADS])
        for name, p in model.named_parameters():
            if any(u in name if u.startswith(".") else name.startswith(u) for u in unused):
                p.requires_grad_(False)
        return model.train()

    def build_loss(self, cfg: Any) -> nn.Module:
        return OfficialLoss(cfg.loss)

    def wrap(self, model: nn.Module, cfg: Any) -> nn.Module:
        return OfficialDual(model)

    def micro_inputs(self, model: nn.Module, batch: dict, device: torch.device) -> tuple:
        x = official_inputs(batch, device)
        feats = model.audio_encoder.htsat.features(x["omni_48k"])
        tok = lambda texts: {k: v.to(device, non_blocking=True)  # noqa: E731
                             for k, v in model.text_encoder.tokenize(list(texts)).items()}
        inputs = (x["i_act"], x["i_rea"], feats, tok(batch["caption"]))
        return inputs + (tok(batch["source_text"]),) if self.source_text else inputs

    def micro_meta(self, model: nn.Module, batch: dict, device: torch.device) -> dict:
        return {"source_id": batch["source_id"].to(device), "space_id": batch["space_id"].to(device),
                "targets_z": official_targets(batch["targets"], model.target_stats, device)}

    def validate(self, model: nn.Module, val: ShardList, cfg: Any, device: torch.device, rules: Any
                 ) -> dict[str, float]:
        """disse-eval's metrics of the model on ``val`` (their FOA through the same front end)."""
        loader = eval_loader(val, cfg.data.val_batch_size, cfg.data.val_num_workers, preset="foa")
        embedder = Embedder(model, "official", features=OfficialFeatureParams(), rules=rules, device=str(device),
                            zero_shot="single")
        emb, _ = embed_official(embedder, official_batches(loader, device), max_items=cfg.eval.max_items or None)
        return evaluate_embeddings(emb, rules)

    def exports(self, cfg: Any, state: dict, name: str) -> dict[str, dict]:
        """With ``train.export_release``: ``{file name: content}`` of the release layout beside each save
        (``latest.pt`` -> ``latest_release.pt``): ``{"model_state_dict": release keys, "epoch", "target_stats"}``,
        which the release's strict loader, ``disse-eval`` and ``disse-embed`` read as the released file."""
        if not cfg.train.export_release:
            return {}
        return {Path(name).stem + RELEASE_SUFFIX: release_layout(state["model"], state["epoch"],
                                                                 cfg.model.official.target_stats)}


def release_layout(model_state: dict[str, torch.Tensor], epoch: int, target_stats: dict | None) -> dict:
    """A DISSEOfficial state dict -> the release's checkpoint container (its key names are the model's own).
    ``target_stats`` goes in as a (3, 2) tensor (rows area_m2, distance_m, t30_ms; mean, std): the release's
    loader ignores entries it does not know."""
    out: dict[str, Any] = {"model_state_dict": {k: v.detach().cpu() for k, v in model_state.items()},
                           "epoch": int(epoch)}
    if target_stats:
        out["target_stats"] = stats_to_tensor(target_stats)
    return out
