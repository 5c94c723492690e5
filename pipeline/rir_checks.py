"""RIR sanity at plan time: does each FOA RIR agree with its metadata and look like AmbiX?

A RIR bank can be wrong in ways that render without an error and poison every caption and
direction target made from it (DESIGN.md: formats are never silently mixed): a FuMa bank without a
``foa_format`` column, a bank measured with clockwise azimuth, an A-format (raw capsule) file read
as AmbiX. :func:`check_rir` looks at the *direct sound* of one RIR, as the renderer will use it
(after the declared format's conversion and resampling), and says whether it is usable.

Band. The direct sound is judged below ``LOWPASS_HZ`` (2 kHz, 4th-order Butterworth, zero phase):
real FOA microphones are coherent first-order arrays only at low frequencies (a tetrahedron of
capsules 5 cm from its centre, as in the DISSE release's A-format, aliases above about 1 kHz).
Measured: the release's A-format (converted as declared) is 10-19° off broadband and at most 4°
below 2 kHz; on 416 RIRs of this project's simulated banks (exact first-order encoding) the
error is about the same either way (median 0°, 95th percentile 2-5°, largest 11°: a reflection
within the window), and none is rejected at the default 20° tolerance.

Physics. In AmbiX (ACN W, Y, Z, X; SN3D) a plane wave from the unit direction ``u`` has the gains
``W = 1``, ``(X, Y, Z) = u``. Over a short window around the direct-path onset (default
[-0.5 ms, +1.0 ms], before most first reflections) two quantities follow:

* the active intensity ``I = sum_t W(t) [X, Y, Z](t)`` points along ``u``: its azimuth / elevation
  are the first-arrival direction, compared with the metadata by great-circle angle;
* the dipole-to-omni energy ratio ``rho = sqrt(sum(X² + Y² + Z²) / sum(W²))`` is 1. In FuMa W is
  stored at -3 dB, so a FuMa file read as AmbiX has ``rho = sqrt(2)`` whatever the direction; N3D
  dipoles give ``sqrt(3)``; an AmbiX file wrongly declared FuMa gives ``1 / sqrt(2)``. The window
  is accepted when ``rho`` is within ``RHO_BAND`` (the geometric midpoints of 1 and sqrt(2)).

Diagnoses, in order (each a ``reason`` for the manifest): the file read as FuMa would match ->
"looks like FuMa"; the direction matches but ``rho`` is off -> "levels are not first-order
AmbiX" (N3D, or AmbiX declared FuMa); the azimuth-mirrored metadata would match -> "mirrored"; all four direct-path
gains share a sign and ``rho`` is off (four cardioid capsules see every wave in phase; an AmbiX
plane wave has a dipole of each sign unless it comes from the front-left-up octant) -> "looks like
A-format"; ``rho`` off -> "levels are not first-order AmbiX"; else the direction is simply off.

Limits (documented in docs/synthesis.md): a source within the tolerance of az 0° or 180° cannot be
told from its mirror image (its caption is the same either way); a reflection arriving within
1 ms from another direction bends the estimate (the tolerance, default 20°, absorbs grazing
floor reflections of distant sources); band-limited or noisy measurements with weak direct sound
may need a larger ``--rir-tolerance-deg``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from disse.pipeline.foa import (LOWPASS_HZ, RHO_BAND, angular_error_deg, dipole_omni_ratio,  # noqa: F401
                                direction_of, fuma_to_ambix, levels_are_ambix)

DEFAULT_TOLERANCE_DEG = 20.0
# RHO_BAND (pipeline/foa.py, shared with read_foa's level check): AmbiX plane wave 1, FuMa sqrt(2), N3D sqrt(3)
WINDOW_MS = (-0.5, 1.0)             # around the direct-path onset
ONSET_DB = -20.0                    # onset: first sample within this of the energy peak
# LOWPASS_HZ (pipeline/foa.py, 2 kHz): judge below this, where FOA microphones are coherent
AZIMUTH_CONVENTIONS = ("ccw", "cw")
# capsule directions (x front, y left, z up) of a tetrahedral microphone: FLU, FRD, BLD, BRU
TETRA = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64) / math.sqrt(3)


@dataclass(frozen=True)
class RirCheck:
    """Outcome of :func:`check_rir`. Angles in degrees, ``onset_ms`` from the file start."""

    ok: bool
    reason: str                 # "" when ok
    kind: str                   # ok | fuma | mirrored | a-format | levels | direction | silent
    azimuth_deg: float          # first-arrival direction as read (NaN when silent)
    elevation_deg: float
    error_deg: float            # to the metadata direction
    rho: float                  # dipole / omni energy ratio, sqrt; 1 for an AmbiX plane wave
    onset_ms: float

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def direct_window(foa: np.ndarray, sr: int, window_ms: tuple[float, float] = WINDOW_MS,
                  lowpass_hz: float | None = LOWPASS_HZ) -> tuple[np.ndarray, int]:
    """The direct-sound window of ``foa`` ``(4, T)`` -> (``(4, n)`` float64, onset sample).

    Onset = first sample whose energy summed over the four channels is within ``ONSET_DB`` of
    the largest (all channels, so a file whose channel 0 is not W is windowed correctly too).
    The window is taken after a zero-phase low-pass at ``lowpass_hz`` (None: broadband).
    """
    x = np.asarray(foa, dtype=np.float64)
    energy = (x ** 2).sum(axis=0)
    peak = float(energy.max(initial=0.0))
    if peak <= 0:
        raise ValueError("RIR is silent")
    onset = int(np.argmax(energy >= peak * 10 ** (ONSET_DB / 10)))
    if lowpass_hz:
        # zero-phase low-pass of a 30 ms segment around the onset (cheap; no shift of the onset)
        s0 = max(0, onset - int(0.010 * sr))
        seg = x[:, s0:onset + int(0.020 * sr)]
        if seg.shape[1] > 27:  # sosfiltfilt's default padding for a 4th-order filter
            x = sosfiltfilt(butter(4, min(lowpass_hz, 0.45 * sr), fs=sr, output="sos"), seg, axis=-1)
            onset, x_offset = onset - s0, s0
        else:
            x_offset = 0
    else:
        x_offset = 0
    a = max(0, onset + int(round(window_ms[0] * sr / 1000)))
    b = min(x.shape[1], onset + int(round(window_ms[1] * sr / 1000)) + 1)
    return x[:, a:b], onset + x_offset


def first_arrival(win: np.ndarray) -> tuple[float, float, float]:
    """(azimuth_deg, elevation_deg, rho) of an AmbiX window ``(4, n)`` (ACN W, Y, Z, X).

    Direction of the active intensity ``sum W [X, Y, Z]``; ``rho = sqrt(E[X²+Y²+Z²] / E[W²])``.
    """
    w, y, z, x = win
    vec = np.array([w @ x, w @ y, w @ z])
    rho = dipole_omni_ratio(win) if float(w @ w) > 0 else math.inf
    if not np.any(vec):
        return math.nan, math.nan, rho
    az, el = direction_of(vec)
    return az, el, rho


def _err(az: float, el: float, meta_az: float, meta_el: float) -> float:
    if not (math.isfinite(az) and math.isfinite(el)):
        return 180.0
    return angular_error_deg(az, el, meta_az, meta_el)


def _in_band(rho: float) -> bool:
    return levels_are_ambix(rho)


def check_rir(foa: np.ndarray, sr: int, azimuth_deg: float, elevation_deg: float,
              foa_format: str = "ambix", tolerance_deg: float = DEFAULT_TOLERANCE_DEG) -> RirCheck:
    """Check one RIR as the renderer reads it: AmbiX ``(4, T)`` at ``sr`` Hz (already converted
    from its declared ``foa_format``) against its metadata direction (degrees, azimuth
    counter-clockwise). Returns a :class:`RirCheck`; never raises for odd audio."""
    try:
        win, onset = direct_window(foa, sr)
    except ValueError:
        return RirCheck(False, "RIR is silent", "silent", math.nan, math.nan, 180.0, math.nan, math.nan)
    onset_ms = onset * 1000.0 / sr
    az, el, rho = first_arrival(win)
    err = _err(az, el, azimuth_deg, elevation_deg)
    result = dict(azimuth_deg=az, elevation_deg=el, error_deg=err, rho=rho, onset_ms=onset_ms)
    if foa_format == "aformat":
        # converted from spaced capsules: the dipole level is the converter's (the release's matrix
        # gives 1/sqrt(3) for coincident capsules, more where the spacing aliases): direction only
        if err <= tolerance_deg:
            return RirCheck(True, "", "ok", **result)
        return RirCheck(False, f"direction disagrees with the metadata by more than {tolerance_deg:g}° "
                        f"(declared A-format, converted on read): first arrival from az {az:.0f}°, "
                        f"el {el:.0f}°, metadata says az {azimuth_deg:.0f}°, el {elevation_deg:.0f}°",
                        "direction", **result)
    if err <= tolerance_deg and _in_band(rho):
        return RirCheck(True, "", "ok", **result)
    where = (f"first arrival from az {az:.0f}°, el {el:.0f}° (|XYZ|/W {rho:.2f}), metadata says "
             f"az {azimuth_deg:.0f}°, el {elevation_deg:.0f}°: {err:.0f}° apart")
    if foa_format == "ambix":
        # an AmbiX reading keeps the file's channels as they are: read them as FuMa instead
        fuma = fuma_to_ambix(win)
        f_az, f_el, f_rho = first_arrival(fuma)
        if _err(f_az, f_el, azimuth_deg, elevation_deg) <= tolerance_deg and _in_band(f_rho):
            return RirCheck(False, f"looks like FuMa (W at -3 dB, channels W X Y Z) but is declared "
                            f"AmbiX: {where}; add foa_format=fuma to the RIR CSV", "fuma", **result)
    levels = (f"channel levels are not first-order AmbiX/SN3D (a plane wave has |XYZ|/W = 1; FuMa "
              f"read as AmbiX gives 1.41, N3D 1.73, raw A-format capsules a value that changes with "
              f"the direction): {where}")
    if err <= tolerance_deg:  # right direction, wrong levels (N3D, or AmbiX declared FuMa)
        return RirCheck(False, levels, "levels", **result)
    peak = win[:, int(np.argmax((win ** 2).sum(axis=0)))]
    in_phase = bool(np.all(peak > 0) or np.all(peak < 0))
    a_az, a_el, _ = first_arrival(a_to_b(win))
    if in_phase and (_err(a_az, a_el, azimuth_deg, elevation_deg) <= tolerance_deg or not _in_band(rho)):
        return RirCheck(False, f"looks like A-format (four in-phase capsule signals, W not dominant): "
                        f"{where}; convert it to AmbiX B-format first", "a-format", **result)
    if (_in_band(rho) and math.isfinite(az)
            and _err(az, el, -azimuth_deg, elevation_deg) <= tolerance_deg):
        return RirCheck(False, f"azimuth looks mirrored (sign flipped): {where}; if the bank measures "
                        f"azimuth clockwise, render with --azimuth-convention cw", "mirrored", **result)
    if not _in_band(rho):
        return RirCheck(False, levels, "levels", **result)
    return RirCheck(False, f"direction disagrees with the metadata by more than {tolerance_deg:g}°: "
                    f"{where}", "direction", **result)


def a_to_b(capsules: np.ndarray) -> np.ndarray:
    """Tetrahedral capsule signals ``(4, n)`` in the usual order FLU, FRD, BLD, BRU -> AmbiX
    ``(4, n)`` (W, Y, Z, X), up to one gain per channel pair: ``W = sum s_c / 2``,
    ``[X, Y, Z] = 1.5 sum s_c u_c``. Exact for cardioid capsules; for any first-order capsule
    pattern the intensity direction is still right, which is all the check uses. No capsule
    equalisation: this only *recognises* A-format (conversion is the reader's business)."""
    w = capsules.sum(axis=0) / 2
    d = 1.5 * (TETRA.T @ capsules)  # (3, n): x, y, z
    return np.stack([w, d[1], d[2], d[0]])


def to_ccw(azimuth_deg: float, convention: str) -> float:
    """Azimuth in the project's convention (counter-clockwise = left) from a bank's ``convention``."""
    if convention not in AZIMUTH_CONVENTIONS:
        raise ValueError(f"azimuth convention must be one of {AZIMUTH_CONVENTIONS}, got {convention!r}")
    if convention == "ccw":
        return azimuth_deg
    out = -azimuth_deg
    return 180.0 if out == -180.0 else (out + 0.0)  # keep (-180, 180], no -0.0
