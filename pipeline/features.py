"""Intensity-vector features of an AmbiX FOA signal (DESIGN.md), vectorised float32 numpy.

For each STFT bin, with the FOA spectra W, X, Y, Z (SN3D)::

    I_act = Re{conj(W) [X, Y, Z]}      I_rea = Im{conj(W) [X, Y, Z]}
    E     = (|W|^2 + |X|^2 + |Y|^2 + |Z|^2) / 2

The three products and E are summed over each mel band (triangular filters) and the intensities
are divided by the band energy of the same frame: ``I / (E + eps)``. With this normalisation a
single plane wave gives exactly the unit vector towards the source (|W| = |[X, Y, Z]| in SN3D), and
|I| <= 1 always (|W||v| <= (|W|^2 + |v|^2) / 2), so float16 storage loses nothing that matters;
a diffuse field shrinks the active vector towards 0.

Output ``(6, n_frames, n_mels)`` in the order act_x, act_y, act_z, rea_x, rea_y, rea_z
(x = front, y = left, z = up), with the STFT / mel parameters of :class:`FeatureParams`.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from disse.pipeline.foa import direction_of
from disse.pipeline.official_features import official_iv
from disse.schemas import FeatureParams
from disse.schemas.features import OfficialFeatureParams

# AmbiX channel index of W and of the Cartesian components x (front), y (left), z (up).
_W, _XYZ = 0, (3, 1, 2)


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Triangular HTK-mel filters ``(n_fft // 2 + 1, n_mels)`` float32 (columns peak at 1).

    Bands narrower than one FFT bin still get the nearest bin, so no band is empty.
    """
    n_bins = params.n_fft // 2 + 1
    freqs = np.arange(n_bins) * params.sample_rate / params.n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(params.fmin_hz), hz_to_mel(params.fmax_hz), params.n_mels + 2))
    fb = np.zeros((n_bins, params.n_mels), dtype=np.float64)
    for m in range(params.n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (centre - lo)
        falling = (hi - freqs) / (hi - centre)
        fb[:, m] = np.clip(np.minimum(rising, falling), 0.0, None)
        if not fb[:, m].any():
            fb[int(np.argmin(np.abs(freqs - centre))), m] = 1.0
    return fb.astype(np.float32)


@lru_cache(maxsize=8)
def _window(params: FeatureParams) -> np.ndarray:
    """Periodic Hann of ``win_length`` centred in ``n_fft`` zeros (as torch.stft does)."""
    n = params.win_length
    win = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    left = (params.n_fft - n) // 2
    out = np.zeros(params.n_fft, dtype=np.float32)
    out[left:left + n] = win
    return out


def stft(x: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Centred STFT of ``(C, T)`` float -> ``(C, frames, n_fft // 2 + 1)`` complex64.

    Frames are centred on ``t * hop`` (zero padding of n_fft // 2 at both ends), so a clip of T
    samples gives ``T // hop + 1`` frames. All channels go through one batched real FFT.
    """
    x = np.asarray(x, dtype=np.float32)
    half = params.n_fft // 2
    padded = np.pad(x, ((0, 0), (half, half)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, params.n_fft, axis=-1)[:, ::params.hop_length]
    return scipy.fft.rfft(frames * _window(params), axis=-1, overwrite_x=True)


@lru_cache(maxsize=8)
def _band_limits(params: FeatureParams) -> tuple[int, int, np.ndarray]:
    """FFT bins [k0, k1) that any mel filter touches, and the filterbank cut to them ``(k1-k0, M)``.
    Bins above fmax (a third of them at the defaults) are never multiplied or pooled."""
    fb = mel_filterbank(params)
    used = np.nonzero(fb.any(axis=1))[0]
    k0, k1 = int(used[0]), int(used[-1]) + 1
    return k0, k1, np.ascontiguousarray(fb[k0:k1])


def intensity_features(foa: np.ndarray, params: FeatureParams | OfficialFeatureParams) -> np.ndarray:
    """AmbiX FOA ``(4, T)`` -> normalised mel intensity vectors ``(6, frames, n_mels)`` float32.

    With the ``official`` preset (:class:`OfficialFeatureParams`) -> the release's intensity vectors
    ``(6, 201, 1601)`` (:func:`disse.pipeline.official_features.official_iv`).
    """
    if isinstance(params, OfficialFeatureParams):
        return official_iv(foa, params)
    if foa.ndim != 2 or foa.shape[0] != 4:
        raise ValueError(f"FOA must be (4, T), got {foa.shape}")
    k0, k1, fb = _band_limits(params)
    spec = stft(foa, params)[..., k0:k1]           # (4, F, K) complex64
    n_frames = spec.shape[1]
    stacked = np.empty((7, n_frames, k1 - k0), dtype=np.float32)
    cross = spec[list(_XYZ)]                       # (3, F, K) copy: [X, Y, Z]
    cross *= np.conj(spec[_W])[None]               # conj(W) * [X, Y, Z]
    stacked[:3] = cross.real
    stacked[3:6] = cross.imag
    power = np.square(spec.view(np.float32)).sum(axis=0)          # (F, 2K): re^2, im^2 interleaved
    np.multiply(power[:, 0::2] + power[:, 1::2], 0.5, out=stacked[6])
    # One matmul pools the six intensity maps and the energy to mel bands.
    pooled = stacked @ fb                          # (7, F, M)
    return (pooled[:6] / (pooled[6:] + np.float32(params.eps))).astype(np.float32, copy=False)


def direction_from_iv(iv: np.ndarray, min_directivity: float = 0.0, features: dict | None = None
                      ) -> tuple[float, float]:
    """Estimate the source direction (azimuth_deg, elevation_deg) from ``iv (6, F, M)``.

    Sums the active intensity vectors of the time-frequency cells whose directivity ``|I_act|``
    (1 for a single plane wave, 0 for a diffuse field) is at least ``min_directivity``. With 0 it
    is the plain sum, exact for anechoic sound; in a room, early reflections bend the plain sum,
    and keeping only near-plane-wave cells (e.g. 0.95: frames that hold the direct sound alone,
    as after an onset) recovers the direct path. Pass the sample's ``features`` block to read an
    ``official`` preset ``iv`` ([act Y, Z, X] first).
    """
    if features is not None and features.get("preset", "project") == "official":
        iv = np.asarray(iv)[[2, 0, 1]]  # official rows act Y, Z, X -> x, y, z (axes bins x frames)
    act = np.asarray(iv[:3], dtype=np.float64)
    if min_directivity > 0:
        keep = np.linalg.norm(act, axis=0) >= min_directivity
        if not keep.any():
            raise ValueError(f"no time-frequency cell reaches directivity {min_directivity}")
        return direction_of(act[:, keep].sum(axis=1))
    return direction_of(act.sum(axis=(1, 2)))


def direction_track(iv: np.ndarray, features: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The direction the active intensity gives frame by frame: ``(azimuth_deg (F,), elevation_deg (F,),
    directivity (F,))``, the sum of the frame's active vectors over its bands (or bins), and that sum's length
    over the band count (1 for one plane wave, near 0 for a diffuse field or silence). ``iv``: ``(6, F, M)``
    as stored; an ``official`` preset ``iv`` (``(6, bins, frames)``, [act Y, Z, X] first) is read as such."""
    iv = np.asarray(iv)
    if features is not None and features.get("preset", "project") == "official":
        act = np.asarray(iv[[2, 0, 1]], dtype=np.float64).transpose(0, 2, 1)  # -> (3, frames, bins), x y z
    else:
        act = np.asarray(iv[:3], dtype=np.float64)
    v = act.sum(axis=2)                                                        # (3, F)
    az = np.degrees(np.arctan2(v[1], v[0]))
    el = np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1])))
    return az, el, np.linalg.norm(v, axis=0) / max(act.shape[2], 1)
