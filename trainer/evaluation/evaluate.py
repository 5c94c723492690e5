"""Evaluation: the embeddings file format, embedding a shard set with a model, and scoring.

``evaluate_embeddings`` is the one scoring function: ``disse-eval`` and the trainer's validation both
call it, so their figures are the same. The ``.npz`` format (:class:`Embeddings`) lets any model's
embeddings be scored the same way (docs/evaluation.md lists every array).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

from disse.schemas import CaptionRules, SchemaError, load_caption_rules
from disse.trainer.evaluation import metrics as M
from disse.trainer.evaluation.embeddings import (  # noqa: F401  (the documented disse.trainer.evaluate names)
    BASELINE_ARRAYS,
    DESC_PREFIX,
    DIRECTION_ARRAYS,
    EMBEDDING_ARRAYS,
    FORMAT_VERSION,
    ID_ARRAYS,
    IV_MIN_DIRECTIVITY,
    PRED_ARRAYS,
    PROMPT_EMB_PREFIX,
    PROMPT_LABEL_PREFIX,
    TRUE_ARRAYS,
    TRUE_OF_QUANTITY,
    Embeddings,
    load_embeddings_any,
    to_official_arrays,
)

# scalar physical quantities scored by MAE: (prediction, target, metric name)
MAE_QUANTITIES = (("pred_distance_m", "true_distance_m", "distance_m"),
                  ("pred_area_m2", "true_area_m2", "area_m2"),
                  ("pred_t30_ms", "true_t30_ms", "t30_ms"))
# retrieval figures, in the order of metrics.json: cross-modal, cross-modal leakage, audio-side leakage
RETRIEVAL_TASKS = ("SRC", "SPA", "X-SRC", "X-SPA", "AX-SRC", "AX-SPA")

# ----------------------------------------------------------------------------------------------
# scoring

def evaluate_embeddings(emb: Embeddings, rules: CaptionRules | None = None, *, ks: tuple[int, ...] = (1, 5, 10),
                        map_k: int = 10, chunk_size: int = M.DEFAULT_CHUNK) -> dict[str, float]:
    """Every metric of disse-eval as a flat ``{key: value}`` dict (keys listed in docs/evaluation.md).

    Retrieval: ``SRC``, ``SPA``, ``X-SRC``, ``X-SPA`` x ``t2a``/``a2t`` x ``R@k``/``mAP@k`` (+ ``/chance``,
    ``n_queries``); X-checks leave the query's own pair out (it shares both ids by construction).
    Audio-side leakage ``AX-SRC`` (audio_space -> audio_space by source_id) and ``AX-SPA`` (audio_source
    -> audio_source by space_id), direction ``a2a``, the query itself left out.
    ``IR_space``, ``IR_source`` with mean distances and pair counts; ``phys/...`` errors in real units;
    ``zeroshot/<attr>/...``. Missing optional inputs simply leave their keys out.
    """
    out: dict[str, float] = {"n_items": len(emb)}
    # one blocked pass per embedding serves two scorings: SRC and X-SPA, SPA and X-SRC
    ret = M.paired_retrieval(emb.text_source, emb.audio_source,
                             [M.IdSet("SRC", emb.source_id), M.IdSet("X-SPA", emb.space_id, exclude_self=True)],
                             ks, map_k, chunk_size)
    ret.update(M.paired_retrieval(emb.text_space, emb.audio_space,
                                  [M.IdSet("SPA", emb.space_id), M.IdSet("X-SRC", emb.source_id, exclude_self=True)],
                                  ks, map_k, chunk_size))
    # audio-side leakage: audio -> audio with the query left out (text captions carry no cross information,
    # so the cross-modal X-checks cannot see a leak that only the audio embedding holds)
    ret.update(M.self_retrieval(emb.audio_space, [M.IdSet("AX-SRC", emb.source_id, exclude_self=True)],
                                ks, map_k, chunk_size))
    ret.update(M.self_retrieval(emb.audio_source, [M.IdSet("AX-SPA", emb.space_id, exclude_self=True)],
                                ks, map_k, chunk_size))
    for task in RETRIEVAL_TASKS:  # a stable, readable key order
        out.update({k: v for k, v in ret.items() if k.startswith(task + "/")})
    for name, x, a, b, num, den in (
            ("IR_space", emb.audio_space, emb.source_id, emb.space_id, "same_source_diff_space", "same_space_diff_source"),
            ("IR_source", emb.audio_source, emb.space_id, emb.source_id, "same_space_diff_source", "same_source_diff_space")):
        r = M.invariance_ratio(x, a, b, chunk_size)
        out[name] = r["ratio"]
        out[f"{name}/chance"] = 1.0  # embeddings that ignore both ids have equal mean distances
        out[f"{name}/dist_{num}"], out[f"{name}/dist_{den}"] = r["dist_num"], r["dist_den"]
        out[f"{name}/pairs_{num}"], out[f"{name}/pairs_{den}"] = r["pairs_num"], r["pairs_den"]
    out.update(physical_metrics(emb))
    out.update(zero_shot_metrics(emb, rules, chunk_size))
    return out


def physical_metrics(emb: Embeddings) -> dict[str, float]:
    """Physical errors in real units (keys ``phys/...``, docs/evaluation.md).

    Direction: great-circle error (degrees) of ``pred_direction``, and of the intensity-vector physics
    baseline ``iv_direction`` on the same items (``phys/direction_err_deg/iv_baseline/...``), with
    ``phys/direction_err_deg/vs_iv_baseline`` = learned mean / baseline mean (< 1: the model beats
    physics). Scalars: MAE against the best constant guess.
    """
    p, out = emb.physical, {}
    true_dir = emb.true_direction()
    err = per_item_direction_error(emb)
    if err is not None:
        out.update({"phys/direction_err_deg/mean": float(err.mean()),
                    "phys/direction_err_deg/median": float(np.median(err)),
                    "phys/direction_err_deg/mean/chance": M.RANDOM_DIRECTION_ERROR_DEG,
                    "phys/direction_err_deg/median/chance": M.RANDOM_DIRECTION_ERROR_DEG})
    base = per_item_direction_error(emb, "iv_direction")
    if base is not None:
        out.update({"phys/direction_err_deg/iv_baseline/mean": float(base.mean()),
                    "phys/direction_err_deg/iv_baseline/median": float(np.median(base)),
                    "phys/direction_err_deg/iv_baseline/mean/chance": M.RANDOM_DIRECTION_ERROR_DEG,
                    "phys/direction_err_deg/iv_baseline/median/chance": M.RANDOM_DIRECTION_ERROR_DEG})
        if err is not None:
            out["phys/direction_err_deg/vs_iv_baseline"] = _ratio(float(err.mean()), float(base.mean()))
    if true_dir is not None and (err is not None or base is not None):
        out["phys/n"] = len(true_dir)
    for pred, true, name in MAE_QUANTITIES:
        if pred in p:
            out[f"phys/{name}/mae"] = M.mae(p[pred], p[true])
            out[f"phys/{name}/mae/chance"] = M.constant_baseline_mae(p[true])
            out["phys/n"] = len(p[true])
    return out


def _ratio(num: float, den: float) -> float:
    """num / den; inf when only the denominator is 0, NaN when both are."""
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def zero_shot_metrics(emb: Embeddings, rules: CaptionRules | None, chunk_size: int = M.DEFAULT_CHUNK
                      ) -> dict[str, float]:
    out = {}
    for attr, (labels, prompt_emb) in sorted(emb.prompts.items()):
        truth = emb.descriptor_labels(attr, rules)
        if truth is None:
            continue
        try:
            r = M.zero_shot_accuracy(emb.audio_space, prompt_emb, labels, truth, chunk_size)
        except ValueError as exc:
            raise SchemaError(str(exc), field=DESC_PREFIX + attr) from None
        out.update({f"zeroshot/{attr}/{k}": v for k, v in r.items()})
    return out


def per_item_direction_error(emb: Embeddings, which: str = "pred_direction") -> np.ndarray | None:
    """Angular error per item in degrees ``(N,)`` of the direction array ``which`` (``pred_direction``, the
    model, or ``iv_direction``, the intensity-vector baseline), or None without it or the targets."""
    true_dir = emb.true_direction()
    if which not in emb.physical or true_dir is None:
        return None
    return M.angular_error_deg(emb.physical[which], true_dir)


# ----------------------------------------------------------------------------------------------
# embedding a shard set with a model

def _to_device(tokens: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in tokens.items()}


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


ZERO_SHOT_PROMPTS = ("ensemble", "single")


def zero_shot_prototypes(model: Any, rules: CaptionRules, device: torch.device | str, kind: str = "ensemble",
                         batch_size: int = 128) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per attribute: ``(labels (L,), text-space prototypes (L, D))`` for zero-shot classification.

    ``"ensemble"`` (default): the mean, re-normalised, of the text space embeddings of every spatial
    caption carrying the label (:func:`disse.schemas.captions.prompt_ensemble`: all label combinations,
    i.e. marginalised over the other attributes). ``"single"``: one prompt per label from the rule
    table's ``prompt_template`` ("A sound {phrase}.").
    """
    if kind not in ZERO_SHOT_PROMPTS:
        raise SchemaError(f"must be one of {list(ZERO_SHOT_PROMPTS)}, got {kind!r}", field="zero_shot_prompts")
    out = {}
    if kind == "single":
        for attr in rules.attributes:
            labelled = rules.prompts(attr)
            tokens = _to_device(model.tokenize(list(labelled.values())), device)
            out[attr] = (np.array(list(labelled)), _np(model.encode_text(tokens)["space"]))
        return out
    from disse.schemas.captions import prompt_ensemble

    combos = prompt_ensemble(rules)
    texts = [c for _, c in combos]
    emb = np.concatenate([_np(model.encode_text(_to_device(model.tokenize(texts[i:i + batch_size]), device))["space"])
                          for i in range(0, len(texts), batch_size)]).astype(np.float64)
    for attr in rules.attributes:
        labels = rules.attributes[attr].labels
        protos = np.stack([emb[[d[attr] == lab for d, _ in combos]].mean(0) for lab in labels])
        protos /= np.linalg.norm(protos, axis=1, keepdims=True).clip(1e-12)
        out[attr] = (np.array(labels), protos.astype(np.float32))
    return out


