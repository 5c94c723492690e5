"""DELSA losses: multi-positive symmetric contrastive loss for the source and space pairs, physical losses.

The loss takes *precomputed* features, so the trainer can all-gather them across ranks and, for
gradient accumulation, concatenate cached (detached) features of other micro-batches with the
current micro-batch's live features (open_clip's ``accum_freq`` scheme) - the loss is then exact over
the whole accumulated batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from disse.trainer.model.physics import DEFAULT_STATS, SCALARS, PhysicsStats, normalize_targets


@dataclass
class LossConfig:
    """The ``loss:`` section of configs/{demo,paper}.yaml: term weights and temperature clamp."""

    source_weight: float = 1.0       # contrastive, audio source <-> text source, positives = same source_id
    space_weight: float = 1.0        # contrastive, audio space <-> text space, positives = same space_id
    direction_weight: float = 1.0    # 1 - cos(predicted, true direction)
    area_weight: float = 1.0         # MSE on normalised log area (disse.trainer.model.physics)
    distance_weight: float = 1.0     # MSE on normalised log distance
    t30_weight: float = 1.0          # MSE on normalised log T30
    # contrastive, audio space <-> text space, positives = same label of ONE descriptor (direction,
    # elevation, ...), averaged over descriptors: the exact space_id has few positives per batch, and
    # without this the space pair aligns on the easiest descriptor only (measured: direction at chance)
    attribute_weight: float = 0.0
    # cross-entropy of one classifier per descriptor shared by the audio and the text space embedding
    # (model.descriptor_classes), mean of both modalities and all descriptors: each descriptor's labels
    # land in the same regions of both spaces, what zero-shot prototypes need (docs/spatial.md);
    # class-balanced within the batch (balanced_cross_entropy)
    descriptor_weight: float = 0.0
    # cross-entropy of the source adversary (model.source_adversary_buckets) on the audio spatial embedding;
    # its gradient reaches the embedding reversed, so the embedding unlearns which recording it heard
    source_adversary_weight: float = 0.0
    # contrastive loss of the source critic (model.source_critic_hidden): from the audio spatial embedding it
    # picks the sample's own (detached) audio source embedding among the batch's; reversed at the embedding
    source_critic_weight: float = 0.0
    # normalised HSIC (kernel CKA) between the audio spatial and the detached audio source embeddings of the
    # batch: penalises any statistical dependence between the two, no extra parameters (independence())
    independence_weight: float = 0.0
    # the same HSIC the other way round: between the audio SOURCE and the detached audio spatial embeddings, so
    # the source embedding unlearns the room that the spatial embedding holds (AX-SPA / X-SPA, docs/spatial.md)
    source_independence_weight: float = 0.0
    # and on the text side: HSIC between the text source embedding (of the full caption) and the detached text
    # spatial embedding, so the text source head reads past the caption's spatial words (X-SPA, docs/spatial.md)
    text_source_independence_weight: float = 0.0
    # HSIC between the audio SOURCE embedding and the sample's true spatial parameters (direction, area,
    # distance, T30 from the batch's targets): the source embedding unlearns the room itself, not only what
    # the spatial embedding has learnt of it (docs/spatial.md, rows o). The scalars are each preset's own
    # normalised targets: log units here, the release's linear z-scores in the official preset
    room_independence_weight: float = 0.0
    # 1 - cosine between the text SOURCE embedding of the full caption and the (detached) one of the clip's own
    # caption, without spatial words: the text source head reads past the spatial words, so a source query
    # cannot pick, among one sound's captions, the one of its own room (X-SPA a2t, docs/spatial.md, rows o)
    source_caption_distill_weight: float = 0.0
    # false: the source contrast is split by side. The audio source embedding learns against the (detached)
    # text source embedding of the clip's own caption, which has no spatial words, and the text source head
    # learns the full caption against the detached audio. With one term, the audio side is rewarded for
    # matching whatever the spatial words leave in the full caption's embedding, i.e. for knowing the room
    # (X-SPA a2t, docs/spatial.md, rows p). The logged "source" term is then the sum of the two halves, and the
    # source temperature learns from both (its gradient about doubles: Adam's steps hardly change; in the
    # official preset, whose one temperature serves both pairs, the source pair then weighs ~2:1 in it)
    full_caption_source_grad: bool = True
    critic_temperature: float = 0.1
    # false: the audio space embedding of a sample whose text space head read the FULL caption (source words
    # included; data.space_caption_drop decides which) gets no gradient from the space and per-descriptor
    # contrasts: only the text side moves towards it. A full caption names the sound, so matching it rewards
    # a spatial embedding that knows the sound (the leakage checks); the spatial-caption samples still train
    # both sides, and the text head learns to read past source words (docs/spatial.md, ablation)
    full_caption_space_grad: bool = True
    # for the samples whose text space head read the spatial caption (data.space_caption_drop): 1 - cosine
    # between the space head's embedding of the FULL caption and the (detached) embedding of the spatial
    # caption. The text head learns to read past source words, so full captions find the space without the
    # audio side ever being asked to know the sound (docs/spatial.md, ablation)
    caption_distill_weight: float = 0.0
    physics: bool = True             # false: no physical loss (the release's disable_physics_loss)
    max_logit_scale: float = 100.0   # exp(log scale) clamped to [min, max] (CLIP: 100)
    min_logit_scale: float = 1.0

    @property
    def reads_own_captions(self) -> bool:
        """Whether the loss needs ``source_of_source_text``, the text source embeddings of the clips' own
        captions (one more text pass per micro-batch, without gradient)."""
        return self.source_caption_distill_weight > 0 or not self.full_caption_source_grad


def multi_positive_contrastive(a: torch.Tensor, t: torch.Tensor, ids: torch.Tensor,
                               logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric supervised contrastive loss with several positives per query (scalar).

    ``a``, ``t``: ``(N, D)`` paired audio / text embeddings (row i of each comes from sample i; rows
    may be gathered from all ranks), normally L2-normalised. ``ids``: ``(N,)``; j is a positive of i
    iff ``ids[j] == ids[i]`` (so i is always its own positive). ``logit_scale``: the multiplicative
    scale s = exp(log temperature), already clamped. With ``L = s * a @ t.T`` and ``P_i`` the
    positives of i::

        loss_a2t = mean_i [ -1/|P_i| * sum_{j in P_i} log softmax_j(L[i, :]) ]
        loss_t2a = mean_i [ -1/|P_i| * sum_{j in P_i} log softmax_j(L[:, i]) ]
        loss     = (loss_a2t + loss_t2a) / 2

    With all ids distinct this is exactly CLIP's InfoNCE,
    ``(cross_entropy(L, arange) + cross_entropy(L.T, arange)) / 2``. Computed in float32 at least.
    """
    if a.shape != t.shape or a.dim() != 2:
        raise ValueError(f"a and t must both be (N, D), got {tuple(a.shape)} and {tuple(t.shape)}")
    if ids.shape != (a.shape[0],):
        raise ValueError(f"ids must be ({a.shape[0]},), got {tuple(ids.shape)}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, t.dtype), torch.float32)  # bf16 AMP -> fp32
    logits = logit_scale * (a.to(dtype) @ t.to(dtype).T)
    pos = (ids[:, None] == ids[None, :]).to(logits.dtype)
    n_pos = pos.sum(1)  # >= 1: the diagonal; pos is symmetric, so it serves both directions
    a2t = -((F.log_softmax(logits, dim=1) * pos).sum(1) / n_pos).mean()
    t2a = -((F.log_softmax(logits.T, dim=1) * pos).sum(1) / n_pos).mean()
    return 0.5 * (a2t + t2a)


def critic_loss(guess: torch.Tensor, source: torch.Tensor, source_id: torch.Tensor, temperature: float = 0.1
                ) -> torch.Tensor:
    """Source critic's loss (scalar): each ``guess`` ``(B, D)`` (unit rows) must pick its sample's ``source``
    embedding ``(B, D)`` among the batch's; samples of the same ``source_id`` ``(B,)`` are all positives."""
    logits = guess @ F.normalize(source, dim=-1).T / temperature
    pos = (source_id[:, None] == source_id[None, :]).float()
    return -(torch.log_softmax(logits, dim=1) * pos).sum(1).div(pos.sum(1)).mean()


def _kernel(x: torch.Tensor) -> torch.Tensor:
    """Gaussian-kernel Gram matrix ``(B, B)`` of ``x`` ``(B, D)`` with a zero diagonal; bandwidth the median
    pairwise squared distance (detached)."""
    d2 = torch.cdist(x, x).square()
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    k = torch.exp(-d2 / d2.detach()[off].median().clamp_min(1e-6))
    return k * off


def _hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al., 2012) of two zero-diagonal Gram matrices ``(n, n)``, n >= 4."""
    n = k.shape[0]
    kl = k @ l
    return (torch.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * kl.sum() / (n - 2)) / (n * (n - 3))


def independence(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Normalised unbiased HSIC (debiased kernel CKA) of two batches of embeddings ``(B, Dx)``, ``(B, Dy)``,
    B >= 4: about 0 when they are independent (an unbiased estimate: it can dip below 0, clamped), 1 when one
    determines the other's geometry. Scalar."""
    if x.shape[0] < 4:
        return x.new_zeros(())
    kx, ky = _kernel(x), _kernel(y)
    hxy = _hsic(kx, ky)
    return (hxy / (_hsic(kx, kx) * _hsic(ky, ky)).clamp_min(1e-12).sqrt()).clamp_min(0.0)


