"""Reading dry clips and FOA RIRs: decode, mix down, resample to 48 kHz, tile / crop.

Every failure (missing file, undecodable data, wrong channel count, NaN samples, a silent or
badly clipped clip) is a :class:`SchemaError` naming the file and a fixed reason, so the renderer
counts it as a skip (``manifest.json``'s ``skip_reasons``) and never shows a traceback.

Dry clips (:func:`load_clip`), as a real corpus (AudioCaps, Clotho) needs them:

* **formats**: whatever libsndfile decodes (WAV, FLAC, OGG Vorbis, MP3 with libsndfile >= 1.1), at
  any rate from 8 kHz up (polyphase resampling to 48 kHz, exact rational ratio); rates below
  ``MIN_SAMPLE_RATE`` are skipped.
* **channels**: mixed down to mono by the mean of the channels (a stereo pair keeps its level; an
  anti-phase pair cancels and is then skipped as silent).
* **long files**: only the first ``clip_seconds`` (plus the resampler's tail) are decoded, so an
  hour-long file costs no more memory than a 10 s one.
* **short files are tiled** (repeated end to end) to ``clip_seconds``, as the official DISSE
  release repeat-pads: zero padding would leave frames with no direct sound, whose intensity
  vectors are only the reverberant tail or numerical noise, and would make the model see
  "silence after t" as a property of short sources. Tiling keeps the source's level and spectrum
  over the whole clip (a click at the seam is the price).
* **silent** clips (peak below ``SILENCE_DBFS`` after the mix-down) are skipped: level
  normalisation would raise their noise floor by 60 dB or more.
* **clipped** clips: mild clipping is rendered (a distortion of the source, not of the space);
  a clip with more than ``MAX_CLIPPED_SHARE`` of its samples on flat tops at full scale
  (:func:`clipped_share`) is skipped as badly clipped. (A full-scale sine is not clipped; a clipped
  MP3 rings instead of staying flat, so only PCM / FLAC clipping is caught.)
"""
from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from disse.pipeline.aformat import aformat_to_ambix
from disse.pipeline.foa import fuma_to_ambix
from disse.schemas import SchemaError

AUDIO_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg")
MIN_SAMPLE_RATE = 8000       # Hz: below this a clip has no content above 4 kHz; skipped
SILENCE_DBFS = -60.0         # peak of the mono mix below this -> skipped as silent
CLIP_LEVEL = 0.999           # |x| at or above this counts as a clipped sample (of full scale 1.0)
MAX_CLIPPED_SHARE = 0.01     # more than 1 % of samples clipped -> skipped as badly clipped


def _decode(path: Path, frames: int = -1) -> tuple[np.ndarray, int]:
    """Decode at most ``frames`` frames (all with -1) -> ``(frames, channels)`` float32, rate in Hz."""
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:
        raise SchemaError(_decode_reason(exc), file=str(path)) from None
    return data, sr


def _decode_reason(exc: Exception) -> str:
    """libsndfile's short message without the file name (which SchemaError carries), so equal
    failures share one reason in the manifest's counts."""
    msg = str(getattr(exc, "error_string", None) or type(exc).__name__)
    if "does not exist" in msg:  # libsndfile says so of an existing file it cannot parse (e.g. bad MP3)
        msg = "format not recognised or data corrupt"
    return f"cannot decode audio ({msg})"


