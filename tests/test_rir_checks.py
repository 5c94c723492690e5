"""RIR sanity at plan time (issue 13, item 1): the first arrival of each RIR, read as the renderer
reads it, must come from its metadata direction and look like a first-order AmbiX plane wave.
RIRs come from the project's own image-source simulator (pipeline/rirs.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from disse.pipeline import rirs as sim
from disse.pipeline.cli import main
from disse.pipeline.foa import ambix_to_fuma
from disse.pipeline.rir_checks import TETRA, check_rir, to_ccw
from disse.pipeline.shards import read_tar_samples
from disse.schemas import decode_sample

SR = 48000
FAST = sim.SimParams(**sim.FAST)
# directions well away from 0° / 180° azimuth (a mirror image there is the same direction)
DIRECTIONS = [(90, 0), (-90, 10), (30, 40), (-135, -30), (60, -20), (150, 5)]


def _unit(az: float, el: float) -> np.ndarray:
    a, e = math.radians(az), math.radians(el)
    return np.array([math.cos(a) * math.cos(e), math.sin(a) * math.cos(e), math.sin(e)])


def room_rir(az: float, el: float, dist: float = 2.0, seed: int = 0) -> tuple[np.ndarray, tuple]:
    """A simulated 7 x 5 x 3 m room (alpha 0.25), receiver yawed by 25°: AmbiX RIR and the
    metadata direction (az, el, distance) computed from the geometry."""
    room = sim.Room(dims=(7.0, 5.0, 3.0), absorption=(0.25,) * 6, t60_target_s=0.0)
    rec, yaw = np.array([3.5, 2.4, 1.5]), math.radians(25.0)
    pos = sim.Position(receiver=rec, yaw=yaw, source=rec + dist * sim.rotation_z(yaw) @ _unit(az, el))
    ir, _ = sim.simulate_rir(room, pos, np.random.default_rng(seed), FAST)
    return ir, pos.direction()


def to_a_format(ambix: np.ndarray) -> np.ndarray:
    """Ideal cardioid tetrahedral capsules FLU, FRD, BLD, BRU: s_c = (W + u_c . [X, Y, Z]) / 2."""
    w, y, z, x = ambix
    d = np.stack([x, y, z])
    return np.stack([0.5 * w + 0.5 * (TETRA[c] @ d) for c in range(4)])


@pytest.fixture(scope="module")
def rirs() -> list[tuple[np.ndarray, tuple]]:
    return [room_rir(az, el, seed=i) for i, (az, el) in enumerate(DIRECTIONS)]


def test_correct_ambix_rirs_pass_with_their_direction(rirs):
    for ir, (az, el, _) in rirs:
        res = check_rir(ir, SR, az, el)
        assert res.ok and res.kind == "ok", res
        assert res.error_deg < 5.0 and abs(res.rho - 1) < 0.05  # plane wave: |XYZ| = W


def test_fuma_file_declared_ambix_is_recognised(rirs):
    for ir, (az, el, _) in rirs:
        res = check_rir(ambix_to_fuma(ir), SR, az, el, "ambix")
        assert not res.ok and res.kind == "fuma" and "foa_format=fuma" in res.reason
        assert res.rho == pytest.approx(math.sqrt(2), rel=0.05)  # W at -3 dB
        # once converted as declared, the same file passes
        assert check_rir(ir, SR, az, el, "fuma").ok


def test_mirrored_azimuth_and_a_format_and_n3d_are_recognised(rirs):
    for ir, (az, el, _) in rirs:
        mirrored = check_rir(ir, SR, -az, el)
        assert not mirrored.ok and mirrored.kind == "mirrored" and "--azimuth-convention cw" in mirrored.reason
        a_format = check_rir(to_a_format(ir), SR, az, el)
        assert not a_format.ok and a_format.kind == "a-format", a_format
        n3d = ir.copy()
        n3d[1:] *= math.sqrt(3)
        levels = check_rir(n3d, SR, az, el)
        assert not levels.ok and levels.kind == "levels" and levels.rho == pytest.approx(math.sqrt(3), rel=0.05)
    # a plain wrong direction (metadata 90° off in elevation) is a direction error
    ir, (az, el, _) = rirs[0]
    res = check_rir(ir, SR, az, el + 60 if el < 0 else el - 60)
    assert not res.ok and res.kind == "direction" and res.error_deg == pytest.approx(60, abs=6)


def test_tolerance_and_conventions():
    ir, (az, el, _) = room_rir(70, 0)
    off = check_rir(ir, SR, az + 15, el)  # 15° off: inside the default 20°, outside 10°
    assert off.ok and not check_rir(ir, SR, az + 15, el, tolerance_deg=10).ok
    assert to_ccw(30.0, "cw") == -30.0 and to_ccw(-180.0, "cw") == 180.0 and to_ccw(45.0, "ccw") == 45.0
    with pytest.raises(ValueError, match="convention"):
        to_ccw(1.0, "north")


# -- plan time, through the CLI -------------------------------------------------------------------

RIR_HEADER = "rir_id,rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms,room_index"


@pytest.fixture(scope="module")
def bank(tmp_path_factory, rirs) -> Path:
    """Six simulated RIRs (float WAV), two dry clips, and the true metadata."""
    root = tmp_path_factory.mktemp("rirbank")
    (root / "ir").mkdir()
    rows = []
    for i, (ir, (az, el, d)) in enumerate(rirs):
        sf.write(root / "ir" / f"r{i}.wav", (ir / np.abs(ir).max() * 0.5).T.astype(np.float32), SR,
                 subtype="FLOAT")
        rows.append(dict(rir_id=f"r{i}", rir_path=f"ir/r{i}.wav", azimuth_deg=az, elevation_deg=el,
                         source_distance_m=d, area_m2=35.0, fullband_T30_ms=400.0, room_index=i))
    pd.DataFrame(rows).to_csv(root / "true.csv", index=False)
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(root / "audio" / f"{name}.wav", (0.1 * rng.standard_normal(SR * 2)).astype(np.float32), SR)
    (root / "clips.csv").write_text("audiocap_id,caption,split\na,A hiss.,train\nb,Noise.,train\n")
    return root


def _render(bank: Path, csv: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["render", "--clips", str(bank / "clips.csv"), "--audio-dir",
                                     str(bank / "audio"), "--rirs", str(csv), "--out", str(out),
                                     "--rirs-per-clip", "2", "--val-fraction", "0", "--test-fraction", "0",
                                     "--shard-size", "16", "--no-progress", *extra])


def _variant(bank: Path, name: str, edit) -> Path:
    df = pd.read_csv(bank / "true.csv")
    df = edit(df)
    path = bank / f"{name}.csv"
    df.to_csv(path, index=False)
    return path


def _metas(out: Path) -> list:
    return [decode_sample(s, audio=False)[2] for t in sorted(out.glob("*/*.tar")) for s in read_tar_samples(t)]


def test_correct_bank_renders_with_no_rejection(bank, tmp_path):
    res = _render(bank, bank / "true.csv", tmp_path / "out")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["inputs"]["rir_check"]["checked"] == 6 and m["inputs"]["rir_check"]["rejected"] == 0
    assert m["inputs"]["azimuth_convention"] == "ccw" and m["options"]["azimuth_convention"] == "ccw"
    assert m["rir_failure_rate"] == 0 and m["rendered_samples"] == 6


def test_one_fuma_file_declared_ambix_is_skipped_with_its_reason(bank, tmp_path):
    ir, _ = sf.read(bank / "ir" / "r2.wav", always_2d=True)
    sf.write(bank / "ir" / "r2_fuma.wav", ambix_to_fuma(ir.T).T, SR, subtype="FLOAT")
    csv = _variant(bank, "one_fuma", lambda d: d.assign(rir_path=d.rir_path.replace("ir/r2.wav", "ir/r2_fuma.wav")))
    res = _render(bank, csv, tmp_path / "strict")  # 1 of 6 RIRs = 17 % > the 5 % default
    assert res.exit_code == 1 and "1 of 6 RIRs fail the sanity check (fuma 1" in res.output
    assert not list((tmp_path / "strict").glob("*/*.tar"))  # stopped before rendering
    report = json.loads((tmp_path / "strict" / "rir_check.json").read_text())
    (bad,) = report["rejected"]
    assert bad["rir_id"] == "r2" and bad["kind"] == "fuma" and bad["file"].endswith("r2_fuma.wav")
    res = _render(bank, csv, tmp_path / "lenient", "--max-failure-rate", "0.2")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "lenient" / "manifest.json").read_text())
    (row,) = [r for r in m["skipped_rows"] if r["field"] == "rir_check"]
    assert row["rir_id"] == "r2" and "looks like FuMa" in row["reason"]
    assert m["rir_failure_rate"] == pytest.approx(1 / 6, abs=1e-5) and m["skip_reasons"][row["reason"]] == 1
    assert "r2" not in {x.rir_id for x in _metas(tmp_path / "lenient")}


def test_mirrored_bank_fails_and_clockwise_bank_renders_with_the_option(bank, tmp_path):
    mirrored = _variant(bank, "mirrored", lambda d: d.assign(azimuth_deg=-d.azimuth_deg))
    res = _render(bank, mirrored, tmp_path / "m")
    assert res.exit_code == 1 and "6 of 6 RIRs fail" in res.output and "--azimuth-convention cw" in res.output
    kinds = {r["kind"] for r in json.loads((tmp_path / "m" / "rir_check.json").read_text())["rejected"]}
    assert kinds == {"mirrored"}
    # the same file is a correct clockwise bank: declared so, it renders with the true azimuths
    res = _render(bank, mirrored, tmp_path / "cw", "--azimuth-convention", "cw")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "cw" / "manifest.json").read_text())
    assert m["options"]["azimuth_convention"] == "cw" and m["inputs"]["rir_check"]["rejected"] == 0
    truth = pd.read_csv(bank / "true.csv").set_index("rir_id")
    metas = _metas(tmp_path / "cw")
    assert len(metas) == 6
    for meta in metas:
        assert meta.azimuth_deg == pytest.approx(truth.azimuth_deg[meta.rir_id], abs=1e-3)
    # and the check can be switched off (documented: the user takes the responsibility)
    res = _render(bank, mirrored, tmp_path / "off", "--no-rir-check")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "off" / "manifest.json").read_text())["inputs"]["rir_check"].startswith("disabled")


def test_undeclared_a_format_file_is_skipped(bank, tmp_path):
    ir, _ = sf.read(bank / "ir" / "r4.wav", always_2d=True)
    sf.write(bank / "ir" / "r4_a.wav", to_a_format(ir.T).T, SR, subtype="FLOAT")
    csv = _variant(bank, "one_a", lambda d: d.assign(rir_path=d.rir_path.replace("ir/r4.wav", "ir/r4_a.wav")))
    res = _render(bank, csv, tmp_path / "a", "--max-failure-rate", "0.2")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    (row,) = [r for r in m["skipped_rows"] if r["field"] == "rir_check"]
    assert row["rir_id"] == "r4" and row["kind"] == "a-format"


def test_release_a_format_passes_when_declared_and_is_skipped_when_not():
    """The DISSE release's A-format (cardioid capsules 5 cm from the centre, pipeline/aformat.py):
    declared ``aformat`` it is converted on read and its direction checks out (its dipole level is
    the converter's, not SN3D's, so only the direction is judged); read as AmbiX it is refused."""
    from disse.pipeline.aformat import aformat_to_ambix, simulate_catalogue_rir

    for az, el in [(90, 0), (-60, 20), (150, -10)]:
        dims, d = np.array([6.0, 5.0, 3.0]), 1.5
        pos = dims / 2 + d * _unit(az, el)
        row = {"dims": str(list(dims)), "source_distance_m": str(d), "azimuth_deg": str(az),
               "elevation_deg": str(el), "source_pos_xyz": str([round(float(v), 3) for v in pos]),
               "fs": "48000", "alpha": "0.3"}
        capsules, fs = simulate_catalogue_rir(row)
        capsules = capsules.astype(np.float64)
        declared = check_rir(aformat_to_ambix(capsules), fs, az, el, "aformat")
        assert declared.ok and declared.error_deg < 6, declared
        undeclared = check_rir(capsules, fs, az, el, "ambix")
        assert not undeclared.ok and undeclared.kind in ("a-format", "levels"), undeclared