def room_parameters(direction: torch.Tensor, scalars: list[torch.Tensor]) -> torch.Tensor:
    """A sample's true spatial parameters as one vector per row, ``(B, 3 + len(scalars))``: the unit source
    direction ``(B, 3)`` and normalised scalars (area, distance, T30) ``(B,)`` each; what
    ``room_independence`` compares the source embedding with."""
    return torch.cat([direction.float()] + [s.float()[:, None] for s in scalars], dim=1)


def independence_penalties(cfg: LossConfig, audio: dict[str, torch.Tensor], text: dict[str, torch.Tensor],
                           room: torch.Tensor | None = None) -> dict[str, tuple[float, torch.Tensor]]:
    """The HSIC penalties ``cfg`` turns on, ``{term: (weight, value)}``: ``independence`` (audio space vs
    detached audio source), ``source_independence`` (audio source vs detached audio space),
    ``text_source_independence`` (text source vs detached text space) and ``room_independence`` (audio source
    vs ``room``, :func:`room_parameters` ``(B, 6)``; skipped without it). ``audio`` / ``text``: ``"source"``
    and ``"space"`` embeddings ``(B, D)``, L2-normalised; both presets' losses call this."""
    pairs = [("independence", cfg.independence_weight, audio["space"], audio["source"]),
             ("source_independence", cfg.source_independence_weight, audio["source"], audio["space"]),
             ("text_source_independence", cfg.text_source_independence_weight, text["source"], text["space"])]
    if room is not None:
        pairs.append(("room_independence", cfg.room_independence_weight, audio["source"], room))
    return {name: (w, independence(x.float(), y.detach().float())) for name, w, x, y in pairs if w}


