"""Pure metric functions for disse-eval (no I/O).

Everything here works on plain arrays so that any model's embeddings can be scored:

* multi-positive retrieval (R@K, mAP@K) from blocked similarities with a running top-K, so memory
  stays bounded whatever N is, and the exact chance level of each figure under a random ranking;
  cross-modal (text <-> audio, :func:`paired_retrieval`) and intra-modal (audio -> audio with the
  query left out, :func:`self_retrieval`);
* invariance ratios from per-group sums (exact, O(N*D), streamed in chunks);
* physical errors in real units and zero-shot descriptor accuracy.

Embeddings need not be normalised: similarities are cosines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from disse.trainer.model import physics

DEFAULT_CHUNK = 4096
EPS_NORM = 1e-12


# ----------------------------------------------------------------------------------------------
# ids

def encode_ids(*id_arrays: np.ndarray) -> list[np.ndarray]:
    """Map one or more id arrays (strings or ints) to shared contiguous int64 codes ``0..G-1``."""
    lengths = [len(a) for a in id_arrays]
    joined = np.concatenate([np.asarray(a) for a in id_arrays])
    codes = np.unique(joined, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return np.split(codes, np.cumsum(lengths)[:-1])


def _inv_norms(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / x.norm(dim=1).clamp_min(EPS_NORM)


# ----------------------------------------------------------------------------------------------
# retrieval

def _merge_topk(v_old: torch.Tensor, i_old: torch.Tensor, v_new: torch.Tensor, i_new: torch.Tensor,
                k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.cat([v_old, v_new], dim=dim)
    i = torch.cat([i_old, i_new], dim=dim)
    kk = min(k, v.shape[dim])
    v_top, pos = v.topk(kk, dim=dim)
    return v_top, i.gather(dim, pos)


def topk_both_directions(queries: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int,
                         chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by cosine similarity in both directions from one blocked pass over ``queries @ gallery.T``.

    queries ``(Nq, D)``, gallery ``(Ng, D)``. Returns ``(q2g (Nq, min(k, Ng)), g2q (Ng, min(k, Nq)))``:
    indices into the other set, best first. Only a ``chunk_size x chunk_size`` block of similarities
    and the running top-k lists are ever held, so memory is O(chunk^2 + (Nq + Ng) k).
    """
    q = torch.as_tensor(queries, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"need (Nq, D) and (Ng, D) with the same D, got {tuple(q.shape)} and {tuple(g.shape)}")
    nq, ng = q.shape[0], g.shape[0]
    kq, kg = min(k, ng), min(k, nq)
    qinv, ginv = _inv_norms(q), _inv_norms(g)
    neg_inf = float("-inf")
    row_i = torch.empty((nq, kq), dtype=torch.int64)
    col_v = torch.full((ng, 0), neg_inf)  # running top-k of each gallery item over the queries so far
    col_i = torch.zeros((ng, 0), dtype=torch.int64)
    with torch.no_grad():
        for r0 in range(0, nq, chunk_size):
            r1 = min(r0 + chunk_size, nq)
            qb = q[r0:r1] * qinv[r0:r1, None]
            rv = torch.full((r1 - r0, 0), neg_inf)
            ri = torch.zeros((r1 - r0, 0), dtype=torch.int64)
            for c0 in range(0, ng, chunk_size):
                c1 = min(c0 + chunk_size, ng)
                s = qb @ (g[c0:c1] * ginv[c0:c1, None]).T  # (rb, cb) cosines
                v, i = s.topk(min(kq, c1 - c0), dim=1)
                rv, ri = _merge_topk(rv, ri, v, i + c0, kq, dim=1)
                # a contiguous transpose then a row-wise topk is faster on CPU than topk along dim 0
                v, i = s.T.contiguous().topk(min(kg, r1 - r0), dim=1)
                cv, ci = _merge_topk(col_v[c0:c1], col_i[c0:c1], v, i + r0, kg, dim=1)
                if col_v.shape[1] < cv.shape[1]:  # first row block: the running lists grow to k
                    col_v = torch.cat([col_v, torch.full((ng, cv.shape[1] - col_v.shape[1]), neg_inf)], dim=1)
                    col_i = torch.cat([col_i, torch.zeros((ng, ci.shape[1] - col_i.shape[1]), dtype=torch.int64)], dim=1)
                col_v[c0:c1], col_i[c0:c1] = cv, ci
            row_i[r0:r1] = ri
    return row_i.numpy(), col_i.numpy()


