"""disse.trainer.evaluation.metrics and evaluate_embeddings against brute-force references."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from disse.schemas import SchemaError, load_caption_rules
from disse.trainer.evaluation import metrics as M
from disse.trainer.evaluation.evaluate import Embeddings, evaluate_embeddings


# ---------------------------------------------------------------------------------------------
# brute-force references: full similarity matrix, explicit loops, exhaustive enumeration

def brute_retrieval(q, g, q_ids, g_ids, ks=(1, 5, 10), map_k=10, exclude_self=False):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sim = qn @ gn.T
    hits = {k: [] for k in ks}
    aps = []
    for i in range(len(q)):
        cand = [j for j in range(len(g)) if not (exclude_self and j == i)]
        ranked = sorted(cand, key=lambda j: -sim[i, j])
        m = sum(g_ids[j] == q_ids[i] for j in cand)
        if m == 0:
            continue
        rel = [g_ids[j] == q_ids[i] for j in ranked]
        for k in ks:
            hits[k].append(any(rel[:k]))
        ap = sum((sum(rel[:r + 1]) / (r + 1)) * rel[r] for r in range(min(map_k, len(rel))))
        aps.append(ap / min(m, map_k))
    out = {f"R@{k}": float(np.mean(hits[k])) for k in ks}
    out[f"mAP@{map_k}"] = float(np.mean(aps))
    out["n_queries"] = len(aps)
    return out


def exhaustive_chance(n, m, k):
    """Expected hit@k and AP@k over every possible set of positive positions (exact enumeration)."""
    hit, ap, count = 0.0, 0.0, 0
    for pos in itertools.combinations(range(n), m):
        rel = [i in pos for i in range(n)]
        hit += any(rel[:k])
        ap += sum(sum(rel[:r + 1]) / (r + 1) * rel[r] for r in range(k)) / min(m, k)
        count += 1
    return hit / count, ap / count


def brute_ir(x, a, b):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = 1 - xn @ xn.T
    n = len(x)
    num = [d[i, j] for i in range(n) for j in range(i + 1, n) if a[i] == a[j] and b[i] != b[j]]
    den = [d[i, j] for i in range(n) for j in range(i + 1, n) if b[i] == b[j] and a[i] != a[j]]
    return np.mean(num) / np.mean(den), np.mean(num), np.mean(den), len(num), len(den)


def random_ids(rng, n, n_distinct, prefix="id"):
    return np.array([f"{prefix}{i}" for i in rng.integers(0, n_distinct, n)])


# ---------------------------------------------------------------------------------------------
# retrieval

@pytest.mark.parametrize("chunk", [7, 64, 10_000])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("n", [90, 4])  # 4: a gallery smaller than K = 10 (the query's own pair must still go)
def test_retrieval_matches_brute_force(chunk, exclude_self, n):
    rng = np.random.default_rng(0)
    d = 8
    q, g = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    ids = random_ids(rng, n, 12 if n > 12 else 2)
    t2a, a2t = M.topk_both_directions(q, g, 11, chunk_size=chunk)
    for top, qq, gg in ((t2a, q, g), (a2t, g, q)):
        got = M.retrieval_from_topk(top, ids, ids, exclude_self=exclude_self)
        ref = brute_retrieval(qq, gg, ids, ids, exclude_self=exclude_self)
        for key, value in ref.items():
            assert got[key] == pytest.approx(value, abs=1e-12), key


def test_retrieval_with_different_query_and_gallery_sizes():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(23, 5)), rng.normal(size=(41, 5))
    q_ids, g_ids = rng.integers(0, 6, 23), rng.integers(0, 6, 41)
    q2g, g2q = M.topk_both_directions(q, g, 10, chunk_size=9)
    got = M.retrieval_from_topk(q2g, q_ids, g_ids)
    ref = brute_retrieval(q, g, q_ids, g_ids)
    assert got["R@5"] == pytest.approx(ref["R@5"]) and got["mAP@10"] == pytest.approx(ref["mAP@10"])
    got = M.retrieval_from_topk(g2q, g_ids, q_ids)
    ref = brute_retrieval(g, q, g_ids, q_ids)
    assert got["R@1"] == pytest.approx(ref["R@1"]) and got["n_queries"] == ref["n_queries"]


@pytest.mark.parametrize("n,m,k", [(7, 1, 1), (7, 2, 3), (8, 3, 5), (9, 4, 9), (6, 6, 2), (10, 2, 10)])
def test_chance_levels_match_exhaustive_enumeration(n, m, k):
    hit, ap = exhaustive_chance(n, m, k)
    assert M.chance_hit_at_k(np.array([m]), n, k)[0] == pytest.approx(hit, abs=1e-12)
    assert M.chance_ap_at_k(np.array([m]), n, k)[0] == pytest.approx(ap, abs=1e-12)


def test_chance_is_what_random_rankings_score():
    """Monte-Carlo over random rankings agrees with the closed form (R@K and mAP@10)."""
    rng = np.random.default_rng(2)
    n = 60
    ids = rng.integers(0, 9, n)
    reps = []
    for _ in range(300):
        top = np.stack([rng.permutation(n)[:11] for _ in range(n)])
        reps.append(M.retrieval_from_topk(top, ids, ids))
    for key in ("R@1", "R@5", "R@10", "mAP@10"):
        mc = np.mean([r[key] for r in reps])
        assert mc == pytest.approx(reps[0][f"{key}/chance"], abs=0.01), key


def one_hot(codes, dim):
    x = np.zeros((len(codes), dim), np.float32)
    x[np.arange(len(codes)), codes] = 1.0
    return x


def synthetic(n, n_src, n_spa, seed, perfect=True, shuffle=False):
    """Each source rendered in random spaces; perfect embeddings are one-hot by the branch's id."""
    rng = np.random.default_rng(seed)
    src, spa = rng.integers(0, n_src, n), rng.integers(0, n_spa, n)
    a_src, a_spa = one_hot(src, n_src), one_hot(spa, n_spa)
    t_src, t_spa = a_src.copy(), a_spa.copy()
    if not perfect:
        a_src, a_spa, t_src, t_spa = (rng.normal(size=x.shape).astype(np.float32) for x in (a_src, a_spa, t_src, t_spa))
    if shuffle:  # break the pairing: audio rows no longer belong to their text rows
        # a little noise breaks the exact ties of one-hot vectors, which would otherwise make every
        # query fall back on the same tie-break items (right on average, but correlated across queries)
        a_src, a_spa = (x + 0.01 * rng.normal(size=x.shape).astype(np.float32) for x in (a_src, a_spa))
        perm = rng.permutation(n)
        a_src, a_spa = a_src[perm], a_spa[perm]
    return Embeddings(a_src, a_spa, t_src, t_spa, src.astype(np.int64), np.array([f"s{i}" for i in spa]))


