"""The official feature preset (reference §1.4, §2.3) against direct re-computations of its formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from disse.pipeline.features import intensity_features
from disse.pipeline.foa import encode_plane_wave
from disse.pipeline.official_features import (official_direction, official_intensity, official_iv,
                                              resample_torchaudio, split_official_iv)
from disse.schemas import SchemaError
from disse.schemas.features import (FeatureParams, OfficialFeatureParams, feature_params_from_dict,
                                    load_feature_params)
from disse.trainer.model.official import official_htsat_inputs


def _plane_wave(az: float, el: float, seconds: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return encode_plane_wave(rng.standard_normal(int(48000 * seconds)).astype(np.float32) * 0.1, az, el)


def _numpy_resample_48k_to_16k(x: np.ndarray) -> np.ndarray:
    """torchaudio's sinc/Hann resampler written out from its formula, in float64."""
    orig, width_zc, base = 3, 6, 0.99  # 48000:16000 = 3:1 after the gcd; rolloff 0.99 of the lower rate
    width = math.ceil(width_zc * orig / base)
    k = np.arange(-width, width + orig) / orig * base
    t = np.clip(k, -width_zc, width_zc)
    kernel = np.cos(t * math.pi / width_zc / 2) ** 2 * np.sinc(t) * base / orig
    padded = np.pad(x.astype(np.float64), [(0, 0), (width, width + orig)])
    n_out = math.ceil(x.shape[-1] / orig)
    idx = np.arange(n_out)[:, None] * orig + np.arange(kernel.size)[None]
    return padded[:, idx] @ kernel


