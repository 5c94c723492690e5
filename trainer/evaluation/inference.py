"""One encoder interface over both presets, and the one inference loop over it.

:class:`ProjectEncoder` (DELSA) and :class:`OfficialEncoder` (the DISSE release) answer the same calls:
``audio(waveform, iv, w_scale)`` -> numpy columns, ``text(captions)`` and ``batch_text(batch)`` -> L2-normalised
text embeddings, ``inputs(foa)`` -> what ``audio`` takes for a recording. :func:`run` is the loop that
``disse-eval`` (shards, both presets), the trainer's validation and ``disse-embed`` (recordings) all use;
:func:`embed` and :func:`embed_official` turn its columns into an :class:`Embeddings` file.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from disse.pipeline.frontend import (fit_repeat_torch, intensity_features, normalise_level, official_intensity,
                                     official_intensity_torch)
from disse.schemas import CaptionRules, SchemaError, load_caption_rules
from disse.schemas.captions import prompt_ensemble
from disse.schemas.features import FeatureParams, OfficialFeatureParams
from disse.trainer.evaluation.embeddings import (BASELINE_ARRAYS, DESC_PREFIX, EMBEDDING_ARRAYS, ID_ARRAYS,
                                                 IV_MIN_DIRECTIVITY, PRED_ARRAYS, PROMPT_EMB_PREFIX,
                                                 PROMPT_LABEL_PREFIX, TRUE_ARRAYS, Embeddings)
from disse.trainer.model import physics
from disse.trainer.model.delsa import DELSA
from disse.trainer.model.official import CLIP_SAMPLES, DISSEOfficial, physical_units

ZERO_SHOT_PROMPTS = ("ensemble", "single")
# target arrays of a Batch's ``targets`` (real units)
_TARGETS = (("true_azimuth_deg", "azimuth_deg"), ("true_elevation_deg", "elevation_deg"),
            ("true_distance_m", "distance_m"), ("true_area_m2", "area_m2"), ("true_t30_ms", "t30_ms"))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


class Encoder:
    """What the evaluator and the embedder need from a model; one subclass per preset."""

    kind = ""

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
        self.model, self.device = model, device

    @property
    def has_audio(self) -> bool:
        return True

    @property
    def has_text(self) -> bool:
        return True

    def audio(self, waveform: torch.Tensor, iv: torch.Tensor, w_scale: torch.Tensor | None = None
              ) -> dict[str, np.ndarray]:
        """``waveform`` (B, T) W at 48 kHz (int16 PCM as stored, or float32 amplitude), ``iv`` (B, 6, ...) the
        preset's features -> ``audio_source``, ``audio_space`` (B, D) L2-normalised, ``iv_direction`` (B, 3) (the
        intensity-vector physics baseline, x front, y left, z up) and the model's physical outputs."""
        raise NotImplementedError

    def text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Each caption through both text heads -> ``{"source", "space"}`` (B, D) L2-normalised."""
        raise NotImplementedError

    def batch_text(self, batch: dict) -> dict[str, torch.Tensor]:
        """The text embeddings of a shard Batch, each head reading what the model reads in training."""
        return self.text(list(batch["caption"]))

    def inputs(self, foa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A recording's AmbiX FOA ``(4, T)`` float32, 48 kHz -> ``(waveform (T,), iv)`` for :meth:`audio`."""
        raise NotImplementedError


class ProjectEncoder(Encoder):
    """DELSA: shard features as stored; recordings levelled and featurised as ``disse-synth render`` does."""

    kind = "project"

    def __init__(self, model: DELSA, device: torch.device | str = "cpu", features: FeatureParams | None = None
                 ) -> None:
        super().__init__(model, device)
        self.features = features

    def audio(self, waveform, iv, w_scale=None):
        iv = iv.to(self.device)
        out = self.model.encode_audio(waveform.to(self.device), iv)
        real = physics.to_real_units(out["phys"])  # the model's normalised outputs -> real units
        cols = {"audio_source": _np(out["source"]), "audio_space": _np(out["space"]),
                "est_direction": _np(real["direction"])}
        for k in ("azimuth_deg", "elevation_deg", "distance_m", "area_m2", "t30_ms"):
            cols[f"est_{k}"] = _np(real[k])
        cols["iv_direction"] = _np(physics.intensity_direction(iv, IV_MIN_DIRECTIVITY))  # no learning
        return cols

    def text(self, captions):
        tokens = {k: v.to(self.device) for k, v in self.model.tokenize(list(captions)).items()}
        return self.model.encode_text(tokens)

    def batch_text(self, batch):
        # the model decides which caption each text head reads (DELSA.text_pairs), as in training
        return self.model.encode_batch_text(batch, self.device)

    def inputs(self, foa):
        foa, _gain = normalise_level(foa)
        return foa[0].copy(), intensity_features(foa, self.features)