def test_perfect_embeddings_hit_and_x_checks_sit_at_chance():
    emb = synthetic(3000, 300, 40, seed=3)
    r = evaluate_embeddings(emb, chunk_size=512)
    for task in ("SRC", "SPA"):
        for d in ("t2a", "a2t"):
            assert r[f"{task}/{d}/R@1"] == 1.0 and r[f"{task}/{d}/mAP@10"] == 1.0
    for task in ("X-SRC", "X-SPA"):
        for d in ("t2a", "a2t"):
            for k in ("R@1", "R@10"):
                got, chance, nq = r[f"{task}/{d}/{k}"], r[f"{task}/{d}/{k}/chance"], r[f"{task}/{d}/n_queries"]
                # binomial standard error of a mean of nq hits
                se = math.sqrt(chance * (1 - chance) / nq)
                assert abs(got - chance) < 4 * se + 1e-3, (task, d, k, got, chance)
    assert r["IR_space"] == math.inf and r["IR_source"] == math.inf  # same-id pairs coincide


def test_shuffled_embeddings_score_chance():
    emb = synthetic(3000, 600, 100, seed=4, shuffle=True)
    r = evaluate_embeddings(emb, chunk_size=700)
    n_ids = {"SRC": 600, "X-SRC": 600, "SPA": 100, "X-SPA": 100}
    for task in ("SRC", "SPA", "X-SRC", "X-SPA"):
        for k in ("R@1", "R@5", "R@10", "mAP@10"):
            got, chance = r[f"{task}/t2a/{k}"], r[f"{task}/t2a/{k}/chance"]
            # queries with the same id rank alike (identical one-hot texts), so the independent
            # trials are the distinct ids, not the queries: a conservative standard error
            se = math.sqrt(chance * (1 - chance) / n_ids[task])
            assert abs(got - chance) < 4 * se, (task, k, got, chance)