def _append_ids_and_targets(cols: dict[str, list], batch: dict) -> None:
    """Ids, keys and real-unit targets (``true_*``) of a Batch onto the embedding columns."""
    cols["source_id"].extend(batch["source_id_str"])
    cols["space_id"].extend(batch["space_id_str"])
    cols["key"].extend(batch["key"])
    tg = batch["targets"]
    for name, k in (("true_azimuth_deg", "azimuth_deg"), ("true_elevation_deg", "elevation_deg"),
                    ("true_distance_m", "distance_m"), ("true_area_m2", "area_m2"), ("true_t30_ms", "t30_ms")):
        cols[name].append(np.asarray(tg[k].cpu() if torch.is_tensor(tg[k]) else tg[k], dtype=np.float32))


def embed(model: Any, loader: Iterable[dict], device: torch.device | str, rules: CaptionRules | None = None,
          max_items: int | None = None, zero_shot: str = "ensemble") -> Embeddings:
    """Run ``model`` over every batch of ``loader`` (the Batch contract of docs/internals.md).

    Audio -> source/space embeddings and physical predictions (mapped to real units with
    ``disse.trainer.model.physics.to_real_units``); captions -> text source / space embeddings through
    ``model.encode_batch_text`` (which caption feeds which head is the model's ``text_input``, as in
    training); zero-shot class prototypes from the caption rules (:func:`zero_shot_prototypes`, ``zero_shot``
    = ``"ensemble"`` or ``"single"``); the intensity features
    -> ``iv_direction``, the physics baseline (``physics.intensity_direction``). Stops after
    ``max_items`` when given. Batches of the loader are the Batch contract (disse.trainer.data.loader).
    """
    from disse.trainer.model import physics  # the model's normalised outputs -> real units

    rules = rules if rules is not None else load_caption_rules()
    cols: dict[str, list] = {k: [] for k in EMBEDDING_ARRAYS + ID_ARRAYS + PRED_ARRAYS + TRUE_ARRAYS
                             + BASELINE_ARRAYS + ("key",)}
    desc: dict[str, list] = {a: [] for a in rules.attributes}
    was_training = model.training
    model.eval()
    n = 0
    with torch.no_grad():
        for batch in loader:
            iv = batch["iv"].to(device)
            audio = model.encode_audio(batch["waveform"].to(device), iv)
            # the model decides which caption each text head reads (DELSA.text_pairs), as in training
            text = model.encode_batch_text(batch, device)
            cols["audio_source"].append(_np(audio["source"]))
            cols["audio_space"].append(_np(audio["space"]))
            cols["text_source"].append(_np(text["source"]))
            cols["text_space"].append(_np(text["space"]))
            _append_ids_and_targets(cols, batch)
            real = physics.to_real_units(audio["phys"])
            cols["pred_direction"].append(_np(real["direction"]))
            for name, k in (("pred_distance_m", "distance_m"), ("pred_area_m2", "area_m2"), ("pred_t30_ms", "t30_ms")):
                cols[name].append(_np(real[k]))
            cols["iv_direction"].append(_np(physics.intensity_direction(iv, IV_MIN_DIRECTIVITY)))  # no learning
            for d in batch["descriptors"]:
                for a in desc:
                    desc[a].append(str(d.get(a, "")))
            n += len(batch["key"])
            if max_items is not None and n >= max_items:
                break
        prompts = zero_shot_prototypes(model, rules, device, zero_shot)
    model.train(was_training)
    if n == 0:
        raise SchemaError("the loader yielded no samples", field="shards")
    stop = n if max_items is None else min(n, max_items)
    arrays = {k: (np.concatenate(v) if v and isinstance(v[0], np.ndarray) else np.array(v))[:stop]
              for k, v in cols.items()}
    arrays.update({DESC_PREFIX + a: np.array(v)[:stop] for a, v in desc.items() if all(v)})
    for attr, (labels, e) in prompts.items():
        arrays[PROMPT_LABEL_PREFIX + attr], arrays[PROMPT_EMB_PREFIX + attr] = labels, e
    return Embeddings.from_arrays(arrays, where="embedded shards")


