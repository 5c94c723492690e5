"""FOA conventions, intensity features and captions: physics and the rule table, no files."""
import math

import numpy as np
import pytest

from disse.pipeline.captions import make_captions
from disse.pipeline.features import (direction_from_iv, intensity_features, mel_filterbank, stft)
from disse.pipeline.foa import (ambix_to_fuma, angular_error_deg, encode_plane_wave, fuma_to_ambix,
                                plane_wave_gains)
from disse.pipeline.splits import assign_splits, pair_blocks, per_sample_rng
from disse.schemas import FeatureParams, load_caption_rules, load_feature_params

PARAMS = load_feature_params()
SHORT = FeatureParams(clip_seconds=1.0)  # same STFT / mel settings, 1 s clips: fast tests
RULES = load_caption_rules()
DIRECTIONS = [(0, 0), (90, 0), (-90, 0), (180, 0), (0, 80), (45, -30), (-135, 20), (120, 60)]


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_plane_wave_gains_follow_ambix_axes():
    # W, Y (left), Z (up), X (front), SN3D: unit norm dipole part
    np.testing.assert_allclose(plane_wave_gains(0, 0), [1, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(plane_wave_gains(90, 0), [1, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(plane_wave_gains(-90, 0), [1, -1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(plane_wave_gains(0, 90), [1, 0, 1, 0], atol=1e-12)
    g = plane_wave_gains(37, -21)
    assert np.linalg.norm(g[1:]) == pytest.approx(1.0)


@pytest.mark.parametrize("az,el", DIRECTIONS)
def test_plane_wave_direction_recovered_from_intensity(az, el):
    iv = intensity_features(encode_plane_wave(_noise(SHORT.clip_samples), az, el), SHORT)
    assert iv.shape == (6, SHORT.n_frames, SHORT.n_mels)
    est = direction_from_iv(iv.astype(np.float16))
    assert angular_error_deg(*est, az, el) < 0.5
    # a single plane wave: |I_act| = 1 wherever there is energy, no reactive part
    mag = np.linalg.norm(iv[:3], axis=0)
    assert np.percentile(mag, 50) == pytest.approx(1.0, abs=1e-3)
    assert np.abs(iv[3:]).max() < 1e-3


def test_intensity_is_bounded_and_shrinks_in_a_diffuse_field():
    n = SHORT.clip_samples
    rng = np.random.default_rng(1)
    foa = np.zeros((4, n), np.float32)
    for _ in range(200):  # many uncorrelated plane waves from all around: a diffuse field
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        az, el = math.degrees(math.atan2(u[1], u[0])), math.degrees(math.asin(u[2]))
        foa += encode_plane_wave(_noise(n, int(rng.integers(1 << 30))), az, el)
    iv = intensity_features(foa, SHORT)
    assert np.abs(iv).max() <= 1.0 + 1e-5
    # per cell, the instantaneous products do not cancel; their magnitude is well below a plane
    # wave's 1 and their time average (the expected net energy flow) vanishes in every band
    assert np.linalg.norm(iv[:3], axis=0).mean() < 0.5
    assert np.linalg.norm(iv[:3].mean(axis=1), axis=0).max() < 0.2


def test_fuma_conversion_round_trip_and_gains():
    sig = _noise(1000)
    ambix = encode_plane_wave(sig, 60, 20)
    fuma = ambix_to_fuma(ambix)
    # FuMa: W at -3 dB, order W X Y Z
    np.testing.assert_allclose(fuma[0], ambix[0] / math.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(fuma[1], ambix[3], rtol=1e-6)
    np.testing.assert_allclose(fuma_to_ambix(fuma), ambix, rtol=1e-6, atol=1e-7)


def test_stft_frames_and_mel_bands():
    x = np.zeros((1, PARAMS.clip_samples), np.float32)
    assert stft(x, PARAMS).shape == (1, PARAMS.n_frames, PARAMS.n_fft // 2 + 1)
    assert PARAMS.n_frames == 1001
    fb = mel_filterbank(PARAMS)
    assert fb.shape == (PARAMS.n_fft // 2 + 1, PARAMS.n_mels)
    assert (fb.max(axis=0) > 0).all()  # no empty band
    freqs = np.arange(fb.shape[0]) * PARAMS.sample_rate / PARAMS.n_fft
    peaks = freqs[fb.argmax(axis=0)]
    assert np.all(np.diff(peaks) >= 0) and peaks[0] >= PARAMS.fmin_hz - 50 and peaks[-1] <= PARAMS.fmax_hz


# ----------------------------------------------------------------------------------------------
# Captions follow the rule table
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values,expected", [
    ({"azimuth_deg": 35, "elevation_deg": 40, "source_distance_m": 0.99, "area_m2": 49.9, "t30_ms": 199},
     {"direction": "front", "elevation": "level", "distance": "near", "room_size": "small",
      "reverberation": "dampened"}),
    ({"azimuth_deg": 55, "elevation_deg": 41, "source_distance_m": 2.01, "area_m2": 100.5, "t30_ms": 1001},
     {"direction": "left", "elevation": "above", "distance": "far", "room_size": "large",
      "reverberation": "highly-reverberant"}),
    ({"azimuth_deg": -125, "elevation_deg": -41, "source_distance_m": 1.5, "area_m2": 75, "t30_ms": 600},
     {"direction": "right", "elevation": "below", "distance": "mid", "room_size": "medium",
      "reverberation": "reverberant"}),
    ({"azimuth_deg": 180, "elevation_deg": 0, "source_distance_m": 2, "area_m2": 50, "t30_ms": 200},
     {"direction": "behind", "elevation": "level", "distance": "mid", "room_size": "medium",
      "reverberation": "slightly-reverberant"}),
])
def test_caption_words_follow_rule_table_at_thresholds(values, expected):
    descriptors = RULES.describe(values)
    assert descriptors == expected
    for seed in range(6):
        caps = make_captions(RULES, descriptors, "A dog barks.", per_sample_rng(seed, "k"))
        for attribute, label in descriptors.items():
            phrase = caps.phrases[attribute]
            assert phrase in RULES.phrases(attribute, label)
            assert phrase in caps.spatial_caption.lower() and phrase in caps.caption.lower()
            # no phrase of another bin of this attribute sneaks in
            for other in RULES.attributes[attribute].labels:
                if other != label:
                    for p in RULES.phrases(attribute, other):
                        if p not in phrase and phrase not in p:
                            assert f" {p}" not in caps.spatial_caption.lower()
        assert "dog barks" in caps.caption.lower() and "dog" not in caps.spatial_caption.lower()
        assert caps.caption.endswith(".") and ".." not in caps.caption


def test_captions_seeded_and_varied():
    d = RULES.describe({"azimuth_deg": 90, "elevation_deg": 0, "source_distance_m": 3,
                        "area_m2": 200, "t30_ms": 1500})
    a = make_captions(RULES, d, "Rain falls", per_sample_rng(0, "x"))
    b = make_captions(RULES, d, "Rain falls", per_sample_rng(0, "x"))
    assert a == b
    many = {make_captions(RULES, d, "Rain falls", per_sample_rng(0, f"k{i}")).caption for i in range(40)}
    assert len(many) > 10  # several phrasings and templates are used


# ----------------------------------------------------------------------------------------------
# Splits and pairing
# ----------------------------------------------------------------------------------------------

def test_split_assignment_is_per_id_and_stable():
    ids = [f"c{i}" for i in range(2000)]
    s = assign_splits(ids, 0.1, 0.1, seed=3)
    counts = {k: list(s.values()).count(k) for k in ("train", "val", "test")}
    assert 150 < counts["val"] < 250 and 150 < counts["test"] < 250
    # adding items does not move existing ones; order does not matter
    s2 = assign_splits(ids[::-1] + ["new1", "new2"], 0.1, 0.1, seed=3)
    assert all(s2[i] == s[i] for i in ids)
    tiny = assign_splits(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert sorted(tiny.values()) == ["test", "train", "val"]


@pytest.mark.parametrize("n_c,n_r,k,l", [(10, 4, 2, 3), (5, 20, 3, 2), (7, 7, 1, 1), (3, 2, 4, 5)])
def test_pairing_gives_k_spaces_per_clip_and_l_clips_per_rir(n_c, n_r, k, l):
    clips, rirs = [f"c{i}" for i in range(n_c)], [f"r{i}" for i in range(n_r)]
    pairs = pair_blocks(clips, rirs, k, l, seed=0)
    assert len(set(pairs)) == len(pairs)
    for c in clips:
        assert len({r for cc, r in pairs if cc == c}) >= min(k, n_r)
    for r in rirs:
        assert len({c for c, rr in pairs if rr == r}) >= min(l, n_c)
    assert pair_blocks(clips[::-1], rirs[::-1], k, l, seed=0) == pairs  # input order irrelevant