def test_random_embeddings_score_chance_and_ir_near_one():
    emb = synthetic(2000, 100, 30, seed=5, perfect=False)
    r = evaluate_embeddings(emb, chunk_size=300)
    se = math.sqrt(r["SRC/t2a/R@10/chance"] * (1 - r["SRC/t2a/R@10/chance"]) / 2000)
    assert abs(r["SRC/t2a/R@10"] - r["SRC/t2a/R@10/chance"]) < 4 * se
    assert r["IR_space"] == pytest.approx(1.0, abs=0.05) and r["IR_source"] == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------------------------------
# invariance ratios

@pytest.mark.parametrize("chunk", [5, 33, 10_000])
def test_invariance_ratio_matches_brute_force(chunk):
    rng = np.random.default_rng(6)
    n = 120
    x = rng.normal(size=(n, 6))
    a, b = rng.integers(0, 8, n), random_ids(rng, n, 5)
    got = M.invariance_ratio(x, a, b, chunk_size=chunk)
    ratio, d_num, d_den, n_num, n_den = brute_ir(x, a, b)
    assert got["ratio"] == pytest.approx(ratio, rel=1e-9)
    assert got["dist_num"] == pytest.approx(d_num, rel=1e-9)
    assert got["dist_den"] == pytest.approx(d_den, rel=1e-9)
    assert (got["pairs_num"], got["pairs_den"]) == (n_num, n_den)


def test_invariance_ratio_large_group_spanning_chunks():
    rng = np.random.default_rng(7)
    n = 80
    x = rng.normal(size=(n, 4))
    a = np.r_[np.zeros(50, int), rng.integers(1, 4, 30)]  # one group of 50 spans several chunks of 8
    b = rng.integers(0, 3, n)
    got = M.invariance_ratio(x, a, b, chunk_size=8)
    assert got["ratio"] == pytest.approx(brute_ir(x, a, b)[0], rel=1e-9)


def test_evaluate_reports_ir_with_pair_counts():
    emb = synthetic(200, 20, 10, seed=8, perfect=False)
    r = evaluate_embeddings(emb, chunk_size=64)
    ratio, _, _, n_num, n_den = brute_ir(emb.audio_space, emb.source_id, emb.space_id)
    assert r["IR_space"] == pytest.approx(ratio, rel=1e-6)
    assert r["IR_space/pairs_same_source_diff_space"] == n_num
    assert r["IR_space/pairs_same_space_diff_source"] == n_den
    ratio, _, _, n_num, _ = brute_ir(emb.audio_source, emb.space_id, emb.source_id)
    assert r["IR_source"] == pytest.approx(ratio, rel=1e-6)
    assert r["IR_source/pairs_same_space_diff_source"] == n_num


# ---------------------------------------------------------------------------------------------
# physical and zero-shot

def test_angular_error_known_angles_and_convention():
    left = M.direction_from_angles(np.array([90.0]), np.array([0.0]))
    np.testing.assert_allclose(left, [[0, 1, 0]], atol=1e-12)  # +azimuth = left = +y
    up = M.direction_from_angles(np.array([0.0]), np.array([90.0]))
    np.testing.assert_allclose(up, [[0, 0, 1]], atol=1e-12)
    front = M.direction_from_angles(np.zeros(4), np.zeros(4))
    pred = M.direction_from_angles(np.array([0.0, 30.0, -90.0, 180.0]), np.zeros(4)) * 3.0  # scale-free
    np.testing.assert_allclose(M.angular_error_deg(pred, front), [0, 30, 90, 180], atol=1e-9)
    assert M.angular_error_deg(np.array([[1.0, 1e-9, 0]]), np.array([[1.0, 0, 0]]))[0] < 1e-6


def test_random_direction_error_is_about_90_degrees():
    rng = np.random.default_rng(9)
    err = M.angular_error_deg(rng.normal(size=(20000, 3)), rng.normal(size=(20000, 3)))
    assert err.mean() == pytest.approx(M.RANDOM_DIRECTION_ERROR_DEG, abs=1.0)


