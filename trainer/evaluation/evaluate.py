"""Scoring: ``evaluate_embeddings`` is the one scoring function; ``disse-eval`` and the trainer's validation
both call it, so their figures are the same.

The ``.npz`` format (:class:`Embeddings`) lives in :mod:`.embeddings`, the inference loop in :mod:`.inference`;
their names stay importable from here (the documented ``disse.trainer.evaluate`` path).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binom

from disse.schemas import CaptionRules, SchemaError
from disse.schemas.captions import NO_DESCRIPTOR
from disse.trainer.evaluation import metrics as M
from disse.trainer.evaluation.inference import (  # noqa: F401  (the documented disse.trainer.evaluate names)
    ZERO_SHOT_PROMPTS,
    embed,
    embed_official,
    official_iv_direction,
    zero_shot_prototypes,
)
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
        # the release's rules label a value no rule matches "none" (no words, no prompt): such items have no
        # class to find, so they are left out of that attribute's zero-shot figures and counted
        described = np.asarray(truth).astype(str) != NO_DESCRIPTOR
        if NO_DESCRIPTOR in np.asarray(labels).astype(str):
            described[:] = True
        if not described.any():
            continue
        try:
            r = M.zero_shot_accuracy(emb.audio_space[described], prompt_emb, labels, np.asarray(truth)[described],
                                     chunk_size)
        except ValueError as exc:
            raise SchemaError(str(exc), field=DESC_PREFIX + attr) from None
        out.update({f"zeroshot/{attr}/{k}": v for k, v in r.items()})
        if not described.all():
            out[f"zeroshot/{attr}/n_undescribed"] = int((~described).sum())
    return out


def per_item_direction_error(emb: Embeddings, which: str = "pred_direction") -> np.ndarray | None:
    """Angular error per item in degrees ``(N,)`` of the direction array ``which`` (``pred_direction``, the
    model, or ``iv_direction``, the intensity-vector baseline), or None without it or the targets."""
    true_dir = emb.true_direction()
    if which not in emb.physical or true_dir is None:
        return None
    return M.angular_error_deg(emb.physical[which], true_dir)


def finite_or_none(value: Any) -> Any:
    """NaN/inf -> None so metrics.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------
# the disentanglement rule (DESIGN.md, "Evaluation")

LEAK_FACTOR = 1.5   # a leakage check passes within this multiple of its chance level
IR_MIN = 3.5        # and the embedding's invariance ratio must reach this
# embedding -> (its leakage checks, its invariance ratio)
DISENTANGLEMENT_CHECKS = {
    "space": (("X-SRC/t2a/R@1", "X-SRC/a2t/R@1", "AX-SRC/a2a/R@1"), "IR_space"),
    "source": (("X-SPA/t2a/R@1", "X-SPA/a2t/R@1", "AX-SPA/a2a/R@1"), "IR_source"),
}


def disentanglement(m: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per embedding (``space``, ``source``): whether it is disentangled by the rule of DESIGN.md — every
    leakage check's R@1 within ``LEAK_FACTOR`` x its chance level and the invariance ratio at least ``IR_MIN``.

    Returns ``{"disentangled": True | False | None (a figure is missing or undefined), "checks": [(key, value,
    limit, passed, kind)]}`` with ``kind`` ``"leak"`` (passes when value <= limit) or ``"ir"`` (value >= limit).
    """
    out = {}
    for emb, (leaks, ir) in DISENTANGLEMENT_CHECKS.items():
        checks = []
        for key in leaks:
            value, chance = m.get(key), m.get(f"{key}/chance")
            limit = LEAK_FACTOR * chance if _finite(chance) else None
            passed = value <= limit if _finite(value) and limit is not None else None
            checks.append((key, value, limit, passed, "leak"))
        value = m.get(ir)
        checks.append((ir, value, IR_MIN, value >= IR_MIN if _finite(value) else None, "ir"))
        verdicts = [c[3] for c in checks]
        out[emb] = {"disentangled": None if None in verdicts else all(verdicts), "checks": checks}
    return out


def chance_tail(m: dict[str, float], key: str) -> float | None:
    """How surprising a leakage check's R@1 is: P(hits >= the measured hits) for a model exactly at chance on the
    same queries, hits ~ Binomial(n_queries, chance). ``key`` is e.g. ``"X-SPA/a2t/R@1"``. Each query's own chance
    differs a little; the binomial at the mean rate is slightly wider, so it errs towards calling an excess noise.
    None when a figure is missing."""
    value, chance = m.get(key), m.get(f"{key}/chance")
    n = m.get(key.rsplit("/", 1)[0] + "/n_queries")
    if not (_finite(value) and _finite(chance) and _finite(n)) or n <= 0:
        return None
    hits = round(value * n)
    return float(binom.sf(hits - 1, int(n), min(max(chance, 0.0), 1.0)))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

