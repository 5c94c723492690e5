"""A-format tetrahedral RIRs (reference §2.2, §4.2): the A -> B matrix, the render hook, regeneration."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import soundfile as sf

from disse.pipeline.aformat import (A_TO_B, aformat_to_ambix, coincident_capsule_gains,
                                    regenerate_catalogue_rirs, simulate_catalogue_rir)
from disse.pipeline.audio_io import load_rir
from disse.pipeline.foa import direction_of
from disse.schemas import SchemaError


@pytest.mark.parametrize("az,el", [(0, 0), (77, -46), (-120, 30), (180, 60)])
def test_plane_wave_through_capsules_and_back(az, el):
    a = coincident_capsule_gains(az, el)[:, None] * np.ones((1, 8))
    b = aformat_to_ambix(a, sn3d=False)
    w, y, z, x = b[:, 0]
    assert w == pytest.approx(1.0)  # W = sum of four cardioids / 2 = 1 for any direction
    got = direction_of(np.array([x, y, z]))
    assert got[0] == pytest.approx(((az + 180) % 360) - 180 if az != 180 else 180, abs=1e-6)
    assert got[1] == pytest.approx(el, abs=1e-6)
    # the release's scaling: dipoles are 1/sqrt(3) of SN3D; sn3d=True (the default, on read) fixes that
    assert math.hypot(x, y, z) == pytest.approx(1 / math.sqrt(3))
    w2, y2, z2, x2 = aformat_to_ambix(a)[:, 0]
    assert w2 == pytest.approx(1.0) and math.hypot(x2, y2, z2) == pytest.approx(1.0)


def test_official_features_do_not_see_the_dipole_scale():
    from disse.pipeline.official_features import official_intensity

    rng = np.random.default_rng(0)
    s = rng.standard_normal(48000).astype(np.float32) * 0.1
    a = np.stack([np.roll(s, k) * g for k, g in enumerate(coincident_capsule_gains(30, 10))])  # not a plane wave
    act1, rea1 = official_intensity(aformat_to_ambix(a, sn3d=False))
    act2, rea2 = official_intensity(aformat_to_ambix(a))
    np.testing.assert_allclose(act1, act2, atol=1e-4)
    np.testing.assert_allclose(rea1, rea2, rtol=1e-3, atol=1e-4)


def test_matrix_is_the_release_one():
    # W=(m0+m1+m2+m3)/2, Y=(m0-m1+m2-m3)/2, Z=(m0-m1-m2+m3)/2, X=(m0+m1-m2-m3)/2
    m = np.eye(4)
    b = aformat_to_ambix(m, sn3d=False)
    np.testing.assert_array_equal(b, A_TO_B)
    np.testing.assert_array_equal(b[:, 0], [0.5, 0.5, 0.5, 0.5])   # m0 at (+,+,+)
    np.testing.assert_array_equal(b[:, 2], [0.5, 0.5, -0.5, -0.5])  # m2 at (-,+,-): +Y


def test_render_hook_reads_aformat_as_ambix(tmp_path):
    rir = np.zeros((4, 480), np.float32)
    rir[:, 10] = coincident_capsule_gains(-60, 20) * 0.5
    sf.write(tmp_path / "a.wav", rir.T, 48000, subtype="FLOAT")
    foa = load_rir(tmp_path / "a.wav", "aformat")
    w, y, z, x = foa[:, 10]
    az, el = direction_of(np.array([x, y, z]))
    assert az == pytest.approx(-60, abs=1e-4) and el == pytest.approx(20, abs=1e-4)
    with pytest.raises(SchemaError, match="foa_format"):
        load_rir(tmp_path / "a.wav", "bformat")


def _row(name, dims, alpha, d, az, el):
    c = np.array(dims) / 2
    a, e = math.radians(az), math.radians(el)
    pos = c + d * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    xyz = "[" + ", ".join(f"{round(float(v), 3)}" for v in pos) + "]"
    return {"rir_path": f"RIR_dataset/RIR_data/test/{name}.wav", "dims": str(list(dims)), "area_m2": dims[0] * dims[1],
            "alpha": alpha, "fullband_T30_ms": 500, "source_distance_m": d, "azimuth_deg": az,
            "elevation_deg": el, "source_pos_xyz": xyz, "distance": d, "fs": 48000, "room_id": "abcd1234",
            "split": "test"}


def _write_catalogue(path, rows):
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_regeneration_is_deterministic_and_points_at_the_source(tmp_path):
    pytest.importorskip("pyroomacoustics")
    rows = [_row("auto_000000", (4.0, 3.5, 3.0), 0.6, 1.2, 77, -40), _row("auto_000001", (5.0, 4.0, 3.0), 0.5, 1.5, -100, 42)]
    cat = tmp_path / "rir_fixed.csv"
    _write_catalogue(cat, rows)
    paths = regenerate_catalogue_rirs(cat, tmp_path / "a")
    assert [p.name for p in paths] == ["auto_000000.wav", "auto_000001.wav"]
    again = regenerate_catalogue_rirs(cat, tmp_path / "b")
    for p, q in zip(paths, again):
        assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(q.read_bytes()).digest()
        info = sf.info(str(p))
        assert (info.channels, info.samplerate, info.subtype) == (4, 48000, "PCM_16")
    mtime = paths[0].stat().st_mtime_ns
    regenerate_catalogue_rirs(cat, tmp_path / "a")  # existing files kept without --force
    assert paths[0].stat().st_mtime_ns == mtime
    # the direct path, low-passed (capsules 5 cm apart), points at the catalogue's direction
    for row in rows:
        a, fs = simulate_catalogue_rir(row)
        b = aformat_to_ambix(a.astype(np.float64), sn3d=False)
        spec = np.fft.rfft(b, axis=1)
        spec[:, np.fft.rfftfreq(b.shape[1], 1 / fs) > 1000] = 0
        low = np.fft.irfft(spec, b.shape[1], axis=1)
        t0 = int(np.argmax(np.abs(a[0])))
        seg = low[:, max(0, t0 - 24):t0 + 24]
        inten = (seg[0] * seg[[3, 1, 2]]).sum(axis=1)  # W * [X, Y, Z]
        az, el = direction_of(inten)
        true_az, true_el = float(row["azimuth_deg"]), float(row["elevation_deg"])
        assert abs((az - true_az + 180) % 360 - 180) < 12 and abs(el - true_el) < 12, (az, el, row)


def test_catalogue_position_mismatch_names_the_field(tmp_path):
    pytest.importorskip("pyroomacoustics")
    row = _row("auto_000000", (4.0, 3.5, 3.0), 0.6, 1.2, 77, -40)
    row["source_pos_xyz"] = "[0.0, 0.0, 0.0]"
    with pytest.raises(SchemaError, match="source_pos_xyz"):
        simulate_catalogue_rir(row)


# three rows of the release's evaluation/rir_fixed.csv (the golden row and the +-180 degree edges)
RELEASE_ROWS = '''rir_path,dims,area_m2,alpha,fullband_T30_ms,source_distance_m,azimuth_deg,elevation_deg,source_pos_xyz,distance,fs,room_id,split
RIR_dataset/RIR_data/test/auto_000000.wav,"[14.18, 14.009, 3.0]",198.65,0.1451,1167.6,0.84,77,-46,"[7.221, 7.573, 0.896]",0.84,48000,e6a9c0cd,test
RIR_dataset/RIR_data/test/auto_000028.wav,"[11.968, 5.282, 3.0]",63.22,0.1305,1017.4,0.51,-180,-41,"[5.599, 2.641, 1.165]",0.51,48000,a48adc75,test
RIR_dataset/RIR_data/test/auto_000054.wav,"[11.819, 7.711, 3.0]",91.13,0.7824,187.9,0.53,180,42,"[5.516, 3.856, 1.855]",0.53,48000,be59efbd,test
'''


def test_release_catalogue_rows_pass_the_position_check_and_give_the_golden_caption(tmp_path):
    import random

    from disse.pipeline.aformat import read_catalogue, source_position
    from disse.schemas import load_caption_rules

    (tmp_path / "rir_fixed.csv").write_text(RELEASE_ROWS)
    rows = read_catalogue(tmp_path / "rir_fixed.csv")
    for row in rows:
        source_position(row)  # the release's polar metadata reproduces its recorded positions
    rules = load_caption_rules("official")
    values = {"azimuth_deg": 77, "elevation_deg": -46, "source_distance_m": 0.84, "area_m2": 198.65,
              "t30_ms": 1167.6}
    assert rules.caption("Rain is falling continuously", rules.describe(values), random.Random(42))[0] == (
        "The sound: Rain is falling continuously is coming from the nearby down right of a spacious highly "
        "reverberant room.")
    assert rules.describe({**values, "azimuth_deg": -180})["direction"] == "back"