def test_physical_metrics_in_real_units():
    rng = np.random.default_rng(10)
    emb = synthetic(100, 10, 5, seed=10, perfect=False)
    az, el = rng.uniform(-180, 180, 100), rng.uniform(-60, 60, 100)
    dist = rng.uniform(0.5, 4, 100)
    emb.physical = {"true_azimuth_deg": az, "true_elevation_deg": el, "true_distance_m": dist,
                    "pred_direction": M.direction_from_angles(az + 10.0, el), "pred_distance_m": dist + 0.25}
    r = evaluate_embeddings(emb)
    err = M.angular_error_deg(emb.physical["pred_direction"], M.direction_from_angles(az, el))
    assert r["phys/direction_err_deg/mean"] == pytest.approx(err.mean())
    assert r["phys/direction_err_deg/median"] == pytest.approx(np.median(err))
    assert 0 < r["phys/direction_err_deg/mean"] <= 10.0 + 1e-9  # 10 deg azimuth shrinks off the equator
    assert r["phys/distance_m/mae"] == pytest.approx(0.25)
    assert r["phys/distance_m/mae/chance"] == pytest.approx(np.mean(np.abs(dist - np.median(dist))))
    assert "phys/area_m2/mae" not in r


def test_zero_shot_uses_prompts_and_rule_labels():
    rules = load_caption_rules()
    rng = np.random.default_rng(11)
    n = 400
    labels = np.array(rules.attributes["distance"].labels)
    truth_dist = rng.uniform(0.2, 5.0, n)
    truth = np.array([rules.attributes["distance"].label_of(v) for v in truth_dist])
    protos = rng.normal(size=(len(labels), 16))
    code = np.searchsorted(labels, truth, sorter=np.argsort(labels))
    code = np.argsort(labels)[code]
    a_spa = protos[code] + 0.1 * rng.normal(size=(n, 16))
    a_spa[:100] = rng.normal(size=(100, 16))  # a quarter is noise
    emb = synthetic(n, 20, 5, seed=11, perfect=False)
    emb.audio_space, emb.text_space = a_spa.astype(np.float32), a_spa.astype(np.float32)
    emb.physical = {"true_distance_m": truth_dist}  # labels derived from targets with the rule table
    emb.prompts = {"distance": (labels, protos.astype(np.float32))}
    r = evaluate_embeddings(emb, rules)
    pred = labels[M.zero_shot_predict(a_spa, protos)]
    assert r["zeroshot/distance/acc"] == pytest.approx((pred == truth).mean())
    assert 0.75 <= r["zeroshot/distance/acc"] <= 0.95
    _, counts = np.unique(truth, return_counts=True)
    assert r["zeroshot/distance/acc/chance"] == pytest.approx(counts.max() / n)
    assert r["zeroshot/distance/acc/chance_uniform"] == pytest.approx(1 / 3)
    recall = [np.mean(pred[truth == c] == c) for c in np.unique(truth)]
    assert r["zeroshot/distance/balanced_acc"] == pytest.approx(np.mean(recall))
    assert r["zeroshot/distance/balanced_acc/chance"] == pytest.approx(1 / len(np.unique(truth)))
    # an input-blind classifier (always the commonest label) gets the majority chance, balanced 1/classes
    blind = M.zero_shot_accuracy(np.ones((n, 16)), np.eye(3, 16) + 1, labels, truth)
    assert blind["acc"] in (pytest.approx(c / n) for c in counts)
    assert blind["balanced_acc"] == pytest.approx(1 / len(np.unique(truth)))


# ---------------------------------------------------------------------------------------------
# bad inputs

def arrays_ok(n=10, seed=0):
    return synthetic(n, 3, 3, seed=seed, perfect=False).to_arrays()


