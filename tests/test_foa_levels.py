"""read_foa warns when a recording's channel levels contradict the FOA format it is read as.

Physics: in first-order AmbiX / SN3D the dipoles' energy sum(X² + Y² + Z²) equals W's for a plane wave
from any direction and for any mix of incoherent ones (a diffuse field), so |XYZ|/W = 1. FuMa stores W
at -3 dB: an AmbiX file read as FuMa has W too strong by sqrt(2) (and its channels permuted), a FuMa
file read as AmbiX W too weak by sqrt(2). The criterion is the plan-time RIR check's (pipeline/foa.py
RHO_BAND, used by pipeline/rir_checks.py).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import soundfile as sf

from disse.pipeline import rir_checks
from disse.pipeline.foa import RHO_BAND, ambix_to_fuma, dipole_omni_ratio, encode_plane_wave, fuma_to_ambix
from disse.pipeline.frontend import FoaFormatWarning, format_mismatch, read_foa

SR = 48000
DIRECTIONS = [(0.0, 0.0), (60.0, 15.0), (-135.0, -30.0), (90.0, 80.0)]


def _noise(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(int(SR * seconds))


def plane_wave(az: float, el: float, seed: int = 0) -> np.ndarray:
    return encode_plane_wave(_noise(seed=seed), az, el)


def diffuse(n_waves: int = 64, seed: int = 0) -> np.ndarray:
    """Incoherent plane waves from directions spread evenly over the sphere (a Fibonacci lattice)."""
    k = np.arange(n_waves) + 0.5
    el = np.degrees(np.arcsin(1 - 2 * k / n_waves))
    az = (np.degrees(np.pi * (1 + 5 ** 0.5) * k) + 180) % 360 - 180
    return sum(encode_plane_wave(_noise(seed=seed + 1 + i), a, e) for i, (a, e) in enumerate(zip(az, el)))


def _write(path, foa: np.ndarray) -> str:
    sf.write(path, foa.T.astype(np.float32), SR, subtype="FLOAT")
    return str(path)


def _read(path, fmt):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_foa(path, fmt)
    return out, [w for w in caught if issubclass(w.category, FoaFormatWarning)]


def test_the_criterion_is_the_rir_checks():
    assert rir_checks.RHO_BAND is RHO_BAND and rir_checks.dipole_omni_ratio is dipole_omni_ratio
    for az, el in DIRECTIONS:
        x = plane_wave(az, el)
        assert dipole_omni_ratio(x) == pytest.approx(1.0)
        assert dipole_omni_ratio(fuma_to_ambix(x)) == pytest.approx(1 / math.sqrt(2))  # AmbiX read as FuMa
        assert dipole_omni_ratio(ambix_to_fuma(x)) == pytest.approx(math.sqrt(2))      # FuMa read as AmbiX
    assert dipole_omni_ratio(diffuse()) == pytest.approx(1.0, abs=0.05)
    # one axis of a diffuse field holds a third of W's energy
    d = diffuse()
    assert np.mean(d[1] ** 2) / np.mean(d[0] ** 2) == pytest.approx(1 / 3, abs=0.05)


@pytest.mark.parametrize("az, el", DIRECTIONS)
def test_ambix_plane_wave_read_as_fuma_warns_and_read_as_ambix_does_not(tmp_path, az, el):
    path = _write(tmp_path / "ambix.wav", plane_wave(az, el))
    right, caught = _read(path, "ambix")
    assert caught == []
    wrong, caught = _read(path, "fuma")
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert msg.startswith(path) and "foa_format='fuma'" in msg and "looks like AmbiX" in msg
    assert "foa_format='ambix'" in msg and "0.71" in msg and "\n" not in msg
    # and what it is about: the wrong reading still returns audio, with W too strong by sqrt(2)
    assert np.allclose(wrong[0], math.sqrt(2) * right[0], atol=1e-5)


@pytest.mark.parametrize("az, el", DIRECTIONS)
def test_fuma_file_read_as_fuma_does_not_warn_and_read_as_ambix_does(tmp_path, az, el):
    path = _write(tmp_path / "fuma.wav", ambix_to_fuma(plane_wave(az, el)))
    _, caught = _read(path, "fuma")
    assert caught == []
    _, caught = _read(path, "ambix")
    assert len(caught) == 1 and "looks like FuMa" in str(caught[0].message)
    assert "foa_format='fuma'" in str(caught[0].message) and "1.41" in str(caught[0].message)


def test_diffuse_fields_are_judged_like_plane_waves(tmp_path):
    ambix = _write(tmp_path / "diffuse_ambix.wav", diffuse())
    fuma = _write(tmp_path / "diffuse_fuma.wav", ambix_to_fuma(diffuse()))
    assert _read(ambix, "ambix")[1] == [] and _read(fuma, "fuma")[1] == []
    assert len(_read(ambix, "fuma")[1]) == 1 and len(_read(fuma, "ambix")[1]) == 1


def test_other_levels_warn_without_naming_a_format_and_silence_does_not(tmp_path):
    n3d = plane_wave(30.0, 0.0)
    n3d[1:] *= math.sqrt(3)  # N3D dipoles: neither AmbiX nor FuMa
    _, caught = _read(_write(tmp_path / "n3d.wav", n3d), "ambix")
    assert len(caught) == 1 and "not first-order AmbiX/SN3D" in str(caught[0].message)
    assert "looks like" not in str(caught[0].message)
    assert format_mismatch(np.zeros((4, SR)), SR, "ambix") is None
    # opt out
    with warnings.catch_warnings():
        warnings.simplefilter("error", FoaFormatWarning)
        read_foa(_write(tmp_path / "ambix.wav", plane_wave(0, 0)), "fuma", check_levels=False)


def test_long_recordings_are_judged_in_chunks_like_short_ones():
    x = encode_plane_wave(0.1 * np.random.default_rng(3).standard_normal(SR * 12), 45.0, 10.0)  # > one chunk
    assert format_mismatch(x, SR, "ambix") is None
    assert "looks like AmbiX" in format_mismatch(fuma_to_ambix(x), SR, "fuma")
