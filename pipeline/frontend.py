"""The FOA front end that rendering (``disse-synth``) and embedding (``disse-embed``) share, so a recording is
read, windowed, levelled and featurised exactly as the shards a model was trained on.

``read_foa`` (any 4-channel file -> AmbiX at 48 kHz), ``windows`` (10 s windows), ``normalise_level`` (the
renderer's level), with the feature functions of :mod:`disse.pipeline.features` and
:mod:`disse.pipeline.official_features`. The trainer side imports this module and no other of the pipeline.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from disse.pipeline.audio_io import read_audio, resample, tile_to_length, to_ambix
from disse.pipeline.features import intensity_features  # noqa: F401  (the front end's feature functions)
from disse.pipeline.official_features import official_intensity, resample_torchaudio  # noqa: F401
from disse.schemas import SchemaError

FOA_FORMATS = ("ambix", "fuma")
SEGMENTS = ("first", "all")
# the renderer's level (RenderOptions defaults), applied to recordings that disse-embed featurises
TARGET_RMS_DBFS = -26.0   # RMS of W, dBFS
MAX_PEAK = 0.99           # of full scale, over all 4 channels


def read_foa(path: str | Path, foa_format: str = "ambix", sample_rate: int = 48000,
             mirror_left_right: bool = False, resampler: str = "poly") -> np.ndarray:
    """A 4-channel FOA file -> AmbiX ``(4, T)`` float32 at ``sample_rate`` (W, Y, Z, X; SN3D).

    ``foa_format="fuma"`` converts (W, X, Y, Z; W at -3 dB) on read. ``mirror_left_right`` negates Y
    (left <-> right), e.g. to present real AmbiX recordings in the released model's mirrored frame.
    ``resampler``: ``"poly"`` (scipy polyphase, as ``disse-synth`` reads audio) or ``"torchaudio"``
    (torchaudio's default sinc kernel, as the release resamples its inputs).
    """
    if foa_format not in FOA_FORMATS:
        raise SchemaError(f"must be one of {list(FOA_FORMATS)}, got {foa_format!r}", field="format")
    data, sr = read_audio(path)
    if data.shape[0] != 4:
        raise SchemaError(f"FOA needs exactly 4 channels, the file has {data.shape[0]}", file=str(path))
    if resampler == "torchaudio" and sr != sample_rate:
        foa = resample_torchaudio(torch.from_numpy(np.ascontiguousarray(data)), sr, sample_rate).numpy()
    else:
        foa = resample(data, sr, sample_rate)
    foa = to_ambix(foa, foa_format, path)
    if mirror_left_right:
        foa = foa.copy()
        foa[1] *= -1.0
    return np.ascontiguousarray(foa, dtype=np.float32)


def windows(foa: np.ndarray, n: int, segments: str = "first") -> list[np.ndarray]:
    """``(4, T)`` -> 10 s windows ``(4, n)``: the first (``"first"``) or every full one plus a tiled
    remainder (``"all"``); a recording shorter than ``n`` is tiled end to end, as the release does."""
    if segments not in SEGMENTS:
        raise SchemaError(f"must be one of {list(SEGMENTS)}, got {segments!r}", field="segments")
    t = foa.shape[1]
    if segments == "first" or t <= n:
        return [tile_to_length(foa, n)]
    starts = list(range(0, t - n + 1, n))
    out = [foa[:, s:s + n] for s in starts]
    rest = t - (starts[-1] + n)
    if rest >= n // 10:  # a tail of at least a tenth of a window gets its own (tiled) window
        out.append(tile_to_length(foa[:, starts[-1] + n:], n))
    return out


def normalise_level(foa: np.ndarray, target_rms_dbfs: float = TARGET_RMS_DBFS, max_peak: float = MAX_PEAK
                    ) -> tuple[np.ndarray, float]:
    """Scale FOA so W has ``target_rms_dbfs`` RMS, lowered if needed so no channel peaks above
    ``max_peak``. Returns (scaled float32 ``(4, T)``, linear gain). One gain for all four
    channels, so the direction and the diffuseness are untouched."""
    w = foa[0].astype(np.float64)
    rms = math.sqrt(float(np.dot(w, w)) / w.size)
    peak = max(float(foa.max()), -float(foa.min()))  # no |foa| temporary
    if rms <= 0 or peak <= 0:
        raise SchemaError("rendered mixture is silent", field="foa")
    gain = min(10.0 ** (target_rms_dbfs / 20.0) / rms, max_peak / peak)
    return (np.asarray(foa, dtype=np.float32) * np.float32(gain)), gain