def read_audio(path: str | Path, max_frames: int = -1) -> tuple[np.ndarray, int]:
    """Decode any libsndfile format (wav, flac, ogg, mp3) -> ``(channels, T)`` float32 and the rate in Hz.

    ``max_frames``: decode only that many frames from the start (-1: all).
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError("audio file not found", file=str(p))
    data, sr = _decode(p, max_frames)
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
    """Zero-pad or crop the last axis to exactly ``n`` samples (the start is kept)."""
    t = x.shape[-1]
    if t >= n:
        return x[..., :n]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n - t)]
    return np.pad(x, pad)


def tile_to_length(x: np.ndarray, n: int) -> np.ndarray:
    """Repeat the last axis end to end, then crop, to exactly ``n`` samples (the start is kept)."""
    t = x.shape[-1]
    if t >= n:
        return x[..., :n]
    reps = -(-n // t)
    return np.tile(x, [1] * (x.ndim - 1) + [reps])[..., :n]


def clipped_share(x: np.ndarray) -> float:
    """Share of samples on a flat top: equal to the next sample of the same channel and at
    |x| >= ``CLIP_LEVEL``. A full-scale sine is not clipped (its peak samples differ); a hard-clipped
    signal is (its plateaus repeat one value). ``x``: ``(channels, T)``."""
    if x.shape[-1] < 2:
        return 0.0
    flat = (x[:, 1:] == x[:, :-1]) & (np.abs(x[:, 1:]) >= CLIP_LEVEL)
    return float(np.count_nonzero(flat)) / x.size


def load_clip(path: str | Path, sample_rate: int = 48000, n_samples: int = 480000) -> np.ndarray:
    """A dry clip as mono float32 ``(n_samples,)`` at ``sample_rate``: channels averaged, resampled,
    tiled if shorter, cropped if longer (module docstring). Unusable clips raise :class:`SchemaError`.

    Only the needed start of the file is decoded (plus 64 input samples for the polyphase
    filter's tail), so a long file is neither read nor resampled in full.
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError("audio file not found", file=str(p))
    try:
        info_sr = int(sf.info(str(p)).samplerate)
    except Exception as exc:
        raise SchemaError(_decode_reason(exc), file=str(p)) from None
    if info_sr < MIN_SAMPLE_RATE:
        raise SchemaError(f"sample rate below {MIN_SAMPLE_RATE} Hz", file=str(p), field="sample_rate")
    keep = int(np.ceil(n_samples * info_sr / sample_rate)) + 64
    data, sr = read_audio(p, max_frames=keep)
    mono = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    peak = float(np.abs(mono).max(initial=0.0))
    if peak < 10.0 ** (SILENCE_DBFS / 20.0):
        raise SchemaError(f"clip is silent (peak below {SILENCE_DBFS:g} dBFS)", file=str(p))
    if clipped_share(data) > MAX_CLIPPED_SHARE:
        raise SchemaError(f"clip is badly clipped (over {MAX_CLIPPED_SHARE:.0%} of samples at full scale)",
                          file=str(p))
    # short clips are tiled at the output rate (after resampling, so the seam is one resampled edge)
    out = tile_to_length(resample(mono, sr, sample_rate), n_samples)
    if not np.isfinite(out).all():
        raise SchemaError("audio holds NaN or infinite samples", file=str(p))
    return np.ascontiguousarray(out, dtype=np.float32)


def to_ambix(data: np.ndarray, foa_format: str, path: str | Path) -> np.ndarray:
    """4-channel ``(4, T)`` audio in ``foa_format`` (``ambix``, ``fuma`` or ``aformat``) -> AmbiX / SN3D.
    ``path`` only names the file in the error for an unknown format."""
    if foa_format == "fuma":
        return fuma_to_ambix(data)
    if foa_format == "aformat":  # tetrahedral capsules: the DISSE release's A -> B matrix, dipoles to SN3D
        return aformat_to_ambix(data).astype(np.float32, copy=False)
    if foa_format != "ambix":
        raise SchemaError(f"unknown FOA format {foa_format!r}", file=str(path), field="foa_format")
    return data


def load_rir(path: str | Path, foa_format: str = "ambix", sample_rate: int = 48000) -> np.ndarray:
    """A 4-channel FOA RIR as AmbiX float32 ``(4, L)`` at ``sample_rate`` (FuMa and A-format converted on read)."""
    data, sr = read_audio(path)
    if data.shape[0] != 4:
        raise SchemaError(f"FOA RIR must have 4 channels, got {data.shape[0]}", file=str(path),
                          field="channels")
    data = to_ambix(data, foa_format, path)
    if not np.any(data[0]):
        raise SchemaError("RIR has a silent W channel", file=str(path))
    return np.ascontiguousarray(resample(data, sr, sample_rate), dtype=np.float32)