def official_iv_direction(iv: torch.Tensor) -> np.ndarray:
    """The intensity-vector physics baseline on official-preset features ``(B, 6, 201, 1601)`` ([act Y, Z, X]
    first): the summed active intensity (every bin a unit vector, so the sum weighs bins equally) as an
    ``(B, 3)`` unit vector x front, y left, z up (AmbiX), the frame of ``iv_direction``. No learning."""
    act = iv[:, :3].double().sum(dim=(2, 3))              # (B, 3): Y, Z, X
    v = act[:, [2, 0, 1]]                                  # -> x, y, z
    return (v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)).float().numpy()


def official_inputs(batch: dict, device: torch.device | str, params: OfficialFeatureParams | None = None
                    ) -> dict[str, torch.Tensor]:
    """A batch read with inputs ``"foa"`` (``foa`` (B, 4, T) AmbiX at 48 kHz, int16 PCM or float, and ``w_scale``) ->
    the release's model inputs on ``device``, computed there in torch (the GPU when there is one): ``i_act``,
    ``i_rea`` (B, 3, 201, 1601) (:func:`disse.pipeline.official_features.official_intensity_torch`) and ``omni_48k``
    (B, 480000) = W x ``w_scale``, tiled / cropped as the release does. No gradients."""
    foa = batch["foa"].to(device, non_blocking=True)
    foa = foa.to(torch.float32) * (2.0 ** -15) if foa.dtype == torch.int16 else foa.to(torch.float32)
    i_act, i_rea = official_intensity_torch(foa, params)
    omni = fit_repeat_torch(foa[:, 0], CLIP_SAMPLES)
    if batch.get("w_scale") is not None:
        omni = omni * batch["w_scale"].to(device, torch.float32)[:, None]
    return {"i_act": i_act, "i_rea": i_rea, "omni_48k": omni}


def official_batches(loader: Iterable[dict], device: torch.device | str,
                     params: OfficialFeatureParams | None = None) -> Iterable[dict]:
    """Batches of inputs ``"foa"`` -> batches the :class:`OfficialEncoder` reads (``waveform`` = ``omni_48k``, ``iv`` =
    [i_act, i_rea] (B, 6, 201, 1601)), via :func:`official_inputs`; the other entries are kept."""
    for batch in loader:
        x = official_inputs(batch, device, params)
        out = {k: v for k, v in batch.items() if k not in ("foa", "w_scale")}
        out["waveform"], out["iv"] = x["omni_48k"], torch.cat([x["i_act"], x["i_rea"]], dim=1)
        yield out


class OfficialEncoder(Encoder):
    """The release: ``omni_48k`` = W (de-gained by ``w_scale`` on the official grid), ``i_act`` / ``i_rea`` the
    16 kHz intensity of its front end; the raw head outputs (``official_direction`` (B, 2), ``official_*_z``)."""

    kind = "official"

    def __init__(self, model: DISSEOfficial, device: torch.device | str = "cpu",
                 features: OfficialFeatureParams | None = None) -> None:
        super().__init__(model, device)
        self.features = features or OfficialFeatureParams()

    @property
    def has_audio(self) -> bool:
        return self.model.audio_encoder is not None

    @property
    def has_text(self) -> bool:
        return self.model.text_encoder is not None

    def audio(self, waveform, iv, w_scale=None):
        if waveform.dtype == torch.int16:  # stored PCM: the release's omni_48k = W / 2**15 * w_scale
            scale = w_scale[:, None] if w_scale is not None else 1.0
            waveform = (waveform.to(torch.float64) * (2.0 ** -15) * scale).to(torch.float32)
        out = self.model.encode_audio({"i_act": iv[:, :3].float(), "i_rea": iv[:, 3:].float(), "omni_48k": waveform})
        cols = {"audio_source": _np(F.normalize(out["audio_source_emb"].float(), dim=-1)),
                "audio_space": _np(F.normalize(out["audio_space_emb"].float(), dim=-1)),
                "official_direction": _np(out["direction"])}
        for name, k in (("official_area_z", "area"), ("official_distance_z", "distance"),
                        ("official_reverb_z", "reverb")):
            cols[name] = _np(out[k].squeeze(-1))
        stats = getattr(self.model, "target_stats", None)
        if stats:  # a model trained here carries its training split's statistics: the heads in m², m, ms
            units = physical_units(out, stats)
            for name, key in (("est_area_m2", "area_m2"), ("est_distance_m", "distance_m"), ("est_t30_ms", "t30_ms")):
                cols[name] = units[key].float().cpu().numpy()
        cols["iv_direction"] = official_iv_direction(iv.cpu())
        return cols

    def text(self, captions):
        out = self.model.encode_text(list(captions))
        return {"source": F.normalize(out["text_source_emb"].float(), dim=-1),
                "space": F.normalize(out["text_space_emb"].float(), dim=-1)}

    def inputs(self, foa):
        i_act, i_rea = official_intensity(foa, self.features)
        iv = np.concatenate([np.asarray(i_act, np.float32), np.asarray(i_rea, np.float32)])
        return np.ascontiguousarray(foa[0], np.float32), iv