def _positives(q_codes: np.ndarray, g_codes: np.ndarray, exclude_self: bool) -> np.ndarray:
    """Number of gallery items sharing each query's id (its own pair removed when ``exclude_self``)."""
    counts = np.bincount(g_codes, minlength=int(max(q_codes.max(initial=-1), g_codes.max(initial=-1))) + 1)
    m = counts[q_codes].astype(np.int64)
    if exclude_self:
        m -= (g_codes[np.arange(len(q_codes))] == q_codes).astype(np.int64)
    return m


def _drop_self(top: np.ndarray, k: int) -> np.ndarray:
    """Top-(k+1) lists of query i over the paired gallery -> top-k with gallery item i removed."""
    n = top.shape[0]
    keep = top != np.arange(n)[:, None]
    # rows that do not contain i keep their first k; rows that do, lose i. A list shorter than k + 1
    # ranks the whole gallery (which holds i), so it keeps all but i: without the -1 a gallery
    # smaller than k kept i at the end and counted it (mAP@10 above 1 on a 4-item set)
    out = np.empty((n, min(k, top.shape[1] - 1)), dtype=top.dtype)
    for_rows = np.argsort(~keep, axis=1, kind="stable")[:, : out.shape[1]]
    out[:] = np.take_along_axis(top, for_rows, axis=1)
    return out


def retrieval_from_topk(top: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                        map_k: int = 10, exclude_self: bool = False) -> dict[str, float]:
    """Multi-positive R@K and mAP@``map_k`` from ranked gallery indices.

    top: ``(Nq, >= max(ks, map_k))`` gallery indices best first (one more column when ``exclude_self``,
    which drops query i's own pair, gallery item i, before scoring). A query hits at K when any gallery
    item with its id is among its first K. AP@K = (1/min(m, K)) * sum_{k<=K} P@k * rel_k with m the
    query's positives. Queries without any positive are left out; ``n_queries`` says how many count.
    Also returns each figure's chance level (:func:`retrieval_chance`) under ``<name>/chance``.
    """
    q_codes, g_codes = encode_ids(q_ids, g_ids)
    kmax = max(max(ks), map_k)
    if exclude_self:
        if len(q_codes) != len(g_codes):
            raise ValueError("exclude_self needs paired queries and gallery (same length)")
        top = _drop_self(top, kmax)
    if top.shape[1] < min(kmax, len(g_codes) - int(exclude_self)):
        raise ValueError(f"need top-{kmax} lists, got {top.shape[1]}")
    m = _positives(q_codes, g_codes, exclude_self)
    valid = m > 0
    rel = g_codes[top] == q_codes[:, None]  # (Nq, k)
    out: dict[str, float] = {"n_queries": int(valid.sum())}
    for k in ks:
        hit = rel[:, :k].any(axis=1)
        out[f"R@{k}"] = float(hit[valid].mean()) if valid.any() else math.nan
    relk = rel[:, :map_k].astype(np.float64)
    prec = np.cumsum(relk, axis=1) / np.arange(1, relk.shape[1] + 1)
    ap = (prec * relk).sum(axis=1) / np.maximum(np.minimum(m, map_k), 1)
    out[f"mAP@{map_k}"] = float(ap[valid].mean()) if valid.any() else math.nan
    n_gallery = len(g_codes) - int(exclude_self)
    for name, value in retrieval_chance(m[valid], n_gallery, ks, map_k).items():
        out[f"{name}/chance"] = value
    return out


def chance_hit_at_k(m: np.ndarray, n: int, k: int) -> np.ndarray:
    """P(at least one of m positives among the first k of a random ranking of n items), hypergeometric:
    1 - C(n-m, k) / C(n, k), computed as a product so large n does not overflow."""
    m = np.asarray(m, dtype=np.float64)
    k = min(k, n)
    miss = np.ones_like(m)
    for j in range(k):
        miss *= np.clip(n - m - j, 0, None) / (n - j)
    return 1.0 - miss


