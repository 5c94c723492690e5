"""First-order ambisonics helpers, AmbiX convention (DESIGN.md).

AmbiX = ACN channel order (W, Y, Z, X) with SN3D normalisation. Axes: x = front, y = left, z = up;
azimuth 0 = front, positive = counter-clockwise = left; elevation positive = up.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.signal import oaconvolve

ACN_ORDER = ("W", "Y", "Z", "X")
# FuMa stores W scaled by 1/sqrt(2) and orders the channels W, X, Y, Z. At first order the
# dipoles X, Y, Z are identical in FuMa and SN3D, so conversion is a reorder plus W * sqrt(2).
_FUMA_TO_ACN = (0, 2, 3, 1)  # AmbiX channel i comes from FuMa channel _FUMA_TO_ACN[i]
# Dipole-to-omni level ``rho = sqrt(sum(X² + Y² + Z²) / sum(W²))`` of first-order AmbiX / SN3D: a plane
# wave has W = 1, (X, Y, Z) = its unit direction, so rho = 1, and so has any mix of mutually incoherent
# plane waves (a diffuse field: 1/3 of W's energy per axis). FuMa stores W at -3 dB: a FuMa file read
# as AmbiX gives sqrt(2), an AmbiX file read as FuMa 1/sqrt(2), N3D dipoles sqrt(3). The band's ends
# are the geometric midpoints between 1 and sqrt(2) ** ±1 (the RIR check and read_foa both use it).
RHO_BAND = (2 ** -0.25, 2 ** 0.25)  # 0.84 .. 1.19
LOWPASS_HZ = 2000.0  # levels and directions are judged below this: where FOA microphones are coherent


def plane_wave_gains(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """SN3D encoding gains ``(4,)`` float64 in ACN order: W=1, Y=sin(az)cos(el), Z=sin(el), X=cos(az)cos(el)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([1.0, math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])


def encode_plane_wave(signal: np.ndarray, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Encode a mono signal ``(T,)`` arriving from one direction as AmbiX FOA ``(4, T)`` (same dtype)."""
    gains = plane_wave_gains(azimuth_deg, elevation_deg).astype(signal.dtype, copy=False)
    return gains[:, None] * signal[None, :]


def plane_wave_rir(azimuth_deg: float, elevation_deg: float, length: int = 4800, delay: int = 0,
                   dtype: type = np.float32) -> np.ndarray:
    """An anechoic FOA impulse response ``(4, length)``: one unit impulse at ``delay`` samples."""
    rir = np.zeros((4, length), dtype=dtype)
    rir[:, delay] = plane_wave_gains(azimuth_deg, elevation_deg)
    return rir


def fuma_to_ambix(foa: np.ndarray) -> np.ndarray:
    """Convert first-order FuMa ``(4, T)`` (W, X, Y, Z; W at -3 dB) to AmbiX ``(4, T)`` (W, Y, Z, X; SN3D)."""
    if foa.shape[0] != 4:
        raise ValueError(f"FOA must have 4 channels first, got shape {foa.shape}")
    out = foa[list(_FUMA_TO_ACN)].copy()
    out[0] *= math.sqrt(2.0)
    return out


def ambix_to_fuma(foa: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fuma_to_ambix` (used to test the conversion and to export FuMa)."""
    if foa.shape[0] != 4:
        raise ValueError(f"FOA must have 4 channels first, got shape {foa.shape}")
    out = np.empty_like(foa)
    for acn, fuma in enumerate(_FUMA_TO_ACN):
        out[fuma] = foa[acn]
    out[0] = foa[0] / math.sqrt(2.0)
    return out


def dipole_omni_ratio(foa: np.ndarray) -> float:
    """``rho = sqrt(sum(X² + Y² + Z²) / sum(W²))`` of AmbiX ``(4, n)`` (ACN W, Y, Z, X): 1 for first-order
    AmbiX / SN3D (see ``RHO_BAND``); ``inf`` when W is silent, NaN when all four are."""
    x = np.asarray(foa, dtype=np.float64)
    e_w, e_d = float(x[0] @ x[0]), float((x[1:] ** 2).sum())
    if e_w > 0:
        return math.sqrt(e_d / e_w)
    return math.inf if e_d > 0 else math.nan


def levels_are_ambix(rho: float) -> bool:
    """Whether a dipole-to-omni ratio (:func:`dipole_omni_ratio`) is that of first-order AmbiX / SN3D."""
    return RHO_BAND[0] <= rho <= RHO_BAND[1]


def direction_of(vector: np.ndarray) -> tuple[float, float]:
    """(x front, y left, z up) vector -> (azimuth_deg in (-180, 180], elevation_deg)."""
    x, y, z = (float(v) for v in vector)
    return math.degrees(math.atan2(y, x)), math.degrees(math.atan2(z, math.hypot(x, y)))


def angular_error_deg(az1: float, el1: float, az2: float, el2: float) -> float:
    """Great-circle angle between two directions, in degrees."""
    a = plane_wave_gains(az1, el1)[[3, 1, 2]]
    b = plane_wave_gains(az2, el2)[[3, 1, 2]]
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b)))))