def encoder_for(model: torch.nn.Module, device: torch.device | str = "cpu", features: Any = None) -> Encoder:
    """The encoder of a model: :class:`ProjectEncoder` for DELSA, :class:`OfficialEncoder` for DISSEOfficial."""
    if isinstance(model, DISSEOfficial):
        return OfficialEncoder(model, device, features)
    return ProjectEncoder(model, device, features)


@torch.no_grad()
def zero_shot_prototypes(encoder: Encoder, rules: CaptionRules, kind: str = "ensemble", batch_size: int = 128
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per attribute: ``(labels (L,), text-space prototypes (L, D))`` for zero-shot classification.

    ``"ensemble"`` (default): the mean, re-normalised, of the text space embeddings of every spatial
    caption carrying the label (:func:`disse.schemas.captions.prompt_ensemble`: all label combinations,
    i.e. marginalised over the other attributes). ``"single"``: one prompt per label from the rule
    table's ``prompt_template`` ("A sound {phrase}.").
    """
    if kind not in ZERO_SHOT_PROMPTS:
        raise SchemaError(f"must be one of {list(ZERO_SHOT_PROMPTS)}, got {kind!r}", field="zero_shot_prompts")
    was_training = encoder.model.training
    encoder.model.eval()  # the trainer's validation calls this mid-run: no dropout in the prompts
    try:
        return _prototypes(encoder, rules, kind, batch_size)
    finally:
        encoder.model.train(was_training)


def _prototypes(encoder: Encoder, rules: CaptionRules, kind: str, batch_size: int
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    if kind == "single":
        for attr in rules.attributes:
            labelled = rules.prompts(attr)
            out[attr] = (np.array(list(labelled)), _np(encoder.text(list(labelled.values()))["space"]))
        return out
    combos = prompt_ensemble(rules)
    texts = [c for _, c in combos]
    emb = np.concatenate([_np(encoder.text(texts[i:i + batch_size])["space"])
                          for i in range(0, len(texts), batch_size)]).astype(np.float64)
    for attr in rules.attributes:
        labels = rules.attributes[attr].labels
        protos = np.stack([emb[[d[attr] == lab for d, _ in combos]].mean(0) for lab in labels])
        protos /= np.linalg.norm(protos, axis=1, keepdims=True).clip(1e-12)
        out[attr] = (np.array(labels), protos.astype(np.float32))
    return out


def run(encoder: Encoder, batches: Iterable[dict], *, with_text: bool = True, max_items: int | None = None
        ) -> dict[str, Any]:
    """The one inference loop: every batch through ``encoder`` in eval mode, without gradients.

    A batch holds ``waveform``, ``iv`` (and ``w_scale``) for the audio side; a shard Batch (docs/internals.md)
    also its captions (text columns ``text_source``, ``text_space`` when ``with_text`` and the model has a text
    side), ids, keys, targets (``true_*``) and ``descriptors``. Returns numpy columns cut to ``max_items``, and
    ``descriptors`` as a list of dicts; the model's train / eval mode is restored afterwards.
    """
    model = encoder.model
    was_training = model.training
    model.eval()
    cols: dict[str, list] = {}
    descriptors: list[dict] = []
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                for k, v in encoder.audio(batch["waveform"], batch["iv"], batch.get("w_scale")).items():
                    cols.setdefault(k, []).append(v)
                if with_text and encoder.has_text and "caption" in batch:
                    text = encoder.batch_text(batch)
                    cols.setdefault("text_source", []).append(_np(text["source"]))
                    cols.setdefault("text_space", []).append(_np(text["space"]))
                if "source_id_str" in batch:
                    cols.setdefault("source_id", []).extend(batch["source_id_str"])
                    cols.setdefault("space_id", []).extend(batch["space_id_str"])
                    tg = batch["targets"]
                    for name, k in _TARGETS:
                        cols.setdefault(name, []).append(np.asarray(tg[k].cpu() if torch.is_tensor(tg[k]) else tg[k],
                                                                    dtype=np.float32))
                descriptors.extend(batch.get("descriptors", ()))
                cols.setdefault("key", []).extend(batch["key"])
                n += len(batch["key"])
                if max_items is not None and n >= max_items:
                    break
    finally:
        model.train(was_training)
    if n == 0:
        raise SchemaError("the loader yielded no samples", field="shards")
    stop = n if max_items is None else min(n, max_items)
    out: dict[str, Any] = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else np.array(v))[:stop]
                           for k, v in cols.items()}
    out["descriptors"] = descriptors[:stop]
    return out


def embed(model: Any, loader: Iterable[dict], device: torch.device | str, rules: CaptionRules | None = None,
          max_items: int | None = None, zero_shot: str = "ensemble") -> Embeddings:
    """This project's model (DELSA, or its :class:`ProjectEncoder`) over every batch of ``loader`` (the Batch
    contract of docs/internals.md) -> :class:`Embeddings`.

    Audio -> source/space embeddings, physical predictions in real units (``pred_*``) and the intensity-vector
    baseline ``iv_direction``; captions -> text embeddings (which caption feeds which head is the model's
    ``text_input``, as in training); zero-shot class prototypes from the caption rules
    (:func:`zero_shot_prototypes`, ``"ensemble"`` or ``"single"``). Stops after ``max_items`` when given.
    """
    encoder = model if isinstance(model, Encoder) else ProjectEncoder(model, device)
    rules = rules if rules is not None else load_caption_rules()
    cols = run(encoder, loader, max_items=max_items)
    keep = EMBEDDING_ARRAYS + ID_ARRAYS + TRUE_ARRAYS + BASELINE_ARRAYS + ("key",)
    arrays = {k: v for k, v in cols.items() if k in keep}
    arrays.update({p: cols["est_" + p[len("pred_"):]] for p in PRED_ARRAYS})
    for attr in rules.attributes:
        labels = [str(d.get(attr, "")) for d in cols["descriptors"]]
        if all(labels):
            arrays[DESC_PREFIX + attr] = np.array(labels)
    for attr, (labels, e) in zero_shot_prototypes(encoder, rules, zero_shot).items():
        arrays[PROMPT_LABEL_PREFIX + attr], arrays[PROMPT_EMB_PREFIX + attr] = labels, e
    return Embeddings.from_arrays(arrays, where="embedded shards")


def embed_official(embedder: Any, loader: Iterable[dict], max_items: int | None = None
                   ) -> tuple[Embeddings | None, dict[str, np.ndarray]]:
    """Embed official-preset shards (``eval_loader(..., preset="official")``) with the released model.

    ``embedder``: a :class:`disse.trainer.evaluation.embedder.Embedder` of kind ``official`` (its encoder, rules
    and zero-shot prompts). Per sample, as the release's ``infer``: ``i_act``, ``i_rea`` from the features,
    ``omni_48k`` = stored W x ``w_scale`` (the grid's de-gain, :func:`disse.trainer.data.loader.omni_scale`); the
    caption through both text heads; every embedding L2-normalised. Also the targets, ``iv_direction``, stored
    descriptors and zero-shot prototypes. The released 2-d direction head is not mapped to ``pred_direction``
    (only its angle in the (az, el) plane means anything; docs/official.md).

    Returns ``(Embeddings, release-layout arrays)``; without a text side (no RoBERTa folder) the first is
    None and the arrays hold the audio embeddings only (the release's IIDR and intra-modal tasks apply).
    """
    cols = run(embedder.encoder, loader, max_items=max_items)
    stop = len(cols["key"])
    official = {"audio_source": cols["audio_source"], "audio_spatial": cols["audio_space"],
                "source_id": cols["source_id"].astype(str), "spatial_id": cols["space_id"].astype(str)}
    if not embedder.has_text:
        return None, official
    official.update(text_source=cols["text_source"], text_spatial=cols["text_space"])
    keep = EMBEDDING_ARRAYS + ID_ARRAYS + TRUE_ARRAYS + ("iv_direction", "key")
    arrays = {k: v for k, v in cols.items() if k in keep}
    # real units where the model carries its training statistics (never the 2-d direction: docs/official.md)
    arrays.update({p: cols["est_" + p[len("pred_"):]] for p in PRED_ARRAYS if "est_" + p[len("pred_"):] in cols})
    for attr, (labels, protos) in embedder.prompts().items():
        truth = [str(d[attr]) for d in cols["descriptors"] if attr in d]
        # zero-shot is scored only where every item's label has a prompt (the release's rules give "none"
        # where no rule matches, and "none" has no prompt)
        if len(truth) == stop and set(truth) <= set(np.asarray(labels).astype(str)):
            arrays[DESC_PREFIX + attr] = np.array(truth)
            arrays[PROMPT_LABEL_PREFIX + attr], arrays[PROMPT_EMB_PREFIX + attr] = labels, protos
    return Embeddings.from_arrays(arrays, where="embedded shards"), official