def _numpy_reference(foa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference §2.3 step by step in numpy float64."""
    x = _numpy_resample_48k_to_16k(foa)
    n_fft, hop = 400, 100
    padded = np.pad(x, [(0, 0), (n_fft // 2, n_fft // 2)], mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    n_frames = 1 + x.shape[-1] // hop
    frames = np.stack([padded[:, i * hop:i * hop + n_fft] for i in range(n_frames)], axis=1)
    spec = np.fft.rfft(frames * window, axis=-1).transpose(0, 2, 1)  # (4, 201, frames)
    w, y, z, xx = spec
    cross = np.conj(w)[None] * np.stack([y, z, xx])
    act, rea = cross.real, cross.imag
    n = np.linalg.norm(act, axis=0, keepdims=True)
    s = np.where(n > 1e-6, n, 1.0)
    return act / s, rea / s


def test_resampler_matches_the_formula():
    x = np.random.default_rng(1).standard_normal((2, 4801)).astype(np.float32)
    import torch
    ours = resample_torchaudio(torch.from_numpy(x), 48000, 16000).numpy()
    ref = _numpy_resample_48k_to_16k(x)
    assert ours.shape == (2, 1601) == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def test_plane_wave_shapes_dtype_direction_and_reference():
    az, el = 70.0, -25.0
    foa = _plane_wave(az, el)
    act, rea = official_intensity(foa)
    assert act.shape == rea.shape == (3, 201, 1601)
    assert act.dtype == rea.dtype == np.float32
    a, e = official_direction(act)
    assert abs(a - az) < 0.1 and abs(e - el) < 0.1
    # components are [Y, Z, X]: Y = sin(az) cos(el) of a unit vector in every loud bin
    loud = np.linalg.norm(act, axis=0) > 0.5
    assert loud.mean() > 0.9
    passband = act[:, :150]  # below 6 kHz: above ~7.9 kHz the resampler's stop band leaves float32 noise
    unit = passband[:, loud[:150]].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(unit, [math.sin(math.radians(az)) * math.cos(math.radians(el)),
                                      math.sin(math.radians(el)),
                                      math.cos(math.radians(az)) * math.cos(math.radians(el))], atol=1e-4)
    # a plane wave carries no reactive intensity
    assert np.abs(rea[:, :150][:, loud[:150]]).max() < 1e-3
    # the whole tensor against the numpy re-computation (a 1 s clip, tiled to 10 s as the release does)
    short = _plane_wave(az, el, seconds=1.0, seed=3)
    act, rea = official_intensity(short)
    ref_act, ref_rea = _numpy_reference(np.tile(short, (1, 10)))
    big = np.linalg.norm(ref_act, axis=0) > 1e-6
    assert big.mean() > 0.99
    np.testing.assert_allclose(act[:, big], ref_act[:, big], atol=2e-3)
    np.testing.assert_allclose(rea[:, big], ref_rea[:, big], atol=2e-3)


def test_reactive_part_of_a_standing_wave_is_normalised_by_the_active_norm():
    # W and Y in quadrature: purely reactive along Y; the active norm is ~0 (not > 1e-6 in quiet
    # bins), so those bins stay unnormalised, as the release leaves them
    t = np.arange(480000) / 48000
    foa = np.zeros((4, t.size), np.float32)
    foa[0] = np.sin(2 * np.pi * 1000 * t)
    foa[1] = np.cos(2 * np.pi * 1000 * t) * 0.5
    foa[3] = np.sin(2 * np.pi * 1000 * t) * 0.5  # plus an active X part of the same size
    act, rea = official_intensity(foa)
    k = 1000 * 400 // 16000  # bin 25
    frame = 800
    ratio = rea[0, k, frame] / np.linalg.norm(act[:, k, frame])
    assert abs(np.linalg.norm(act[:, k, frame]) - 1) < 1e-4   # normalised
    assert abs(abs(ratio) - 1.0) < 1e-2                       # |rea_Y| = |act_X| before normalising


def test_preset_via_intensity_features_and_storage():
    params = load_feature_params("official")
    assert isinstance(params, OfficialFeatureParams)
    foa = _plane_wave(-120.0, 10.0, seconds=2.0)
    iv = intensity_features(foa, params)
    assert iv.shape == params.iv_shape == (6, 201, 1601) and iv.dtype == np.float32
    stored = iv.astype(np.float16)
    assert np.isfinite(stored).all()
    act, rea = split_official_iv(stored)
    a, e = official_direction(act)
    assert abs(a + 120.0) < 0.2 and abs(e - 10.0) < 0.2
    from disse.pipeline.features import direction_from_iv
    a2, e2 = direction_from_iv(stored, features=params.to_dict())
    assert abs(a2 - a) < 1e-6 and abs(e2 - e) < 1e-6
    # bytes per sample of iv.npy: 6 x 201 x 1601 float16 + the npy header
    assert stored.nbytes == 3_861_612


def test_float16_storage_clips_instead_of_overflowing():
    foa = np.zeros((4, 480000), np.float32)
    rng = np.random.default_rng(0)
    foa[0] = rng.standard_normal(480000)
    foa[1] = 1e5 * np.roll(foa[0], 1)  # a huge, nearly reactive Y
    iv = official_iv(foa * 1e-3)
    assert np.abs(iv).max() <= 65504 and np.isfinite(iv.astype(np.float16)).all()


def test_features_block_dispatch_and_errors():
    d = OfficialFeatureParams().to_dict()
    assert d["preset"] == "official"
    assert feature_params_from_dict(d) == OfficialFeatureParams()
    assert isinstance(feature_params_from_dict(FeatureParams().to_dict()), FeatureParams)
    assert "preset" not in FeatureParams().to_dict()  # project shards unchanged
    with pytest.raises(SchemaError, match="hop_length"):
        feature_params_from_dict({**d, "hop_length": 160})
    with pytest.raises(SchemaError, match="official"):
        FeatureParams.from_dict(d)
    with pytest.raises(SchemaError, match="unknown feature preset"):
        feature_params_from_dict({"preset": "mystery"})


def test_htsat_inputs_are_the_slaney_single_plane_path():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(480000) * 0.1).astype(np.float32)
    out = official_htsat_inputs(np.stack([w, w[::-1].copy()]))
    feats, longer = out["input_features"].numpy(), out["is_longer"].numpy()
    assert feats.shape == (2, 1, 1001, 64)
    assert not longer.any()
    # re-computation: periodic Hann 1024, hop 480, centred (reflect), power, Slaney mel 50..14000 Hz, 10 log10
    fb = librosa.filters.mel(sr=48000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, htk=False, norm="slaney")
    padded = np.pad(w.astype(np.float64), 512, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    frames = np.stack([padded[i * 480:i * 480 + 1024] for i in range(1001)])
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    ref = 10 * np.log10(np.maximum(power @ fb.T, 1e-10))
    np.testing.assert_allclose(feats[0, 0], ref, atol=1e-2)
