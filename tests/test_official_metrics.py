"""The release's metric semantics (reference §4.3) on hand-computed toy cases, and its .npz layout."""
from __future__ import annotations

import math

import numpy as np
import pytest

from disse.trainer.evaluation.official_metrics import (evaluate_official, flatten, iidr, json_safe, load_npz,
                                            rank_summary, retrieval, retrieval_ranks, save_npz)

E1, E2 = [1.0, 0.0], [0.0, 1.0]


def test_ties_are_optimistic():
    # gallery: a negative tied with the only positive, then a worse negative
    ranks = retrieval_ranks(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
                            np.array(["a"]), np.array(["x", "a", "y"]))
    assert ranks.tolist() == [1]
    # a strictly better negative costs one place
    ranks = retrieval_ranks(np.array([[1.0, 0.0]]), np.array([[1.0, 0.1], [1.0, 0.0], [1.0, 0.5]]),
                            np.array(["a"]), np.array(["x", "a", "y"]))
    assert ranks.tolist() == [1]  # (1, .1) and (1, .5) both score below the exact match after normalising
    ranks = retrieval_ranks(np.array([[1.0, 1.0]]), np.array([[1.0, 0.9], [1.0, 0.0], [0.0, 1.0]]),
                            np.array(["a"]), np.array(["x", "a", "y"]))
    assert ranks.tolist() == [2]  # (1, .9) beats the positive; (0, 1) ties it: optimistic


def test_lower_median_and_summary():
    s = rank_summary(np.array([1, 2, 3, 10]), ks=(1, 5))
    assert s == {"R@1": 0.25, "R@5": 0.75, "MedR": 2.0, "MnR": 4.0, "queries": 4}


def _grid():
    """2 sources x 2 spaces; spatial embeddings encode the space only, source ones the source only."""
    src = np.array(["s0", "s0", "s1", "s1"])
    spa = np.array(["p0", "p1", "p0", "p1"])
    spatial = np.array([E1, E2, E1, E2])
    source = np.array([E1, E1, E2, E2])
    return {"audio_source": source, "text_source": source.copy(), "audio_spatial": spatial,
            "text_spatial": spatial.copy(), "source_id": src, "spatial_id": spa}


def test_cross_modal_keeps_the_own_pair_even_in_leakage_checks():
    d = _grid()
    rep = evaluate_official(d, ks=(1,))
    # off_task_source on spatial embeddings: query (s0, p0) ties items 0 and 2 at the top; its own pair
    # (item 0, source s0) is a positive, so rank 1 for every query: leakage looks saturated
    off = rep["cross_modal"]["off_task_source"]["text_to_audio"]
    assert off["R@1"] == 1.0 and off["MedR"] == 1.0 and off["queries"] == 4
    # excluding the own pair (the project's convention) the best positive is the same source in the
    # other space (similarity 0): one item of the other source scores 1 (strictly higher), the other
    # ties at 0 (optimistic): rank 2 for every query
    assert retrieval(d["text_spatial"], d["audio_spatial"], d["source_id"], d["source_id"],
                     exclude_self=True)["MnR"] == 2.0
    # intra-modal masks the query itself: the same numbers, rank 2
    intra = rep["intra_modal"]["audio"]["off_task_source"]
    assert intra["MnR"] == 2.0 and intra["R@1"] == 0.0
    assert rep["intra_modal"]["audio"]["on_task_spatial"]["R@1"] == 1.0
    # both: the joint id, one positive per query (the own pair); the four concatenations are distinct
    both = rep["cross_modal"]["both"]["audio_to_text"]
    assert both["R@1"] == 1.0 and both["queries"] == 4


def test_both_has_one_positive_and_uses_joint_ids():
    rng = np.random.default_rng(0)
    d = {k: rng.standard_normal((6, 3)) for k in ("audio_source", "audio_spatial", "text_source", "text_spatial")}
    d["source_id"] = np.array([1, 1, 1, 2, 2, 2])
    d["spatial_id"] = np.array(["a", "b", "c", "a", "b", "c"])
    d["text_source"], d["text_spatial"] = d["audio_source"] * 3.0, d["audio_spatial"] * 0.5  # scale-free
    rep = evaluate_official(d)
    assert rep["cross_modal"]["both"]["text_to_audio"]["R@1"] == 1.0


def test_iidr_excludes_pairs_of_one_joint_group():
    # A and A' share (s0, p0): their distance (1) must count in neither mean
    e = np.array([E1, E2, E1, [-1.0, 0.0]])
    src = np.array(["s0", "s0", "s0", "s1"])
    spa = np.array(["p0", "p0", "p1", "p0"])
    r = iidr(e, src, spa)
    assert r["pairs_same_source_diff_spatial"] == 2 and r["pairs_same_spatial_diff_source"] == 2
    assert r["mean_same_source_diff_spatial"] == pytest.approx(0.5)   # (A,B)=0, (A',B)=1
    assert r["mean_same_spatial_diff_source"] == pytest.approx(1.5)   # (A,C)=2, (A',C)=1
    assert r["IIDR_source"] == pytest.approx(3.0) and r["IIDR_spatial"] == pytest.approx(1 / 3)


def test_iidr_zero_means():
    e = np.array([E1, E1, E1, E1])
    src, spa = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    r = iidr(e, src, spa)
    assert math.isnan(r["IIDR_source"]) and math.isnan(r["IIDR_spatial"])
    r = iidr(np.array([E1, E1, E2, E2]), src, spa)  # source-only embedding
    assert r["IIDR_source"] == math.inf and r["IIDR_spatial"] == 0.0
    assert json_safe(r)["IIDR_source"] == "Infinity"


def test_npz_round_trip_aliases_and_flatten(tmp_path):
    d = _grid()
    path = save_npz(tmp_path / "emb.npz", d)
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == {"audio_source", "audio_spatial", "text_source", "text_spatial",
                                "source_id", "spatial_id"}
        assert f["source_id"].dtype.kind == "U" and f["audio_source"].shape == (4, 2)
    back = load_npz(path)
    np.testing.assert_array_equal(back["spatial_id"], d["spatial_id"])
    np.savez(tmp_path / "alias.npz", a_src=d["audio_source"], t_spa=d["text_spatial"], src_id=d["source_id"],
             space_id=d["spatial_id"])
    assert set(load_npz(tmp_path / "alias.npz")) == {"audio_source", "text_spatial", "source_id", "spatial_id"}
    np.savez(tmp_path / "bad.npz", audio_source=d["audio_source"][:3], source_id=d["source_id"],
             spatial_id=d["spatial_id"])
    with pytest.raises(ValueError, match="audio_source"):
        load_npz(tmp_path / "bad.npz")
    flat = flatten(evaluate_official(d, ks=(1,)))
    assert flat["official/cross_modal/on_task_source/text_to_audio/R@1"] == 1.0
    assert all(k.startswith("official/") for k in flat)
