"""The DISSE release's metric semantics (reference §4.3) and its ``.npz`` embedding layout (§5.5).

Pure numpy functions, labelled "official" wherever they are reported (``disse-eval --metrics
official|both``: keys prefixed ``official/``). What differs from this project's metrics
(:mod:`disse.trainer.evaluation.metrics`):

* embeddings L2-normalised in float64; cosine distance ``1 - a.b``;
* **cross-modal** retrieval (text->audio and audio->text) keeps the query's own pair in the gallery:
  it shares both labels, so it is a positive even in the off-task (leakage) tasks;
* **intra-modal** retrieval (audio->audio, text->text) masks the query itself (similarity -inf,
  not a positive);
* rank = 1 + number of gallery items scoring strictly higher than the best positive (ties are
  optimistic); R@K, MedR = the lower median (``torch.median``), MnR = mean rank; queries without a
  positive are skipped;
* task ``both``: concatenated [source, spatial] (each L2-normalised, then renormalised) scored by the
  joint (source, spatial) id;
* IIDR over unordered pairs: same source / different spatial id vs same spatial id / different
  source, with pairs of one joint (source, spatial) group excluded from both; no epsilon.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from disse.trainer.evaluation.embeddings import (  # noqa: F401  (load_npz / save_npz: the documented names here)
    ALIASES,
    EMBEDDING_KEYS,
    ID_KEYS,
    load_npz,
    save_npz,
    validate_embeddings,
)

TASKS = ("on_task_source", "on_task_spatial", "off_task_source", "off_task_spatial")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """``(N, D)`` -> float64 rows of unit norm; a zero, NaN or infinite row is an error."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    if (norm <= 0).any():
        raise ValueError(f"zero-norm embedding rows: {np.flatnonzero(norm[:, 0] <= 0)[:10].tolist()}")
    return a / norm


def _codes(labels: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1].astype(np.int64)