def chance_ap_at_k(m: np.ndarray, n: int, k: int) -> np.ndarray:
    """Exact expected AP@k of a random ranking of n items with m positives.

    By linearity: E[rel_i] = m/n and E[rel_j rel_i] = m(m-1)/(n(n-1)) for j != i, so
    E[sum_{i<=k} P@i rel_i] = sum_{i<=k} (1/i) [m/n + (i-1) m(m-1)/(n(n-1))], divided by min(m, k).
    """
    m = np.asarray(m, dtype=np.float64)
    k = min(k, n)
    i = np.arange(1, k + 1, dtype=np.float64)
    p1 = m / n
    p2 = m * (m - 1) / (n * (n - 1)) if n > 1 else np.zeros_like(m)
    s = p1[:, None] / i[None, :] + ((i - 1) / i)[None, :] * np.asarray(p2)[:, None]
    return s.sum(axis=1) / np.maximum(np.minimum(m, k), 1)


def retrieval_chance(m: np.ndarray, n_gallery: int, ks: tuple[int, ...] = (1, 5, 10),
                     map_k: int = 10) -> dict[str, float]:
    """Expected R@K and mAP@K of a uniformly random ranking, averaged over queries with m positives each."""
    m = np.asarray(m)
    if len(m) == 0:
        return {**{f"R@{k}": math.nan for k in ks}, f"mAP@{map_k}": math.nan}
    # many queries share the same m: evaluate each distinct m once
    vals, counts = np.unique(m, return_counts=True)
    w = counts / counts.sum()
    out = {f"R@{k}": float((chance_hit_at_k(vals, n_gallery, k) * w).sum()) for k in ks}
    out[f"mAP@{map_k}"] = float((chance_ap_at_k(vals, n_gallery, map_k) * w).sum())
    return out


@dataclass(frozen=True)
class IdSet:
    """One scoring of a retrieval: which ids make a positive, and whether the query's pair is excluded."""

    name: str
    ids: np.ndarray
    exclude_self: bool = False


