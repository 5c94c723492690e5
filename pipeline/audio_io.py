"""Reading dry clips and FOA RIRs: decode, mix down, resample to 48 kHz, pad / crop.

Every failure (missing file, undecodable data, wrong channel count, NaN samples) is a
:class:`SchemaError` naming the file, so the renderer can count it as a skip.
"""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from disse.pipeline.foa import fuma_to_ambix
from disse.schemas import SchemaError

AUDIO_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode any libsndfile format (wav, flac, ogg, mp3) -> ``(channels, T)`` float32 and the rate in Hz."""
    p = Path(path)
    if not p.is_file():
        raise SchemaError("audio file not found", file=str(p))
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's messages are short; keep them
        raise SchemaError(f"cannot decode audio ({type(exc).__name__}: {exc})", file=str(p)) from None
    if data.shape[0] == 0:
        raise SchemaError("audio file holds no samples", file=str(p))
    if not np.isfinite(data).all():
        raise SchemaError("audio holds NaN or infinite samples", file=str(p))
    return np.ascontiguousarray(data.T), int(sr)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (exact rational ratio); returns float32."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, sr_out // g, sr_in // g, axis=-1).astype(np.float32, copy=False)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad or crop the last axis to exactly ``n`` samples (the start of the clip is kept)."""
    t = x.shape[-1]
    if t >= n:
        return x[..., :n]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n - t)]
    return np.pad(x, pad)


def load_clip(path: str | Path, sample_rate: int = 48000, n_samples: int = 480000) -> np.ndarray:
    """A dry clip as mono float32 ``(n_samples,)`` at ``sample_rate`` (channels averaged, padded / cropped).

    Cropping happens before resampling where possible so a long file is not resampled in full.
    """
    data, sr = read_audio(path)
    mono = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    # Keep a little more than needed at the input rate: the polyphase filter needs the tail.
    keep = int(np.ceil(n_samples * sr / sample_rate)) + 64
    mono = mono[:keep]
    out = fit_length(resample(mono, sr, sample_rate), n_samples)
    if not np.any(out):
        raise SchemaError("clip is silent", file=str(path))
    return np.ascontiguousarray(out, dtype=np.float32)


def load_rir(path: str | Path, foa_format: str = "ambix", sample_rate: int = 48000) -> np.ndarray:
    """A 4-channel FOA RIR as AmbiX float32 ``(4, L)`` at ``sample_rate`` (FuMa converted on read)."""
    data, sr = read_audio(path)
    if data.shape[0] != 4:
        raise SchemaError(f"FOA RIR must have 4 channels, got {data.shape[0]}", file=str(path),
                          field="channels")
    if foa_format == "fuma":
        data = fuma_to_ambix(data)
    elif foa_format != "ambix":
        raise SchemaError(f"unknown FOA format {foa_format!r}", file=str(path), field="foa_format")
    if not np.any(data[0]):
        raise SchemaError("RIR has a silent W channel", file=str(path))
    return np.ascontiguousarray(resample(data, sr, sample_rate), dtype=np.float32)