# ---------------------------------------------------------------------------------------------
# Headphone previews: FOA -> two channels a person can listen to (disse-synth inspect --html, disse-eval --html)
# ---------------------------------------------------------------------------------------------

HEAD_RADIUS_M = 0.0875       # spherical-head model (Brown & Duda 1998): an average adult head
SPEED_OF_SOUND_M_S = 343.0
EAR_AZIMUTH_DEG = 100.0      # the ears sit slightly behind the head's centre line (Brown & Duda): front != back
_SHADOW_ALPHA_MIN, _SHADOW_THETA_MIN_DEG = 0.1, 150.0  # head-shadow filter constants (Brown & Duda, eq. 2)
PINNA_SHADOW_DB = 10.0       # high-frequency loss of sound from straight behind (pinna faces forward; KEMAR 5-15 dB)
PINNA_SHADOW_HZ = 3000.0     # corner of that shelf
CROSSOVER_HZ = 1500.0        # basic decode below (interaural time), in-phase above (level, front/back)
BINAURAL_TAPS = 512          # FIR length of each ear's filter per FOA channel (10.7 ms at 48 kHz)


def _virtual_speakers() -> np.ndarray:
    """16 directions ``(16, 3)`` (x front, y left, z up) that cover the sphere evenly enough for a
    first-order decode: a horizontal ring of 8 (every 45°) and rings of 4 at ±45° elevation."""
    dirs = [(az, 0.0) for az in range(0, 360, 45)]
    dirs += [(az, el) for el in (45.0, -45.0) for az in (45.0, 135.0, 225.0, 315.0)]
    return np.array([plane_wave_gains(az, el)[[3, 1, 2]] for az, el in dirs])


def _as_ambix(foa: np.ndarray, foa_format: str) -> np.ndarray:
    if foa_format == "fuma":
        return fuma_to_ambix(np.asarray(foa))
    if foa_format != "ambix":
        raise ValueError(f"foa_format must be 'ambix' or 'fuma', got {foa_format!r}")
    if foa.shape[0] != 4:
        raise ValueError(f"FOA must have 4 channels first, got shape {foa.shape}")
    return np.asarray(foa)


def spherical_head_response(direction: np.ndarray, ear: str, freqs_hz: np.ndarray) -> np.ndarray:
    """Transfer function ``(F,)`` complex from a far source in ``direction`` (unit vector, x front, y left,
    z up) to the ``ear`` (``"left"`` or ``"right"``) of a rigid spherical head, at ``freqs_hz`` ``(F,)``.

    Brown & Duda's structural model: the ear sits at ±``EAR_AZIMUTH_DEG``; ``theta`` is the angle between
    the source and the ear's axis. Delay: Woodworth's formula (``-a/c cos(theta)`` facing the ear,
    ``a/c (theta - pi/2)`` round the head), offset by ``a/c`` so it is never negative. Head shadow: the
    one-pole, one-zero filter ``(1 + j alpha w / 2 w0) / (1 + j w / 2 w0)``, ``w0 = c / a``, with ``alpha``
    from 2 (+6 dB, facing the ear) to 0.1 (shadowed, at 150°). Pinna: a first-order shelf that takes up to
    ``PINNA_SHADOW_DB`` off the highs of sound from behind, in proportion to how far behind it is.
    """
    sign = {"left": 1.0, "right": -1.0}[ear]
    ear_axis = np.array([math.cos(math.radians(EAR_AZIMUTH_DEG)), sign * math.sin(math.radians(EAR_AZIMUTH_DEG)), 0.0])
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    theta = math.acos(max(-1.0, min(1.0, float(d @ ear_axis))))
    a_c = HEAD_RADIUS_M / SPEED_OF_SOUND_M_S
    delay = -a_c * math.cos(theta) if theta < math.pi / 2 else a_c * (theta - math.pi / 2)
    delay += a_c
    theta_min = math.radians(_SHADOW_THETA_MIN_DEG)
    alpha = (1 + _SHADOW_ALPHA_MIN / 2) + (1 - _SHADOW_ALPHA_MIN / 2) * math.cos(theta / theta_min * math.pi)
    w = 2 * np.pi * np.asarray(freqs_hz, dtype=np.float64)
    w0 = SPEED_OF_SOUND_M_S / HEAD_RADIUS_M
    shadow = (1 + 1j * alpha * w / (2 * w0)) / (1 + 1j * w / (2 * w0))
    behind = max(0.0, -float(d[0]))                       # 0 in the front half, 1 straight behind
    g = 10.0 ** (-PINNA_SHADOW_DB * behind / 20.0)        # high-frequency gain of the shelf
    wc = 2 * np.pi * PINNA_SHADOW_HZ
    pinna = (1 + 1j * g * w / wc) / (1 + 1j * w / wc)     # 1 at DC, g well above PINNA_SHADOW_HZ
    return shadow * pinna * np.exp(-1j * w * delay)