def paired_retrieval(text: np.ndarray, audio: np.ndarray, id_sets: list[IdSet], ks: tuple[int, ...] = (1, 5, 10),
                     map_k: int = 10, chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Text->audio and audio->text retrieval of paired items (row i of text goes with row i of audio),
    scored under several id sets from one blocked similarity pass.

    Keys: ``{set.name}/t2a/R@1``, ``.../R@1/chance``, ``.../mAP@10``, ``.../n_queries`` and the same for a2t.
    """
    if len(text) != len(audio):
        raise ValueError(f"text and audio must be paired: {len(text)} vs {len(audio)} rows")
    kmax = max(max(ks), map_k) + 1  # +1: room to drop the query's own pair
    t2a, a2t = topk_both_directions(text, audio, kmax, chunk_size)
    out: dict[str, float] = {}
    for s in id_sets:
        for direction, top in (("t2a", t2a), ("a2t", a2t)):
            res = retrieval_from_topk(top, s.ids, s.ids, ks, map_k, s.exclude_self)
            out.update({f"{s.name}/{direction}/{k}": v for k, v in res.items()})
    return out



def topk_self(x: np.ndarray | torch.Tensor, k: int, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Top-k by cosine similarity of every row of ``x (N, D)`` among all rows (itself included).

    Returns ``(N, min(k, N))`` row indices, best first. The similarity matrix is symmetric, so only
    the blocks on and above the diagonal are computed: block (r, c) serves rows r (along its rows)
    and rows c (along its columns), half the matmuls of :func:`topk_both_directions` on ``(x, x)``.
    Memory is O(chunk^2 + N k).
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"need (N, D), got {tuple(x.shape)}")
    n = x.shape[0]
    kk = min(k, n)
    xinv = _inv_norms(x)
    top_v = torch.full((n, kk), float("-inf"))  # running top-k of each row; placeholders lose to any cosine
    top_i = torch.zeros((n, kk), dtype=torch.int64)
    with torch.no_grad():
        for r0 in range(0, n, chunk_size):
            r1 = min(r0 + chunk_size, n)
            xr = x[r0:r1] * xinv[r0:r1, None]
            for c0 in range(r0, n, chunk_size):
                c1 = min(c0 + chunk_size, n)
                s = xr @ (x[c0:c1] * xinv[c0:c1, None]).T  # (rb, cb) cosines
                v, i = s.topk(min(kk, c1 - c0), dim=1)
                top_v[r0:r1], top_i[r0:r1] = _merge_topk(top_v[r0:r1], top_i[r0:r1], v, i + c0, kk, dim=1)
                if c0 != r0:  # the mirrored block (c, r) is s.T
                    v, i = s.T.contiguous().topk(min(kk, r1 - r0), dim=1)
                    top_v[c0:c1], top_i[c0:c1] = _merge_topk(top_v[c0:c1], top_i[c0:c1], v, i + r0, kk, dim=1)
    return top_i.numpy()


def self_retrieval(x: np.ndarray, id_sets: list[IdSet], ks: tuple[int, ...] = (1, 5, 10), map_k: int = 10,
                   chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Intra-modal retrieval: every row of ``x (N, D)`` queries all other rows, scored under several id
    sets from one blocked pass (the audio-side leakage checks AX-SRC, AX-SPA).

    The query itself is left out of its gallery and of its positives, so every id set must have
    ``exclude_self=True``; chance is then exact over N - 1 gallery items with m - 1 positives.
    Keys: ``{set.name}/a2a/R@1``, ``.../R@1/chance``, ``.../mAP@10``, ``.../n_queries``.
    """
    for s in id_sets:
        if not s.exclude_self:
            raise ValueError(f"{s.name}: intra-modal retrieval must exclude the query itself (exclude_self=True)")
    top = topk_self(x, max(max(ks), map_k) + 1, chunk_size)  # +1: room to drop the query itself
    out: dict[str, float] = {}
    for s in id_sets:
        res = retrieval_from_topk(top, s.ids, s.ids, ks, map_k, exclude_self=True)
        out.update({f"{s.name}/a2a/{k}": v for k, v in res.items()})
    return out

# ----------------------------------------------------------------------------------------------
# invariance ratios

def same_group_similarity(x: np.ndarray | torch.Tensor, groups: np.ndarray,
                          chunk_size: int = DEFAULT_CHUNK) -> tuple[float, int]:
    """Sum of cosine similarities over ordered pairs (i != j) in the same group, and the number of pairs.

    Uses sum_{i != j in g} x_i.x_j = |sum_g x|^2 - sum_g |x_i|^2 on unit vectors, streamed over items
    sorted by group (a group spanning chunks is carried over), in float64: exact, O(N*D), and only a
    chunk of rows in memory.
    """
    x = torch.as_tensor(x)
    groups = np.asarray(groups)
    n = len(groups)
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    total, carry_g, carry_v = 0.0, None, None
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        idx = torch.from_numpy(order[s:e])
        xs = x[idx].to(torch.float64)
        xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(EPS_NORM)
        g = g_sorted[s:e]
        seg = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
        sums = torch.zeros((int(seg[-1]) + 1, xs.shape[1]), dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(seg), xs)
        if carry_g is not None:
            sums[0] += carry_v  # the sort order guarantees the carried group continues here
        if e < n and g_sorted[e] == g[-1]:
            carry_g, carry_v = g[-1], sums[-1].clone()
            sums = sums[:-1]
        else:
            carry_g, carry_v = None, None
        total += float((sums * sums).sum()) - float((xs * xs).sum())
    _, sizes = np.unique(groups, return_counts=True)
    pairs = int((sizes.astype(np.int64) ** 2).sum() - n)
    return total, pairs


def invariance_ratio(x: np.ndarray | torch.Tensor, ids_a: np.ndarray, ids_b: np.ndarray,
                     chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """mean cos-dist(same a, different b) / mean cos-dist(same b, different a) over pairs i != j of x.

    Large when x tells b apart while ignoring a: IR_space = invariance_ratio(spatial emb, source_id,
    space_id); IR_source = invariance_ratio(source emb, space_id, source_id). Cosine distance is
    1 - cos. Pair counts are unordered pairs. NaN when either pair set is empty; inf when the
    denominator distance is 0 (perfect invariance).
    """
    a, b = encode_ids(ids_a, ids_b)
    ab = a * (int(b.max(initial=0)) + 1) + b
    s_a, n_a = same_group_similarity(x, a, chunk_size)
    s_b, n_b = same_group_similarity(x, b, chunk_size)
    s_ab, n_ab = same_group_similarity(x, ab, chunk_size)
    n_num, n_den = n_a - n_ab, n_b - n_ab
    d_num = 1.0 - (s_a - s_ab) / n_num if n_num > 0 else math.nan
    d_den = 1.0 - (s_b - s_ab) / n_den if n_den > 0 else math.nan
    if n_num == 0 or n_den == 0:
        ratio = math.nan
    elif d_den <= 1e-12:  # perfectly invariant: every same-b pair coincides
        ratio = math.inf if d_num > 1e-12 else math.nan
    else:
        ratio = d_num / d_den
    return {"ratio": ratio, "dist_num": d_num, "dist_den": d_den, "pairs_num": n_num // 2, "pairs_den": n_den // 2}


# ----------------------------------------------------------------------------------------------
# physical attributes

def direction_from_angles(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    """Unit vectors ``(N, 3)``, x front, y left, z up; azimuth positive to the left (DESIGN.md)."""
    return physics.direction_from_angles(torch.as_tensor(np.asarray(azimuth_deg, np.float64)),
                                         torch.as_tensor(np.asarray(elevation_deg, np.float64))).numpy()


def angular_error_deg(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Great-circle angle in degrees between direction vectors ``(N, 3)`` (need not be unit length)."""
    return physics.angular_error_deg(torch.as_tensor(np.asarray(pred, np.float64)),
                                     torch.as_tensor(np.asarray(true, np.float64))).numpy()


# A uniformly random direction is on average (and in median) 90 degrees from any fixed direction.
RANDOM_DIRECTION_ERROR_DEG = 90.0


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64))))


def constant_baseline_mae(true: np.ndarray) -> float:
    """MAE of the best constant guess (the median of the targets): what a model without input reaches."""
    t = np.asarray(true, np.float64)
    return float(np.mean(np.abs(t - np.median(t))))


# ----------------------------------------------------------------------------------------------
# zero-shot descriptors

def zero_shot_predict(audio: np.ndarray, prompts: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Index of the most cosine-similar prompt for each audio row: audio ``(N, D)``, prompts ``(L, D)``."""
    a = torch.as_tensor(audio, dtype=torch.float32)
    p = torch.as_tensor(prompts, dtype=torch.float32)
    p = p * _inv_norms(p)[:, None]
    out = np.empty(len(a), dtype=np.int64)
    for s in range(0, len(a), chunk_size):
        out[s:s + chunk_size] = (a[s:s + chunk_size] @ p.T).argmax(dim=1).numpy()
    return out


def zero_shot_accuracy(audio: np.ndarray, prompts: np.ndarray, prompt_labels: np.ndarray,
                       true_labels: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """Accuracy of picking the closest prompt; ``acc/chance`` = majority-class frequency of the true
    labels (what always answering the commonest label scores); ``acc/chance_uniform`` = 1 / prompts.
    ``balanced_acc`` (mean per-label recall over the labels present) has chance 1 / labels present
    whatever the class balance."""
    labels = np.asarray(prompt_labels).astype(str)
    truth = np.asarray(true_labels).astype(str)
    unknown = sorted(set(np.unique(truth)) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown} have no prompt (prompts: {list(labels)})")
    pred = labels[zero_shot_predict(audio, prompts, chunk_size)]
    present, counts = np.unique(truth, return_counts=True)
    # balanced accuracy: mean recall over the labels present; any input-blind guess scores 1/classes
    recall = [float((pred[truth == c] == c).mean()) for c in present]
    return {"acc": float((pred == truth).mean()), "acc/chance": float(counts.max() / len(truth)),
            "acc/chance_uniform": 1.0 / len(labels), "balanced_acc": float(np.mean(recall)),
            "balanced_acc/chance": 1.0 / len(present), "n": int(len(truth))}
