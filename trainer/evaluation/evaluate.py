"""Evaluation: the embeddings file format, embedding a shard set with a model, and scoring.

``evaluate_embeddings`` is the one scoring function: ``disse-eval`` and the trainer's validation both
call it, so their figures are the same. The ``.npz`` format (:class:`Embeddings`) lets any model's
embeddings be scored the same way (docs/evaluation.md lists every array).
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from disse.schemas import CaptionRules, SchemaError, load_caption_rules
from disse.trainer.evaluation import metrics as M

FORMAT_VERSION = 1
EMBEDDING_ARRAYS = ("audio_source", "audio_space", "text_source", "text_space")
ID_ARRAYS = ("source_id", "space_id")
# Physical predictions and targets, real units. pred_direction: (N, 3) vector, x front, y left, z up.
PRED_ARRAYS = ("pred_direction", "pred_distance_m", "pred_area_m2", "pred_t30_ms")
TRUE_ARRAYS = ("true_azimuth_deg", "true_elevation_deg", "true_distance_m", "true_area_m2", "true_t30_ms")
# Physics baselines computed from the input features, no learning. iv_direction: (N, 3) unit vector,
# x front, y left, z up: disse.trainer.model.physics.intensity_direction of the sample's intensity features.
BASELINE_ARRAYS = ("iv_direction",)
IV_MIN_DIRECTIVITY = 0.95  # |I_act| of the cells the baseline keeps: near-plane-wave cells, the direct sound
DIRECTION_ARRAYS = ("pred_direction", "iv_direction")  # (N, 3); every other physical array is (N,)
# caption-rule quantity (shard json key) -> target array
TRUE_OF_QUANTITY = {"azimuth_deg": "true_azimuth_deg", "elevation_deg": "true_elevation_deg",
                    "source_distance_m": "true_distance_m", "area_m2": "true_area_m2", "t30_ms": "true_t30_ms"}
# scalar physical quantities scored by MAE: (prediction, target, metric name)
MAE_QUANTITIES = (("pred_distance_m", "true_distance_m", "distance_m"),
                  ("pred_area_m2", "true_area_m2", "area_m2"),
                  ("pred_t30_ms", "true_t30_ms", "t30_ms"))
DESC_PREFIX, PROMPT_EMB_PREFIX, PROMPT_LABEL_PREFIX = "desc_", "prompt_emb_", "prompt_label_"
# retrieval figures, in the order of metrics.json: cross-modal, cross-modal leakage, audio-side leakage
RETRIEVAL_TASKS = ("SRC", "SPA", "X-SRC", "X-SPA", "AX-SRC", "AX-SPA")


@dataclass
class Embeddings:
    """Paired audio/text embeddings of N items, with ids and optional physical and descriptor data.

    Embedding arrays are ``(N, D)`` float (``*_source`` share one D, ``*_space`` another); ids are
    ``(N,)`` strings or ints. ``physical`` holds any of PRED_ARRAYS / TRUE_ARRAYS, ``(N,)`` in real units
    (``pred_direction`` is ``(N, 3)``) and any of BASELINE_ARRAYS (``iv_direction``, ``(N, 3)``, the
    intensity-vector estimate). ``descriptors[attr]`` is ``(N,)`` labels; ``prompts[attr]`` is
    ``(labels (L,), text-space embeddings (L, D_space))`` for zero-shot classification.
    """

    audio_source: np.ndarray
    audio_space: np.ndarray
    text_source: np.ndarray
    text_space: np.ndarray
    source_id: np.ndarray
    space_id: np.ndarray
    physical: dict[str, np.ndarray] = field(default_factory=dict)
    descriptors: dict[str, np.ndarray] = field(default_factory=dict)
    prompts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.source_id)

    # -- format ----------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name) for name in EMBEDDING_ARRAYS + ID_ARRAYS}
        out.update(self.physical)
        for attr, labels in self.descriptors.items():
            out[DESC_PREFIX + attr] = labels
        for attr, (labels, emb) in self.prompts.items():
            out[PROMPT_LABEL_PREFIX + attr] = labels
            out[PROMPT_EMB_PREFIX + attr] = emb
        if self.keys is not None:
            out["key"] = self.keys
        out["format_version"] = np.array(FORMAT_VERSION)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], where: str = "embeddings") -> "Embeddings":
        """Build and validate; raises SchemaError naming ``where`` and the offending array."""
        missing = [n for n in EMBEDDING_ARRAYS + ID_ARRAYS if n not in arrays]
        if missing:
            raise SchemaError(f"missing array(s) {missing}; found {sorted(arrays)}", file=where)
        version = arrays.get("format_version")
        if version is not None and int(np.asarray(version)) != FORMAT_VERSION:
            raise SchemaError(f"format_version {int(np.asarray(version))} not supported (reader: {FORMAT_VERSION})",
                              file=where, field="format_version")
        physical = {n: arrays[n] for n in PRED_ARRAYS + TRUE_ARRAYS + BASELINE_ARRAYS if n in arrays}
        descriptors = {n[len(DESC_PREFIX):]: arrays[n] for n in arrays if n.startswith(DESC_PREFIX)}
        prompts = {}
        for n in arrays:
            if n.startswith(PROMPT_EMB_PREFIX):
                attr = n[len(PROMPT_EMB_PREFIX):]
                if PROMPT_LABEL_PREFIX + attr not in arrays:
                    raise SchemaError(f"{n} given without {PROMPT_LABEL_PREFIX + attr}", file=where, field=n)
                prompts[attr] = (arrays[PROMPT_LABEL_PREFIX + attr], arrays[n])
            elif n.startswith(PROMPT_LABEL_PREFIX) and PROMPT_EMB_PREFIX + n[len(PROMPT_LABEL_PREFIX):] not in arrays:
                raise SchemaError(f"{n} given without {PROMPT_EMB_PREFIX + n[len(PROMPT_LABEL_PREFIX):]}",
                                  file=where, field=n)
        emb = cls(**{n: arrays[n] for n in EMBEDDING_ARRAYS + ID_ARRAYS}, physical=physical,
                  descriptors=descriptors, prompts=prompts, keys=arrays.get("key"))
        emb.validate(where)
        return emb

    def save(self, path: str | Path) -> None:
        """Write the ``.npz`` (uncompressed: embeddings do not compress and loading stays fast)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
            np.savez(f, **self.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> "Embeddings":
        where = str(path)
        if not Path(path).is_file():
            raise SchemaError("embeddings file not found", file=where)
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise SchemaError("not a .npz archive (a single .npy array?)", file=where)
                arrays = {}
                for name in z.files:
                    try:
                        arrays[name] = z[name]
                    except ValueError as exc:
                        if "allow_pickle" in str(exc):
                            raise SchemaError("holds Python objects; store ids and labels as strings or ints",
                                              file=where, field=name) from None
                        raise
        except SchemaError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise SchemaError(f"not a readable .npz archive ({exc})", file=where) from None
        return cls.from_arrays(arrays, where)

    # -- checks ----------------------------------------------------------------------------------
    def validate(self, where: str = "embeddings") -> None:
        # N is the length most of the required arrays agree on, so the odd one out is the one named
        lengths = [len(np.asarray(getattr(self, k))) for k in EMBEDDING_ARRAYS + ID_ARRAYS]
        n = max(set(lengths), key=lambda v: (lengths.count(v), -lengths.index(v)))
        if n < 2:
            raise SchemaError(f"need at least 2 items, got {n}", file=where, field="source_id")
        for name in ID_ARRAYS:
            ids = np.asarray(getattr(self, name))
            if ids.ndim != 1 or len(ids) != n:
                raise SchemaError(f"shape {ids.shape}, expected ({n},) like the other arrays", file=where, field=name)
            if ids.dtype.kind not in "iuUS":
                raise SchemaError(f"ids must be strings or integers, got dtype {ids.dtype}", file=where, field=name)
        dims = {}
        for name in EMBEDDING_ARRAYS:
            x = np.asarray(getattr(self, name))
            if x.ndim != 2 or x.shape[0] != n:
                raise SchemaError(f"shape {x.shape}, expected ({n}, D) like the other arrays", file=where, field=name)
            _check_float(x, where, name)
            for s in range(0, n, _CHECK_ROWS):  # in slices: no full-size temporaries at 100k x 512
                norms = np.linalg.norm(x[s:s + _CHECK_ROWS], axis=1)
                if (norms < M.EPS_NORM).any():
                    raise SchemaError(f"row {s + int(np.argmax(norms < M.EPS_NORM))} is a zero vector (no direction)",
                                      file=where, field=name)
            dims[name] = x.shape[1]
        for a, b in (("audio_source", "text_source"), ("audio_space", "text_space")):
            if dims[a] != dims[b]:
                raise SchemaError(f"dimension {dims[b]} differs from {a}'s {dims[a]}", file=where, field=b)
        for name, x in self.physical.items():
            x = np.asarray(x)
            want = (n, 3) if name in DIRECTION_ARRAYS else (n,)
            if x.shape != want:
                raise SchemaError(f"shape {x.shape}, expected {want}", file=where, field=name)
            _check_float(x, where, name)
            if name in BASELINE_ARRAYS:  # a zero vector has no direction, and would score 0 degrees
                norms = np.linalg.norm(x, axis=1)
                if (norms < M.EPS_NORM).any():
                    raise SchemaError(f"row {int(np.argmax(norms < M.EPS_NORM))} is a zero vector (no direction)",
                                      file=where, field=name)
        for pred, true in (("pred_distance_m", "true_distance_m"), ("pred_area_m2", "true_area_m2"),
                           ("pred_t30_ms", "true_t30_ms"), ("pred_direction", "true_azimuth_deg"),
                           ("pred_direction", "true_elevation_deg")):
            if pred in self.physical and true not in self.physical:
                raise SchemaError(f"{pred} given without the target {true}", file=where, field=true)
        for attr, labels in self.descriptors.items():
            labels = np.asarray(labels)
            if labels.shape != (n,) or labels.dtype.kind not in "US":
                raise SchemaError(f"expected ({n},) strings, got {labels.shape} {labels.dtype}", file=where,
                                  field=DESC_PREFIX + attr)
        for attr, (labels, emb) in self.prompts.items():
            labels, emb = np.asarray(labels), np.asarray(emb)
            if labels.ndim != 1 or labels.dtype.kind not in "US" or len(np.unique(labels)) != len(labels):
                raise SchemaError("expected (L,) distinct string labels", file=where, field=PROMPT_LABEL_PREFIX + attr)
            if emb.shape != (len(labels), dims["audio_space"]):
                raise SchemaError(f"shape {emb.shape}, expected ({len(labels)}, {dims['audio_space']}) "
                                  "(one text-space embedding per label)", file=where, field=PROMPT_EMB_PREFIX + attr)
            _check_float(emb, where, PROMPT_EMB_PREFIX + attr)
        if self.keys is not None and np.asarray(self.keys).shape != (n,):
            raise SchemaError(f"shape {np.asarray(self.keys).shape}, expected ({n},)", file=where, field="key")

    # -- derived ---------------------------------------------------------------------------------
    def true_direction(self) -> np.ndarray | None:
        p = self.physical
        if "true_azimuth_deg" in p and "true_elevation_deg" in p:
            return M.direction_from_angles(p["true_azimuth_deg"], p["true_elevation_deg"])
        return None

    def descriptor_labels(self, attr: str, rules: CaptionRules | None) -> np.ndarray | None:
        """Labels of one attribute: stored ``desc_<attr>``, else derived from the targets with the rules."""
        if attr in self.descriptors:
            return np.asarray(self.descriptors[attr]).astype(str)
        if rules is None or attr not in rules.attributes:
            return None
        a = rules.attributes[attr]
        values = self.physical.get(TRUE_OF_QUANTITY.get(a.quantity, ""))
        if values is None:
            return None
        if hasattr(rules, "draw_order"):  # the official rule set: "none" where no rule matches
            return np.array([next((b.label for b in a.bins if b.holds(float(v))), "none") for v in values])
        return np.array([a.label_of(float(v)) for v in values])


_CHECK_ROWS = 8192


def _check_float(x: np.ndarray, where: str, name: str) -> None:
    if x.dtype.kind != "f":
        raise SchemaError(f"expected floats, got dtype {x.dtype}", file=where, field=name)
    for s in range(0, len(x), _CHECK_ROWS):
        bad = ~np.isfinite(x[s:s + _CHECK_ROWS])
        if bad.any():
            row = s + int(np.argwhere(bad)[0][0])
            raise SchemaError(f"non-finite value (NaN or inf) at row {row}", file=where, field=name)


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


# ----------------------------------------------------------------------------------------------
# the DISSE release's embedding layout and metric semantics (trainer/official_metrics.py)

def to_official_arrays(emb: Embeddings) -> dict[str, np.ndarray]:
    """This project's embeddings in the release's ``.npz`` names (reference §5.5): ``*_space`` ->
    ``*_spatial``, ``space_id`` -> ``spatial_id``. (On the official grid ``space_id`` is the RIR stem,
    as the release's ``spatial_id``; on this project's shards it is the descriptor tuple.)"""
    return {"audio_source": emb.audio_source, "audio_spatial": emb.audio_space, "text_source": emb.text_source,
            "text_spatial": emb.text_space, "source_id": np.asarray(emb.source_id).astype(str),
            "spatial_id": np.asarray(emb.space_id).astype(str)}


def load_embeddings_any(path: str | Path) -> tuple[Embeddings | None, dict[str, np.ndarray]]:
    """Read either layout: this project's (``audio_space``, ``space_id``, ...) or the release's
    (``audio_spatial``, ``spatial_id``, aliases, any subset of modalities).

    Returns ``(Embeddings or None, release-layout arrays)``: the :class:`Embeddings` exists when all
    four embeddings are present (needed for this project's metrics).
    """
    from disse.trainer.evaluation import official_metrics as OM

    where = str(path)
    if not Path(path).is_file():
        raise SchemaError("embeddings file not found", file=where)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise SchemaError(f"not a readable .npz archive ({exc})", file=where) from None
    release_only = {"audio_spatial", "text_spatial", "spatial_id"} | (set(OM.ALIASES) - {"audio_space", "text_space",
                                                                                        "space_id"})
    if not names & release_only:  # this project's layout (its own reader names what is wrong)
        emb = Embeddings.load(path)
        return emb, to_official_arrays(emb)
    try:
        data = OM.load_npz(path)
    except ValueError as exc:
        raise SchemaError(f"neither this project's embeddings layout nor the release's ({exc})", file=where) from None
    if set(OM.EMBEDDING_KEYS) <= set(data):
        emb = Embeddings.from_arrays({"audio_source": data["audio_source"].astype(np.float32),
                                      "audio_space": data["audio_spatial"].astype(np.float32),
                                      "text_source": data["text_source"].astype(np.float32),
                                      "text_space": data["text_spatial"].astype(np.float32),
                                      "source_id": data["source_id"], "space_id": data["spatial_id"]}, where)
        return emb, data
    return None, data
