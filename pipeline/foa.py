"""First-order ambisonics helpers, AmbiX convention (DESIGN.md).

AmbiX = ACN channel order (W, Y, Z, X) with SN3D normalisation. Axes: x = front, y = left, z = up;
azimuth 0 = front, positive = counter-clockwise = left; elevation positive = up.
"""
from __future__ import annotations

import math

import numpy as np

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