@pytest.mark.parametrize("mutate,field", [
    (lambda a: a.pop("text_space"), "missing array"),
    (lambda a: a.__setitem__("audio_space", a["audio_space"][:-1]), "audio_space"),
    (lambda a: a.__setitem__("space_id", a["space_id"][:-2]), "space_id"),
    (lambda a: a["text_source"].__setitem__((3, 1), np.nan), "row 3"),
    (lambda a: a.__setitem__("text_space", np.zeros((10, 7), np.float32) + 1), "text_space"),
    (lambda a: a.__setitem__("source_id", np.linspace(0, 1, 10)), "source_id"),
    (lambda a: a.__setitem__("pred_distance_m", np.ones(10)), "true_distance_m"),
    (lambda a: a.__setitem__("prompt_emb_distance", np.ones((3, 3))), "prompt_label_distance"),
    (lambda a: a["audio_source"].__setitem__(2, 0.0), "zero vector"),
    (lambda a: a.__setitem__("iv_direction", np.ones((10, 2))), "iv_direction"),
    (lambda a: a.__setitem__("iv_direction", np.eye(10, 3)), "iv_direction.*row 3 is a zero vector"),
])
def test_bad_arrays_raise_clear_schema_errors(mutate, field):
    arrays = arrays_ok()
    mutate(arrays)
    with pytest.raises(SchemaError, match=field.replace("[", r"\[")):
        Embeddings.from_arrays(arrays, where="x.npz")


def test_save_load_roundtrip(tmp_path):
    emb = synthetic(50, 5, 4, seed=12, perfect=False)
    emb.physical = {"true_t30_ms": np.linspace(100, 900, 50), "pred_t30_ms": np.linspace(120, 880, 50)}
    emb.descriptors = {"distance": np.array(["near", "far"] * 25)}
    emb.prompts = {"distance": (np.array(["near", "far", "mid"]), np.ones((3, 4), np.float32))}
    path = tmp_path / "e.npz"
    emb.save(path)
    back = Embeddings.load(path)
    for name, value in emb.to_arrays().items():
        np.testing.assert_array_equal(back.to_arrays()[name], value)
    assert evaluate_embeddings(back) == evaluate_embeddings(emb)