def official_iv_direction(iv: torch.Tensor) -> np.ndarray:
    """The intensity-vector physics baseline on official-preset features ``(B, 6, 201, 1601)`` ([act Y, Z, X]
    first): the summed active intensity (every bin a unit vector, so the sum weighs bins equally) as an
    ``(B, 3)`` unit vector x front, y left, z up (AmbiX), the frame of ``iv_direction``. No learning."""
    act = iv[:, :3].double().sum(dim=(2, 3))              # (B, 3): Y, Z, X
    v = act[:, [2, 0, 1]]                                  # -> x, y, z
    return (v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)).float().numpy()


def embed_official(embedder: Any, loader: Iterable[dict], max_items: int | None = None
                   ) -> tuple["Embeddings | None", dict[str, np.ndarray]]:
    """Embed official-preset shards (``eval_loader(..., preset="official")``) with the released model.

    ``embedder``: a :class:`disse.trainer.evaluation.embedder.Embedder` of kind ``official``. Per sample, as the release's
    ``infer``: ``i_act``, ``i_rea`` from ``iv.npy``, ``omni_48k`` = stored W x ``w_scale`` (the grid's
    de-gain, :func:`disse.trainer.data.loader.omni_scale`); the caption (``text``; with the release's rules the
    caption and the spatial caption are one sentence) through both text heads; every embedding
    L2-normalised. Also the targets (``true_*``), the intensity baseline ``iv_direction``, stored
    descriptors and zero-shot prototypes from the embedder's rules. The released 2-d direction head is not
    mapped to ``pred_direction`` (only its angle in the (az, el) plane means anything; docs/official.md).

    Returns ``(Embeddings, release-layout arrays)``; without a text side (no RoBERTa folder) the first is
    None and the arrays hold the audio embeddings only (the release's IIDR and intra-modal tasks apply).
    """
    import torch.nn.functional as F

    model, with_text = embedder.model, embedder.has_text
    cols: dict[str, list] = {k: [] for k in ("audio_source", "audio_space", "text_source", "text_space", "source_id",
                                             "space_id", "key", "iv_direction") + TRUE_ARRAYS}
    desc: dict[str, list] = {}
    model.eval()
    n = 0
    with torch.no_grad():
        for batch in loader:
            iv = batch["iv"]
            scale = batch["w_scale"][:, None]
            omni = (batch["waveform"].to(torch.float64) * (2.0 ** -15) * scale).to(torch.float32)
            out = model.encode_audio({"i_act": iv[:, :3].float(), "i_rea": iv[:, 3:].float(), "omni_48k": omni})
            cols["audio_source"].append(_np(F.normalize(out["audio_source_emb"].float(), dim=-1)))
            cols["audio_space"].append(_np(F.normalize(out["audio_space_emb"].float(), dim=-1)))
            if with_text:
                text = embedder._text(list(batch["caption"]))
                cols["text_source"].append(_np(text["source"]))
                cols["text_space"].append(_np(text["space"]))
            cols["iv_direction"].append(official_iv_direction(iv))
            _append_ids_and_targets(cols, batch)
            for d in batch["descriptors"]:
                for a, v in d.items():
                    desc.setdefault(a, []).append(str(v))
            n += len(batch["key"])
            if max_items is not None and n >= max_items:
                break
    if n == 0:
        raise SchemaError("the loader yielded no samples", field="shards")
    stop = n if max_items is None else min(n, max_items)
    arrays = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else np.array(v))[:stop]
              for k, v in cols.items() if v}
    official = {"audio_source": arrays["audio_source"], "audio_spatial": arrays["audio_space"],
                "source_id": arrays["source_id"].astype(str), "spatial_id": arrays["space_id"].astype(str)}
    if not with_text:
        return None, official
    official.update(text_source=arrays["text_source"], text_spatial=arrays["text_space"])
    for attr, (labels, protos) in embedder.prompts().items():
        truth = desc.get(attr, [])[:stop]
        # zero-shot is scored only where every item's label has a prompt (the release's rules give "none"
        # where no rule matches, and "none" has no prompt)
        if len(truth) == stop and set(truth) <= set(np.asarray(labels).astype(str)):
            arrays[DESC_PREFIX + attr] = np.array(truth)
            arrays[PROMPT_LABEL_PREFIX + attr], arrays[PROMPT_EMB_PREFIX + attr] = labels, protos
    return Embeddings.from_arrays(arrays, where="embedded shards"), official


def finite_or_none(value: Any) -> Any:
    """NaN/inf -> None so metrics.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
