"""Rotation about the vertical axis is exact on FOA features and keeps targets and captions true."""
from __future__ import annotations

import numpy as np
import pytest

from disse.pipeline.features import direction_from_iv, intensity_features
from disse.pipeline.foa import encode_plane_wave
from disse.schemas import load_caption_rules, load_feature_params
from disse.trainer.data.augment import rotate_iv, rotate_meta

SR = 48000


def _scene(az: float, el: float) -> np.ndarray:
    """A plane wave from (az, el) plus a reflection 60 deg further round, as AmbiX FOA (4, T)."""
    rng = np.random.default_rng(0)
    dry = rng.standard_normal(SR * 10).astype(np.float32) * 0.1
    foa = encode_plane_wave(dry, az, el)
    foa[:, 200:] += 0.5 * encode_plane_wave(dry[:-200], az + 60, 10)
    return foa.astype(np.float32)


def test_rotating_the_features_equals_rendering_the_turned_scene():
    params = load_feature_params()
    iv_30 = intensity_features(_scene(30, 20), params)
    iv_100 = intensity_features(_scene(100, 20), params)
    turned = rotate_iv(iv_30, 70.0)
    assert np.abs(turned - iv_100).max() < 1e-4
    # whatever the estimate makes of the reflection, it turns by exactly the angle
    (az0, el0), (az1, el1) = direction_from_iv(iv_30), direction_from_iv(turned)
    assert az1 == pytest.approx(az0 + 70, abs=0.05) and el1 == pytest.approx(el0, abs=0.05)


def test_float16_features_stay_float16_and_bounded():
    iv = (np.random.default_rng(1).uniform(-0.7, 0.7, (6, 11, 4))).astype(np.float16)
    out = rotate_iv(iv, 123.0)
    assert out.dtype == np.float16 and np.abs(out).max() <= 1.0
    # norms of both intensity vectors and the z components are unchanged
    assert np.allclose(np.linalg.norm(out[:3].astype(np.float32), axis=0),
                       np.linalg.norm(iv[:3].astype(np.float32), axis=0), atol=2e-3)
    assert np.array_equal(out[2], iv[2]) and np.array_equal(out[5], iv[5])


def test_rotated_meta_rebuilds_descriptors_captions_and_space_id(demo_shards):
    from disse.pipeline.shards import read_tar_samples
    from disse.schemas.shard import decode_sample

    rules = load_caption_rules()
    raw = read_tar_samples(sorted((demo_shards / "train").glob("*.tar"))[0])[0]
    _, _, meta = decode_sample(raw, audio=False)
    for angle in (45.0, 90.0, 180.0, 270.0):
        new = rotate_meta(meta, angle, rules, np.random.default_rng(0))
        want_az = (meta.azimuth_deg + angle + 180.0) % 360.0 - 180.0
        assert new.azimuth_deg == pytest.approx(want_az, abs=1e-9) or abs(abs(new.azimuth_deg) - 180) < 1e-9
        values = {"azimuth_deg": new.azimuth_deg, "elevation_deg": new.elevation_deg,
                  "source_distance_m": new.source_distance_m, "area_m2": new.area_m2, "t30_ms": new.t30_ms}
        assert new.descriptors == rules.describe(values)
        assert new.space_id == rules.space_id(new.descriptors)
        said = [p for p in rules.phrases("direction", new.descriptors["direction"]) if p in new.caption.lower()]
        assert said and any(p in new.spatial_caption.lower() for p in said)
        assert meta.source_caption.rstrip(".").lower() in new.caption.lower()
        # everything that a rotation does not change is kept
        assert (new.elevation_deg, new.source_distance_m, new.area_m2, new.t30_ms, new.source_id, new.key) == \
            (meta.elevation_deg, meta.source_distance_m, meta.area_m2, meta.t30_ms, meta.source_id, meta.key)
        for attr in ("elevation", "distance", "room_size", "reverberation"):
            assert new.descriptors[attr] == meta.descriptors[attr]


def test_train_stream_rotation_is_deterministic_and_consistent(demo_shards):
    import torch

    from disse.trainer.data.loader import DataConfig, resolve_shards, train_loader
    from disse.trainer.model.physics import direction_from_angles

    shards = resolve_shards(str(demo_shards / "train"))
    rules = load_caption_rules()

    def first_batches(rotate: bool, n: int = 2) -> list[dict]:
        cfg = DataConfig(batch_size=4, num_workers=0, shuffle_buffer=8, rotate_azimuth=rotate)
        it = iter(train_loader(shards, cfg, with_audio=False))
        return [next(it) for _ in range(n)]

    a, b, plain = first_batches(True), first_batches(True), first_batches(False)
    for x, y, p in zip(a, b, plain):
        assert x["key"] == y["key"] == p["key"]
        assert torch.equal(x["iv"], y["iv"]) and x["caption"] == y["caption"]
        assert not torch.allclose(x["targets"]["azimuth_deg"], p["targets"]["azimuth_deg"])
        want = direction_from_angles(x["targets"]["azimuth_deg"].double(), x["targets"]["elevation_deg"].double())
        assert torch.allclose(x["targets"]["direction"].double(), want, atol=1e-6)
        for az, desc in zip(x["targets"]["azimuth_deg"].tolist(), x["descriptors"]):
            assert desc["direction"] == rules.attributes["direction"].label_of(az)


def test_space_caption_drop_feeds_the_space_head_spatial_captions_only(demo_shards):
    from disse.schemas import SchemaError
    from disse.trainer.data.augment import drop_source_clause
    from disse.trainer.data.loader import DataConfig, resolve_shards, train_loader
    from disse.trainer.model.delsa import DELSA, ModelConfig

    shards = resolve_shards(str(demo_shards / "train"))

    def batches(p: float, n: int = 3) -> list[dict]:
        cfg = DataConfig(batch_size=8, num_workers=0, shuffle_buffer=8, rotate_azimuth=True, space_caption_drop=p)
        it = iter(train_loader(shards, cfg, with_audio=False))
        return [next(it) for _ in range(n)]

    a, b, plain = batches(0.5), batches(0.5), batches(0.0)
    assert all("space_head_text" not in x for x in plain)
    dropped = kept = 0
    for x, y in zip(a, b):
        assert x["space_head_text"] == y["space_head_text"]  # a resumed run makes the same choices
        for text, cap, spatial in zip(x["space_head_text"], x["caption"], x["space_text"]):
            assert text in (cap, spatial)
            dropped, kept = dropped + (text == spatial), kept + (text == cap)
    assert dropped >= 4 and kept >= 4  # 24 draws at p = 0.5
    # the source head keeps the full caption; only the space head reads the spatial caption alone
    cfg = ModelConfig(text_input="full")
    src, spa = DELSA.text_pairs(type("M", (), {"cfg": cfg})(), a[0])
    assert src == a[0]["caption"] and spa == a[0]["space_head_text"]
    with pytest.raises(SchemaError, match="space_caption_drop"):
        drop_source_clause("k", 1.5, 0, 0)