def test_load_rejects_non_npz_and_pickled(tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("hello")
    with pytest.raises(SchemaError, match="notes.npz"):
        Embeddings.load(bad)
    with pytest.raises(SchemaError, match="not found"):
        Embeddings.load(tmp_path / "absent.npz")
    arrays = arrays_ok()
    arrays["source_id"] = np.array([object()] * 10, dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(SchemaError, match="source_id"):
        Embeddings.load(tmp_path / "obj.npz")


# ---------------------------------------------------------------------------------------------
# physics baseline: intensity-vector direction (torch) against the synthesis reference (numpy)

def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic_iv(rng, frames=40, mels=16, direct=None, n_direct=60, n_reflect=25, max_diffuse=0.9):
    """float16 ``(6, F, M)``: a few near-plane-wave cells towards ``direct`` (|I| in [0.95, 1]), some strong
    reflections from elsewhere (|I| in [0.95, 1]) and diffuse cells below the threshold everywhere else."""
    cells = frames * mels
    act = _unit(rng, cells) * rng.uniform(0.0, max_diffuse, (cells, 1))
    idx = rng.permutation(cells)
    if direct is not None:
        d = rng.normal(0, 0.05, (n_direct, 3)) + direct  # a slightly spread direct path
        act[idx[:n_direct]] = d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(0.955, 1.0, (n_direct, 1))
        act[idx[n_direct:n_direct + n_reflect]] = _unit(rng, n_reflect) * rng.uniform(0.955, 1.0, (n_reflect, 1))
    iv = np.zeros((6, frames, mels), np.float32)
    iv[:3] = act.T.reshape(3, frames, mels)
    iv[3:] = rng.normal(0, 0.2, (3, frames, mels))  # reactive part: ignored
    return iv.astype(np.float16)


def _ref_vector(iv, min_directivity):
    from disse.pipeline.features import direction_from_iv

    az, el = direction_from_iv(iv, min_directivity)
    return M.direction_from_angles(np.array([az]), np.array([el]))[0]


def test_intensity_direction_matches_pipeline_reference():
    import torch

    from disse.pipeline.features import direction_from_iv, intensity_features
    from disse.pipeline.foa import encode_plane_wave
    from disse.schemas import FeatureParams
    from disse.trainer.model.physics import intensity_direction

    rng = np.random.default_rng(20)
    ivs = [synthetic_iv(rng, direct=_unit(rng, 1)[0]) for _ in range(4)]
    # real features: a plane wave plus a delayed, weaker reflection from another direction
    params = FeatureParams(clip_seconds=0.5)
    sig = rng.normal(size=params.clip_samples).astype(np.float32)
    foa = encode_plane_wave(sig, 60.0, 20.0) + 0.6 * encode_plane_wave(np.roll(sig, 700), -100.0, -10.0)
    ivs.append(intensity_features(foa, params).astype(np.float16))
    for group in (ivs[:4], ivs[4:]):  # batches of equal-shaped arrays (B, 6, F, M)
        got = intensity_direction(torch.from_numpy(np.stack(group)), 0.95)
        assert got.dtype == torch.float32 and got.shape == (len(group), 3)
        np.testing.assert_allclose(torch.linalg.vector_norm(got, dim=1).numpy(), 1.0, atol=1e-6)
        for iv, vec in zip(group, got.numpy()):
            ref = _ref_vector(iv, 0.95)
            assert M.angular_error_deg(vec[None], ref[None])[0] < 1e-3
            # the threshold matters: the plain sum points elsewhere on these arrays
            assert M.angular_error_deg(vec[None], _ref_vector(iv, 0.0)[None])[0] > 0.1
    rendered = got.numpy()  # the last group: the rendered source at (60, 20) with its reflection
    assert M.angular_error_deg(rendered, M.direction_from_angles(np.array([60.0]), np.array([20.0])))[0] < 5.0
    # other thresholds agree too
    got = intensity_direction(torch.from_numpy(np.stack(ivs[:4])), 0.5)
    for iv, vec in zip(ivs[:4], got.numpy()):
        assert M.angular_error_deg(vec[None], _ref_vector(iv, 0.5)[None])[0] < 1e-3

    # fallback, per item: no cell reaches the threshold -> the plain sum (where the reference raises)
    weak = synthetic_iv(rng, direct=None, max_diffuse=0.9)
    weak[:3] += np.array([0.3, -0.2, 0.1], np.float16)[:, None, None]  # a net direction, still below 0.95
    weak = np.clip(weak, -0.5, 0.5)
    with pytest.raises(ValueError, match="no time-frequency cell"):
        direction_from_iv(weak, 0.95)
    got = intensity_direction(torch.from_numpy(np.stack([weak, ivs[0]])), 0.95).numpy()
    assert M.angular_error_deg(got[:1], _ref_vector(weak, 0.0)[None])[0] < 1e-3
    assert M.angular_error_deg(got[1:], _ref_vector(ivs[0], 0.95)[None])[0] < 1e-3  # its neighbour is unaffected
    # silence: no direction at all -> front, a fixed guess (never a zero vector, which would score 0 degrees)
    silent = np.zeros((1, 6, 4, 3), np.float16)
    np.testing.assert_array_equal(intensity_direction(torch.from_numpy(silent)).numpy(), [[1.0, 0.0, 0.0]])


def test_iv_baseline_metrics_on_the_same_items(tmp_path):
    rng = np.random.default_rng(21)
    n = 300
    emb = synthetic(n, 10, 5, seed=21, perfect=False)
    az, el = rng.uniform(-180, 180, n), rng.uniform(-60, 60, n)
    pred = M.direction_from_angles(az + 10.0, el)
    iv_dir = M.direction_from_angles(az + rng.normal(0, 40, n), el + rng.normal(0, 20, n))
    emb.physical = {"true_azimuth_deg": az, "true_elevation_deg": el, "pred_direction": pred, "iv_direction": iv_dir}
    r = evaluate_embeddings(emb)
    truth = M.direction_from_angles(az, el)
    learned, base = M.angular_error_deg(pred, truth), M.angular_error_deg(iv_dir, truth)
    assert r["phys/direction_err_deg/iv_baseline/mean"] == pytest.approx(base.mean())
    assert r["phys/direction_err_deg/iv_baseline/median"] == pytest.approx(np.median(base))
    assert r["phys/direction_err_deg/iv_baseline/mean/chance"] == 90.0
    assert r["phys/direction_err_deg/vs_iv_baseline"] == pytest.approx(learned.mean() / base.mean())
    assert r["phys/direction_err_deg/vs_iv_baseline"] < 1  # the model beats the (noisier) physics here
    assert r["phys/n"] == n
    keys = [k for k in r if k.startswith("phys/direction_err_deg")]
    assert [k[len("phys/direction_err_deg/"):] for k in keys] == [
        "mean", "median", "mean/chance", "median/chance", "iv_baseline/mean", "iv_baseline/median",
        "iv_baseline/mean/chance", "iv_baseline/median/chance", "vs_iv_baseline"]
    # saved and loaded like the other physical arrays
    emb.save(tmp_path / "with.npz")
    back = Embeddings.load(tmp_path / "with.npz")
    np.testing.assert_array_equal(back.physical["iv_direction"], iv_dir)
    assert evaluate_embeddings(back) == r
    # an older file without iv_direction still loads, and simply has no baseline keys
    del emb.physical["iv_direction"]
    emb.save(tmp_path / "old.npz")
    old = evaluate_embeddings(Embeddings.load(tmp_path / "old.npz"))
    assert not [k for k in old if "iv_baseline" in k]
    assert old["phys/direction_err_deg/mean"] == r["phys/direction_err_deg/mean"]
    # the baseline alone (no learned direction): its own figures, no ratio
    emb.physical = {"true_azimuth_deg": az, "true_elevation_deg": el, "iv_direction": iv_dir}
    alone = evaluate_embeddings(emb)
    assert "phys/direction_err_deg/iv_baseline/mean" in alone and "phys/direction_err_deg/vs_iv_baseline" not in alone
    assert "phys/direction_err_deg/mean" not in alone


# ---------------------------------------------------------------------------------------------
# audio-side leakage: AX-SRC (audio_space -> audio_space by source_id), AX-SPA (audio_source by space_id)

@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_self_retrieval_matches_brute_force(chunk):
    rng = np.random.default_rng(22)
    n = 95
    x = rng.normal(size=(n, 6))
    ids = random_ids(rng, n, 11)
    top = M.topk_self(x, 11, chunk_size=chunk)
    np.testing.assert_array_equal(top, M.topk_both_directions(x, x, 11, chunk_size=10_000)[0])
    got = M.self_retrieval(x, [M.IdSet("AX", ids, exclude_self=True)], chunk_size=chunk)
    ref = brute_retrieval(x, x, ids, ids, exclude_self=True)
    for key, value in ref.items():
        assert got[f"AX/a2a/{key}"] == pytest.approx(value, abs=1e-12), key
    # exact chance over the N - 1 other items with m - 1 positives, as for the X-checks
    m = np.array([np.sum(ids == i) - 1 for i in ids])
    chance = M.retrieval_chance(m[m > 0], n - 1)
    for key, value in chance.items():
        assert got[f"AX/a2a/{key}/chance"] == pytest.approx(value, abs=1e-12), key
    with pytest.raises(ValueError, match="exclude the query itself"):
        M.self_retrieval(x, [M.IdSet("AX", ids)])


def _protos(rng, count, dim=32):
    p = rng.normal(size=(count, dim))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def factor_embeddings(mode, n=2000, n_src=100, n_spa=40, seed=0, noise=0.05):
    """Crossed design: every item draws its source and its space independently (each source is heard in
    about n / n_src spaces). Captions carry only their own factor (text_source = f(source), text_space =
    g(space)), as real source and spatial captions do. The audio embeddings depend on:

    * ``clean``: audio_space on the space only, audio_source on the source only (disentangled);
    * ``leak``: audio_space on the source only, audio_source on the space only (complete leakage);
    * ``partial``: each audio embedding on both factors (its own plus the other's): SRC and SPA work.
    """
    rng = np.random.default_rng(seed)
    src, spa = rng.integers(0, n_src, n), rng.integers(0, n_spa, n)
    f_src, f_spa = _protos(rng, n_src), _protos(rng, n_spa)

    def noisy(x):
        return (x + noise * rng.normal(size=x.shape)).astype(np.float32)

    a_src, a_spa = {"clean": (f_src[src], f_spa[spa]), "leak": (f_spa[spa], f_src[src]),
                    "partial": (f_src[src] + f_spa[spa], f_spa[spa] + f_src[src])}[mode]
    return Embeddings(noisy(a_src), noisy(a_spa), noisy(f_src[src]), noisy(f_spa[spa]), src,
                      np.array([f"room{i}" for i in spa]))


AX = (("AX-SRC", "a2a"), ("AX-SPA", "a2a"))


def test_audio_side_leakage_is_flagged():
    r = evaluate_embeddings(factor_embeddings("leak"), chunk_size=512)
    for task, d in AX:
        for k in ("R@1", "R@5", "R@10", "mAP@10"):
            assert r[f"{task}/{d}/{k}"] > 0.99, (task, k)  # every neighbour shares the leaked id
        assert r[f"{task}/{d}/R@1"] > 5 * r[f"{task}/{d}/R@1/chance"]
        assert r[f"{task}/{d}/n_queries"] == 2000


def _near_chance(r, task, d, k, sigmas=5.0):
    """|value - chance| within ``sigmas`` binomial standard errors over the queries.

    Queries of one space share most of their neighbours, so hits are mildly over-dispersed: over 30
    seeds of this design the z-score (value - chance) / SE had mean ~0 and sd 1.1-1.3 for R@1/5/10
    (0.3 for mAP@10), so 5 SE is about 4 empirical standard deviations."""
    got, chance, nq = r[f"{task}/{d}/{k}"], r[f"{task}/{d}/{k}/chance"], r[f"{task}/{d}/n_queries"]
    return abs(got - chance) < sigmas * math.sqrt(chance * (1 - chance) / nq), (task, d, k, got, chance)


def test_disentangled_audio_scores_ax_at_chance():
    r = evaluate_embeddings(factor_embeddings("clean", seed=1), chunk_size=512)
    assert r["SRC/t2a/R@1"] == 1.0 and r["SPA/t2a/R@1"] == 1.0
    for task, d in AX:
        for k in ("R@1", "R@5", "R@10", "mAP@10"):
            ok, info = _near_chance(r, task, d, k)
            assert ok, info


def test_cross_modal_x_src_misses_a_leak_that_ax_src_catches():
    """The reason for the audio-side checks: the spatial caption holds no source information, so a text
    spatial query ranks audio by space alone and X-SRC stays at chance however much source identity
    the audio spatial embedding carries. AX-SRC compares audio with audio and sees it."""
    r = evaluate_embeddings(factor_embeddings("partial", seed=2), chunk_size=512)
    assert r["SPA/t2a/R@1"] == 1.0 and r["SRC/t2a/R@1"] == 1.0  # a model that looks fine on retrieval
    for task in ("X-SRC", "X-SPA"):
        for d in ("t2a", "a2t"):
            for k in ("R@1", "R@10"):
                ok, info = _near_chance(r, task, d, k)
                assert ok, info
    for task, d in AX:
        assert r[f"{task}/{d}/R@1"] > 5 * r[f"{task}/{d}/R@1/chance"], task
        assert r[f"{task}/{d}/mAP@10"] > 5 * r[f"{task}/{d}/mAP@10/chance"], task
        assert r[f"{task}/{d}/R@10"] > 0.9, task


def test_retrieval_key_order_is_stable():
    r = evaluate_embeddings(factor_embeddings("clean", n=200, n_src=20, n_spa=8), chunk_size=64)
    tasks = list(dict.fromkeys(k.split("/")[0] for k in r if "/" in k and k.split("/")[1] in ("t2a", "a2t", "a2a")))
    assert tasks == ["SRC", "SPA", "X-SRC", "X-SPA", "AX-SRC", "AX-SPA"]
    keys = list(r)
    assert keys.index("AX-SPA/a2a/n_queries") < keys.index("IR_space")
    assert [k for k in r if k.startswith("AX-SRC/")] == [
        "AX-SRC/a2a/n_queries", "AX-SRC/a2a/R@1", "AX-SRC/a2a/R@5", "AX-SRC/a2a/R@10", "AX-SRC/a2a/mAP@10",
        "AX-SRC/a2a/R@1/chance", "AX-SRC/a2a/R@5/chance", "AX-SRC/a2a/R@10/chance", "AX-SRC/a2a/mAP@10/chance"]
