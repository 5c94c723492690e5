"""The DISSE release's spatial front end (reference §2.3), the ``official`` feature preset.

FOA in AmbiX order (W, Y, Z, X) at 48 kHz, 480000 samples ->

1. all four channels resampled 48 -> 16 kHz with torchaudio's default kernel (``sinc_interp_hann``,
   ``lowpass_filter_width`` 6, ``rolloff`` 0.99; re-implemented in :func:`resample_torchaudio`
   because torchaudio is not a dependency; same float32 operations);
2. ``torch.stft`` with n_fft 400, hop 100, ``torch.hann_window(400)`` (periodic), centred with
   reflect padding, unnormalised, one-sided -> ``(4, 201, 1601)`` complex;
3. ``I_act = Re(conj(W) [Y, Z, X])``, ``I_rea = Im(conj(W) [Y, Z, X])`` (component order Y, Z, X);
4. both divided per bin by ``n = |I_act|`` where ``n > 1e-6`` (elsewhere left as they are).

No log, mel pooling or energy normalisation. :func:`official_intensity` returns the release's
float32 ``(i_act, i_rea)``, each ``(3, 201, 1601)``; :func:`official_iv` stacks them into the shard's
``iv.npy`` layout ``(6, 201, 1601)`` with values clipped to float16's finite range.
"""
from __future__ import annotations

import math
import multiprocessing
from functools import lru_cache

import numpy as np
import torch

from disse.schemas.features import OfficialFeatureParams

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@lru_cache(maxsize=4)
def _sinc_kernel(orig: int, new: int, width_zc: int = 6, rolloff: float = 0.99):
    """torchaudio's ``_get_sinc_resample_kernel`` for float32 input: ``(new', 1, K)`` and its width."""
    g = math.gcd(int(orig), int(new))
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(width_zc * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float32)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new + idx
    t *= base
    t = t.clamp_(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2
    t *= math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel *= window * (base / orig)
    return kernel, width, orig, new


def resample_torchaudio(x, orig: int, new: int):
    """``torchaudio.functional.resample(x, orig, new)`` with its defaults; ``x`` float32 tensor ``(..., T)``."""
    if orig == new:
        return x
    kernel, width, o, n = _sinc_kernel(int(orig), int(new))
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = torch.nn.functional.pad(flat, (width, width + o))
    out = torch.nn.functional.conv1d(padded[:, None], kernel, stride=o)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    out = out[..., :math.ceil(n * length / o)]
    return out.reshape(shape[:-1] + out.shape[-1:])


def fit_repeat(x: np.ndarray, n: int) -> np.ndarray:
    """The release's length fit: tile a short clip whole ``ceil(n / T)`` times and cut; crop a long one."""
    t = x.shape[-1]
    if t == 0:
        raise ValueError("empty clip")
    if t < n:
        x = np.concatenate([x] * math.ceil(n / t), axis=-1)
    return x[..., :n]


def fit_repeat_torch(x: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`fit_repeat` on a tensor ``(..., T)`` (any device)."""
    t = x.shape[-1]
    if t == 0:
        raise ValueError("empty clip")
    if t < n:
        x = x.repeat(*([1] * (x.dim() - 1)), math.ceil(n / t))
    return x[..., :n]


def official_intensity_torch(foa: torch.Tensor, params: OfficialFeatureParams | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, on ``foa``'s device: AmbiX FOA ``(B, 4, T)`` float32 at 48 kHz -> (i_act, i_rea), each
    ``(B, 3, 201, 1601)`` float32 [Y, Z, X]; ``T`` other than 480000 is tiled / cropped first. No gradients.
    The one implementation of the release's front end (:func:`official_intensity` is its one-clip numpy form);
    the trainer computes it on the GPU from the shards' FOA (docs/official.md)."""
    p = params or OfficialFeatureParams()
    if foa.dim() != 3 or foa.shape[1] != 4:
        raise ValueError(f"FOA must be (B, 4, T), got {tuple(foa.shape)}")
    with torch.no_grad():
        x = fit_repeat_torch(foa.to(torch.float32), p.clip_samples)
        b = x.shape[0]
        x16 = resample_torchaudio(x.reshape(b * 4, -1), p.sample_rate, p.feature_sample_rate)
        window = torch.hann_window(p.win_length, device=x16.device)
        spec = torch.stft(x16, n_fft=p.n_fft, hop_length=p.hop_length, win_length=p.win_length, window=window,
                          center=p.center, pad_mode=p.pad_mode, normalized=False, onesided=True,
                          return_complex=True)
        spec = spec.reshape(b, 4, *spec.shape[1:])       # (B, 4, 201, 1601)
        cross = torch.conj(spec[:, 0:1]) * spec[:, 1:4]   # channels 1..3 of AmbiX are Y, Z, X
        act, rea = cross.real, cross.imag
        norm = torch.sqrt((act ** 2).sum(dim=1, keepdim=True))
        scale = torch.where(norm > p.norm_eps, norm, torch.ones_like(norm))
        return act / scale, rea / scale


def official_intensity(foa: np.ndarray, params: OfficialFeatureParams | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """AmbiX FOA ``(4, T)`` at 48 kHz -> (i_act, i_rea), each float32 ``(3, 201, 1601)`` [Y, Z, X].

    ``T`` other than 480000 is tiled / cropped first, as the release does (:func:`official_intensity_torch`).
    """
    _one_thread_in_workers()
    foa = np.asarray(foa, dtype=np.float32)
    if foa.ndim != 2 or foa.shape[0] != 4:
        raise ValueError(f"FOA must be (4, T), got {foa.shape}")
    act, rea = official_intensity_torch(torch.from_numpy(np.ascontiguousarray(foa))[None], params)
    return act[0].numpy().astype(np.float32, copy=False), rea[0].numpy().astype(np.float32, copy=False)


_THREADS_CHECKED = False


def _one_thread_in_workers() -> None:
    """In a worker process (render / grid pools) torch gets one thread: the processes use the cores."""
    global _THREADS_CHECKED
    if not _THREADS_CHECKED:
        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)
        _THREADS_CHECKED = True


def official_iv(foa: np.ndarray, params: OfficialFeatureParams | None = None) -> np.ndarray:
    """AmbiX FOA ``(4, T)`` -> the shard's ``iv.npy`` content ``(6, 201, 1601)`` float32.

    Rows: act Y, Z, X then rea Y, Z, X. Clipped to +-65504 so the float16 shard holds no inf
    (only the reactive part, divided by a small active norm, can get there).
    """
    act, rea = official_intensity(foa, params)
    iv = np.concatenate([act, rea], axis=0)
    np.clip(iv, -FLOAT16_MAX, FLOAT16_MAX, out=iv)
    return iv


def split_official_iv(iv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shard ``iv.npy`` ``(6, 201, 1601)`` -> the release's model inputs ``(i_act, i_rea)``, float32 each."""
    if iv.shape != OfficialFeatureParams().iv_shape:
        raise ValueError(f"official iv must be {OfficialFeatureParams().iv_shape}, got {iv.shape}")
    iv = np.asarray(iv, dtype=np.float32)
    return iv[:3], iv[3:]


def official_direction(i_act: np.ndarray) -> tuple[float, float]:
    """Direction (azimuth_deg, elevation_deg; AmbiX: +azimuth = +Y) from ``i_act (3, bins, frames)``
    [Y, Z, X]: the direction of the summed active intensity."""
    y, z, x = (float(v) for v in np.asarray(i_act, dtype=np.float64).sum(axis=(1, 2)))
    return math.degrees(math.atan2(y, x)), math.degrees(math.atan2(z, math.hypot(x, y)))
