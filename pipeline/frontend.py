"""The FOA front end that rendering (``disse-synth``) and embedding (``disse-embed``) share, so a recording is
read, windowed, levelled and featurised exactly as the shards a model was trained on.

``read_foa`` (any 4-channel file -> AmbiX at 48 kHz), ``windows`` (10 s windows), ``normalise_level`` (the
renderer's level), with the feature functions of :mod:`disse.pipeline.features` and
:mod:`disse.pipeline.official_features`. The trainer side imports this module and no other of the pipeline.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.signal import butter, sosfilt

from disse.pipeline.audio_io import read_audio, resample, tile_to_length, to_ambix
from disse.pipeline.foa import LOWPASS_HZ, dipole_omni_ratio, levels_are_ambix
from disse.pipeline.features import intensity_features  # noqa: F401  (the front end's feature functions)
from disse.pipeline.official_features import (fit_repeat_torch, official_intensity, official_intensity_torch,  # noqa: F401
                                              resample_torchaudio)
from disse.schemas import SchemaError

FOA_FORMATS = ("ambix", "fuma")
SEGMENTS = ("first", "all")
# the renderer's level (RenderOptions defaults), applied to recordings that disse-embed featurises
TARGET_RMS_DBFS = -26.0   # RMS of W, dBFS
MAX_PEAK = 0.99           # of full scale, over all 4 channels
# the level check judges the band HIGHPASS_HZ .. LOWPASS_HZ (pipeline/foa.py, as the RIR check): below 2 kHz
# real FOA microphones are coherent first-order arrays; above 250 Hz a close source's proximity boost of the
# dipoles (|1 + 1/(jkr)|: 1.1 at 250 Hz and 0.5 m), rumble and DC stay out
HIGHPASS_HZ = 250.0
_LEVEL_CHUNK = 1 << 18    # samples filtered at a time (bounded memory for long recordings)
_FORMAT_NAMES = {"ambix": "AmbiX (W, Y, Z, X; SN3D)", "fuma": "FuMa (W, X, Y, Z; W at -3 dB)"}


class FoaFormatWarning(UserWarning):
    """A recording's channel levels contradict the FOA format it was read as (:func:`format_mismatch`)."""


def format_mismatch(foa: np.ndarray, sample_rate: int, foa_format: str) -> str | None:
    """Do the levels of ``foa`` (AmbiX ``(4, T)``, already converted from ``foa_format``) contradict that format?

    The criterion of the plan-time RIR check (pipeline/rir_checks.py): the dipole-to-omni ratio
    ``rho = sqrt(sum(X² + Y² + Z²) / sum(W²))`` is 1 for first-order AmbiX / SN3D (a plane wave, or any
    mix of incoherent ones), ``sqrt(2)`` for a FuMa file read as AmbiX and ``1 / sqrt(2)`` for an AmbiX
    file read as FuMa (FuMa's W is at -3 dB; the conversion's channel permutation leaves the dipoles'
    sum as it is, so the other format's reading has ``rho`` times ``sqrt(2)`` ** ±1). Judged over the
    whole recording in the band ``HIGHPASS_HZ`` .. ``LOWPASS_HZ``. Returns None when the levels fit
    (or the recording is silent there), else one line that says what the file looks like.
    """
    nyq = 0.5 * sample_rate
    if LOWPASS_HZ < 0.9 * nyq:
        sos = butter(2, [HIGHPASS_HZ, LOWPASS_HZ], btype="bandpass", fs=sample_rate, output="sos")
    else:
        sos = butter(4, HIGHPASS_HZ, btype="highpass", fs=sample_rate, output="sos")
    zi = np.zeros((sos.shape[0], 4, 2))
    energy = np.zeros(4)
    for s in range(0, foa.shape[1], _LEVEL_CHUNK):
        part, zi = sosfilt(sos, np.asarray(foa[:, s:s + _LEVEL_CHUNK], dtype=np.float64), axis=-1, zi=zi)
        energy += np.einsum("ct,ct->c", part, part)
    rho = dipole_omni_ratio(np.sqrt(energy)[:, None])  # the ratio of the channel energies
    if math.isnan(rho) or levels_are_ambix(rho):
        return None
    other = "fuma" if foa_format == "ambix" else "ambix"
    rho_other = rho / math.sqrt(2.0) if foa_format == "ambix" else rho * math.sqrt(2.0)
    measured = f"read as {foa_format}, |XYZ|/W = {rho:.2f} ({HIGHPASS_HZ:g} Hz-{LOWPASS_HZ / 1000:g} kHz)"
    if levels_are_ambix(rho_other):
        typical = "an AmbiX file read as FuMa gives 0.71" if foa_format == "fuma" else \
            "a FuMa file read as AmbiX gives 1.41"
        return (f"channel levels contradict foa_format={foa_format!r}: {measured}, where first-order AmbiX/SN3D "
                f"has 1 and {typical}; the file looks like {_FORMAT_NAMES[other]}: read it with "
                f"foa_format={other!r} (disse-embed --format {other}), or its directions come out wrong")
    return (f"channel levels are not first-order AmbiX/SN3D: {measured}, where AmbiX/SN3D has 1 (FuMa read "
            f"as AmbiX 1.41, AmbiX read as FuMa 0.71, N3D 1.73; noise or raw capsule signals other values); "
            f"its directions may be wrong")


def read_foa(path: str | Path, foa_format: str = "ambix", sample_rate: int = 48000,
             mirror_left_right: bool = False, resampler: str = "poly", check_levels: bool = True) -> np.ndarray:
    """A 4-channel FOA file -> AmbiX ``(4, T)`` float32 at ``sample_rate`` (W, Y, Z, X; SN3D).

    ``foa_format="fuma"`` converts (W, X, Y, Z; W at -3 dB) on read. ``mirror_left_right`` negates Y
    (left <-> right), e.g. to present real AmbiX recordings in the released model's mirrored frame.
    ``resampler``: ``"poly"`` (scipy polyphase, as ``disse-synth`` reads audio) or ``"torchaudio"``
    (torchaudio's default sinc kernel, as the release resamples its inputs).

    ``check_levels``: warn (:class:`FoaFormatWarning`, naming the file) when the channel levels contradict
    ``foa_format`` (:func:`format_mismatch`), e.g. an AmbiX file read as FuMa, whose direction comes out
    tens of degrees off without any error.
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
    problem = format_mismatch(foa, sample_rate, foa_format) if check_levels else None
    if problem:
        warnings.warn(f"{path}: {problem}", FoaFormatWarning, stacklevel=2)
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