def joint_ids(source_ids: np.ndarray, spatial_ids: np.ndarray) -> np.ndarray:
    """One integer per distinct (source, spatial) pair ``(N,)``."""
    pairs = np.stack([_codes(source_ids), _codes(spatial_ids)], axis=1)
    return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _pair_distance_sum(x: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Sum of ``1 - x_i.x_j`` over unordered pairs within each group, and the pair count.

    Per group of n unit vectors: ``(n^2 - |sum x|^2) / 2``.
    """
    n_groups = int(groups.max()) + 1
    counts = np.bincount(groups, minlength=n_groups).astype(np.int64)
    sums = np.zeros((n_groups, x.shape[1]))
    np.add.at(sums, groups, x)
    dist = np.maximum(0.5 * (counts.astype(np.float64) ** 2 - np.einsum("ij,ij->i", sums, sums)), 0.0)
    return float(dist.sum()), int((counts * (counts - 1) // 2).sum())


def iidr(embeddings: np.ndarray, source_ids: np.ndarray, spatial_ids: np.ndarray) -> dict:
    """The release's IIDR of one embedding space.

    ``IIDR_source = mean d(same spatial, different source) / mean d(same source, different spatial)``
    and ``IIDR_spatial`` its reciprocal; both means zero -> NaN, one zero -> inf and 0.
    """
    x = l2_normalise(embeddings)
    src, spa = _codes(source_ids), _codes(spatial_ids)
    if not (len(src) == len(spa) == len(x)):
        raise ValueError("embedding and label lengths differ")
    joint = joint_ids(source_ids, spatial_ids)
    s_sum, s_n = _pair_distance_sum(x, src)
    p_sum, p_n = _pair_distance_sum(x, spa)
    j_sum, j_n = _pair_distance_sum(x, joint)
    a_n, b_n = s_n - j_n, p_n - j_n
    if a_n <= 0 or b_n <= 0:
        raise ValueError("need same-source/different-spatial and same-spatial/different-source pairs")
    d_a = max(0.0, s_sum - j_sum) / a_n   # same source, different spatial
    d_b = max(0.0, p_sum - j_sum) / b_n   # same spatial, different source
    if d_a == 0.0 and d_b == 0.0:
        ir_src = ir_spa = math.nan
    elif d_a == 0.0:
        ir_src, ir_spa = math.inf, 0.0
    elif d_b == 0.0:
        ir_src, ir_spa = 0.0, math.inf
    else:
        ir_src, ir_spa = d_b / d_a, d_a / d_b
    return {"IIDR_source": ir_src, "IIDR_spatial": ir_spa,
            "mean_same_source_diff_spatial": d_a, "mean_same_spatial_diff_source": d_b,
            "pairs_same_source_diff_spatial": a_n, "pairs_same_spatial_diff_source": b_n}


def retrieval_ranks(query: np.ndarray, gallery: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray,
                    *, exclude_self: bool = False, chunk_size: int = 256) -> np.ndarray:
    """Rank of the best-scoring positive per query (1 = top), optimistic ties; ``(Q',)`` int64 over
    the queries that have a positive. ``exclude_self`` masks gallery item i for query i."""
    q, g = l2_normalise(query), l2_normalise(gallery)
    qi, gi = np.asarray(query_ids).reshape(-1), np.asarray(gallery_ids).reshape(-1)
    if len(qi) != len(q) or len(gi) != len(g):
        raise ValueError("embedding and label lengths differ")
    if exclude_self and len(q) != len(g):
        raise ValueError("exclude_self needs aligned query and gallery sets")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    out = []
    for a in range(0, len(q), chunk_size):
        b = min(a + chunk_size, len(q))
        sim = q[a:b] @ g.T
        pos = qi[a:b, None] == gi[None, :]
        if exclude_self:
            rows = np.arange(b - a)
            sim[rows, np.arange(a, b)] = -np.inf
            pos[rows, np.arange(a, b)] = False
        keep = pos.any(axis=1)
        if not keep.any():
            continue
        best = np.where(pos[keep], sim[keep], -np.inf).max(axis=1)
        out.append(1 + (sim[keep] > best[:, None]).sum(axis=1))
    if not out:
        raise ValueError("no query has a positive")
    return np.concatenate(out).astype(np.int64)


def rank_summary(ranks: np.ndarray, ks: Iterable[int] = (1, 5, 10)) -> dict:
    """R@K (fractions), MedR (lower median), MnR and the number of queries."""
    ranks = np.asarray(ranks)
    out: dict = {f"R@{k}": float(np.mean(ranks <= k)) for k in sorted({int(k) for k in ks})}
    mid = (ranks.size - 1) // 2
    out["MedR"] = float(np.partition(ranks, mid)[mid])
    out["MnR"] = float(ranks.mean())
    out["queries"] = int(ranks.size)
    return out


def retrieval(query, gallery, query_ids, gallery_ids, *, ks=(1, 5, 10), exclude_self=False,
              chunk_size=256) -> dict:
    """Multi-positive retrieval metrics with the release's semantics."""
    return rank_summary(retrieval_ranks(query, gallery, query_ids, gallery_ids, exclude_self=exclude_self,
                                        chunk_size=chunk_size), ks)


def _both(data: Mapping[str, np.ndarray], modality: str) -> np.ndarray:
    return np.concatenate([l2_normalise(data[f"{modality}_source"]),
                           l2_normalise(data[f"{modality}_spatial"])], axis=1)


def evaluate_official(data: Mapping[str, np.ndarray], *, ks: Iterable[int] = (1, 5, 10),
                      chunk_size: int = 256, iidr_only: bool = False) -> dict:
    """The release's report for an embedding set (keys of :data:`EMBEDDING_KEYS` present + ids):
    ``{"iidr": {emb: ...}, "cross_modal": {task: {"text_to_audio", "audio_to_text"}},
    "intra_modal": {"audio"|"text": {task: ...}}}``."""
    data = validate_embeddings(data)
    src, spa = data["source_id"], data["spatial_id"]
    have = [k for k in EMBEDDING_KEYS if k in data]
    out: dict = {"iidr": {k: iidr(data[k], src, spa) for k in have}}
    if iidr_only:
        return out
    labels = {"source": src, "spatial": spa}

    def both_ways(text, audio, lab):
        return {"text_to_audio": retrieval(text, audio, lab, lab, ks=ks, chunk_size=chunk_size),
                "audio_to_text": retrieval(audio, text, lab, lab, ks=ks, chunk_size=chunk_size)}

    cross: dict = {}
    for space, other in (("source", "spatial"), ("spatial", "source")):
        if {f"audio_{space}", f"text_{space}"} <= set(have):
            cross[f"on_task_{space}"] = both_ways(data[f"text_{space}"], data[f"audio_{space}"], labels[space])
            cross[f"off_task_{other}"] = both_ways(data[f"text_{space}"], data[f"audio_{space}"], labels[other])
    if set(EMBEDDING_KEYS) <= set(have):
        cross["both"] = both_ways(_both(data, "text"), _both(data, "audio"), joint_ids(src, spa))
    if cross:
        out["cross_modal"] = cross
    intra: dict = {}
    for modality in ("audio", "text"):
        m: dict = {}
        for space, other in (("source", "spatial"), ("spatial", "source")):
            key = f"{modality}_{space}"
            if key in data:
                e = data[key]
                m[f"on_task_{space}"] = retrieval(e, e, labels[space], labels[space], ks=ks,
                                                  exclude_self=True, chunk_size=chunk_size)
                m[f"off_task_{other}"] = retrieval(e, e, labels[other], labels[other], ks=ks,
                                                   exclude_self=True, chunk_size=chunk_size)
        if m:
            intra[modality] = m
    if intra:
        out["intra_modal"] = intra
    return out


def flatten(report: dict, prefix: str = "official") -> dict[str, float]:
    """Nested report -> flat ``{"official/cross_modal/both/text_to_audio/R@1": ...}``."""
    flat: dict[str, float] = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        else:
            flat[path] = node

    walk(report, prefix)
    return flat


def json_safe(obj):
    """NaN -> None, +-inf -> "Infinity" / "-Infinity" (the release's JSON)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
    return obj