def decode_matrix(speakers: np.ndarray, weights: str = "basic") -> np.ndarray:
    """Decode matrix ``(K, 4)`` (speaker, AmbiX W, Y, Z, X) for ``speakers`` ``(K, 3)`` unit vectors.

    ``"basic"``: mode matching, the pseudo-inverse of the speakers' SN3D encoding, so re-encoding the speaker
    signals gives the FOA back: the sound field is exact near the centre of the array, so a head placed there
    gets the right interaural time difference at low frequencies. ``"in-phase"``: cardioid weights
    ``(W + d . [X, Y, Z]) / K``: no negative lobes, so the speakers opposite a source stay silent (used above
    the crossover, where a head is larger than the exact region and level cues matter)."""
    enc = np.stack([np.ones(len(speakers)), speakers[:, 1], speakers[:, 2], speakers[:, 0]])  # (4, K)
    if weights == "basic":
        return np.linalg.pinv(enc)
    if weights == "in-phase":
        return enc.T / len(speakers)
    raise ValueError(f"weights must be 'basic' or 'in-phase', got {weights!r}")


def binaural_filters(sample_rate: int = 48000, taps: int = BINAURAL_TAPS) -> np.ndarray:
    """FIR filters ``(2, 4, taps)`` float64 (left, right ear) x (AmbiX W, Y, Z, X): the FOA decoded to 16
    virtual loudspeakers (:func:`decode_matrix`: ``basic`` below ``CROSSOVER_HZ``, ``in-phase`` above, with a
    raised-cosine blend an octave wide), each heard through :func:`spherical_head_response`. A bulk delay of
    ``taps // 4`` keeps them causal."""
    speakers = _virtual_speakers()
    n = taps
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    bulk = np.exp(-2j * np.pi * freqs * (n // 4) / sample_rate)
    octave = np.clip(np.log2(np.maximum(freqs, 1.0) / CROSSOVER_HZ) + 0.5, 0.0, 1.0)  # 0 below, 1 above
    high = 0.5 - 0.5 * np.cos(np.pi * octave)
    low_dec, high_dec = decode_matrix(speakers, "basic"), decode_matrix(speakers, "in-phase")
    window = np.hanning(2 * n)[n:]  # fade the tail of each impulse response
    out = np.zeros((2, 4, n))
    for e, ear in enumerate(("left", "right")):
        spectra = np.array([spherical_head_response(d, ear, freqs) for d in speakers])  # (K, F)
        per_channel = (low_dec.T @ spectra) * (1 - high) + (high_dec.T @ spectra) * high  # (4, F)
        out[e] = np.fft.irfft(per_channel * bulk, n=n, axis=-1) * window
    return out


def binaural_decode(foa: np.ndarray, sample_rate: int = 48000, foa_format: str = "ambix") -> np.ndarray:
    """FOA ``(4, T)`` -> a headphone (binaural) signal ``(2, T)`` float32 (left, right), through a spherical-head
    model (:func:`binaural_filters`): a source on the left is louder and earlier at the left ear; front and back
    differ only as much as a head and pinna shadow allow at first order. ``foa_format="fuma"`` converts first."""
    x = _as_ambix(foa, foa_format).astype(np.float64)
    h = binaural_filters(sample_rate)
    t = x.shape[1]
    delay = h.shape[-1] // 4
    out = np.zeros((2, t))
    for e in range(2):
        y = sum(oaconvolve(x[c], h[e, c]) for c in range(4))
        out[e] = y[delay:delay + t]
    return out.astype(np.float32)


def stereo_decode(foa: np.ndarray, foa_format: str = "ambix") -> np.ndarray:
    """FOA ``(4, T)`` -> plain stereo ``(2, T)`` float32: two coincident virtual cardioids pointing left and
    right (+90°, -90°), ``L = (W + Y) / 2``, ``R = (W - Y) / 2`` (SN3D). No delays: left/right by level only,
    front and back sound alike."""
    x = _as_ambix(foa, foa_format).astype(np.float64)
    return (0.5 * np.stack([x[0] + x[1], x[0] - x[1]])).astype(np.float32)