def distillation_gap(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x, target)`` per row ``(B,)`` of two embedding batches ``(B, D)``; ``target`` detached, so only
    ``x`` moves (the caption distillation terms of both presets)."""
    return 1.0 - F.cosine_similarity(x.float(), target.detach().float(), dim=-1)


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits (B, n)`` for ``target (B,)`` (-1 = ignored) with each class present in
    the batch weighted by 1 / its count: every label counts equally, as in the balanced accuracy
    zero-shot is scored with (rare labels, e.g. sources above or below, would barely count otherwise)."""
    valid = target >= 0
    counts = torch.bincount(target[valid], minlength=logits.shape[1]).to(logits.dtype)
    weight = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-1)


def source_contrast(audio_source: torch.Tensor, text: dict, source_id: torch.Tensor, scale: torch.Tensor | float,
                    full_caption_grad: bool = True) -> torch.Tensor:
    """The source pair's contrast (scalar). ``audio_source`` ``(N, D)``; ``text``: ``source`` ``(N, D)`` (the
    caption the source head read) and, when ``full_caption_grad`` is false, ``source_of_source_text`` ``(N, D)``
    (the clip's own caption, detached). True: one multi-positive contrast, both sides trained by it. False: the
    audio side learns against the own captions, the text side learns its captions against the detached audio
    (``LossConfig.full_caption_source_grad``)."""
    if full_caption_grad:
        return multi_positive_contrastive(audio_source, text["source"], source_id, scale)
    if "source_of_source_text" not in text:
        raise ValueError("full_caption_source_grad false needs the own captions' text source embeddings "
                         "(text['source_of_source_text'])")
    return (multi_positive_contrastive(audio_source, text["source_of_source_text"].detach(), source_id, scale)
            + multi_positive_contrastive(audio_source.detach(), text["source"], source_id, scale))


class DELSALoss(nn.Module):
    """``(audio_out, text_out, batch, log_scale_source, log_scale_space) -> (total, {term: detached tensor})``.

    ``audio_out``: :meth:`DELSA.encode_audio` output (``source``, ``space``, ``phys``); ``text_out``:
    ``{"source", "space"}`` aligned row-by-row with the audio features. ``batch``: ``source_id``,
    ``space_id`` ``(N,)`` aligned with the features, and ``targets`` in real units aligned with
    ``audio_out["phys"]`` (omit ``targets`` to skip the physical terms). ``log_scale_*``: the model's
    learnable log temperatures; clamped here so that s stays in [min, max]_logit_scale.
    Terms: ``source``, ``space``, ``direction``, ``area``, ``distance``, ``t30`` (unweighted),
    ``scale_source``, ``scale_space`` (the clamped scales) and ``total``; all detached, left on device
    (call ``.item()`` only when logging).
    """

    def __init__(self, cfg: LossConfig = LossConfig(), stats: PhysicsStats = DEFAULT_STATS) -> None:
        super().__init__()
        if not 0 < cfg.min_logit_scale <= cfg.max_logit_scale:
            raise ValueError("loss: need 0 < min_logit_scale <= max_logit_scale")
        self.cfg, self.stats = cfg, stats
        self._log_bounds = (math.log(cfg.min_logit_scale), math.log(cfg.max_logit_scale))

    def scale(self, log_scale: torch.Tensor) -> torch.Tensor:
        return torch.clamp(log_scale, *self._log_bounds).exp()

    def forward(self, audio_out: dict, text_out: dict, batch: dict, log_scale_source: torch.Tensor,
                log_scale_space: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        s_src, s_spa = self.scale(log_scale_source), self.scale(log_scale_space)
        audio_space = audio_out["space"]
        if not c.full_caption_space_grad and batch.get("space_caption_dropped") is not None:
            keep = batch["space_caption_dropped"].to(audio_space.dtype)[:, None]  # 1 = spatial caption: grad flows
            audio_space = audio_space.detach() + keep * (audio_space - audio_space.detach())
        terms: dict[str, torch.Tensor] = {
            "source": source_contrast(audio_out["source"], text_out, batch["source_id"], s_src,
                                      c.full_caption_source_grad),
            "space": multi_positive_contrastive(audio_space, text_out["space"], batch["space_id"], s_spa),
        }
        total = c.source_weight * terms["source"] + c.space_weight * terms["space"]
        if c.attribute_weight and batch.get("attribute_ids") is not None:
            ids = batch["attribute_ids"]
            terms["attributes"] = torch.stack([multi_positive_contrastive(audio_space, text_out["space"],
                                                                          ids[:, a], s_spa)
                                               for a in range(ids.shape[1])]).mean()
            total = total + c.attribute_weight * terms["attributes"]
        if c.descriptor_weight and batch.get("descriptor_index") is not None and "descriptors" in audio_out:
            idx = batch["descriptor_index"]
            ce = [balanced_cross_entropy(out["descriptors"][attr].float(), idx[:, a])
                  for a, attr in enumerate(sorted(audio_out["descriptors"])) if (idx[:, a] >= 0).any()
                  for out in (audio_out, text_out)]
            if ce:
                terms["descriptors"] = torch.stack(ce).mean()
                total = total + c.descriptor_weight * terms["descriptors"]
        if c.source_adversary_weight and "source_adversary" in audio_out:
            logits = audio_out["source_adversary"].float()
            terms["source_adversary"] = F.cross_entropy(logits, torch.remainder(batch["source_id"], logits.shape[1]))
            total = total + c.source_adversary_weight * terms["source_adversary"]
        if c.source_critic_weight and "source_critic" in audio_out:
            terms["source_critic"] = critic_loss(audio_out["source_critic"].float(), audio_out["source"].detach().float(),
                                                 batch["source_id"], c.critic_temperature)
            total = total + c.source_critic_weight * terms["source_critic"]
        tgt = None
        if batch.get("targets") is not None and (c.physics or c.room_independence_weight):
            device = audio_out["source"].device
            tgt = normalize_targets({k: v.to(device) if torch.is_tensor(v) else v
                                     for k, v in batch["targets"].items()}, self.stats)
            if tgt["direction"].shape[0] != audio_out["source"].shape[0]:
                raise ValueError(f"targets hold {tgt['direction'].shape[0]} samples, "
                                 f"the audio embeddings {audio_out['source'].shape[0]}")
        room = room_parameters(tgt["direction"], [tgt[k] for k in SCALARS]) if tgt is not None else None
        for name, (weight, value) in independence_penalties(c, audio_out, text_out, room).items():
            terms[name] = value
            total = total + weight * value
        dropped = batch.get("space_caption_dropped")
        if c.caption_distill_weight and dropped is not None and "space_of_caption" in text_out:
            # a masked mean, not boolean indexing: no host sync per step; 0 when no sample was dropped
            w = dropped.to(text_out["space"].dtype)
            gap = distillation_gap(text_out["space_of_caption"], text_out["space"])
            terms["caption_distill"] = (w * gap).sum() / w.sum().clamp_min(1.0)
            total = total + c.caption_distill_weight * terms["caption_distill"]
        if c.source_caption_distill_weight and "source_of_source_text" in text_out:
            terms["source_caption_distill"] = distillation_gap(text_out["source"], text_out["source_of_source_text"]).mean()
            total = total + c.source_caption_distill_weight * terms["source_caption_distill"]
        if c.physics and tgt is not None and "phys" in audio_out:
            phys = audio_out["phys"]  # as many rows as the audio embeddings: the count was checked with tgt
            pred_dir = phys["direction"].float()
            terms["direction"] = (1.0 - F.cosine_similarity(pred_dir, tgt["direction"], dim=-1)).mean()
            total = total + c.direction_weight * terms["direction"]
            for name in SCALARS:
                terms[name] = F.mse_loss(phys[name].float(), tgt[name])
                total = total + getattr(c, f"{name}_weight") * terms[name]
        out = {k: v.detach() for k, v in terms.items()}
        out["scale_source"], out["scale_space"] = s_src.detach(), s_spa.detach()
        out["total"] = total.detach()
        return total, out
