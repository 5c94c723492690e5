"""Simulated FOA RIR bank: T30 measurement, direction of the direct path, decay vs absorption,
metadata consistent with the geometry, determinism across worker counts, CLI errors."""
import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from disse.pipeline.cli import main as synth_main
from disse.pipeline.rirs import (FAST, Position, Room, SimParams, direct_to_reverberant_db, measure_t30,
                                 room_rng, rotation_z, sample_position, sample_room, simulate_bank, simulate_rir)
from disse.schemas import read_rirs_csv

SR = 48000
FAST_PARAMS = SimParams(**FAST)


@pytest.fixture(scope="session")
def bank(tmp_path_factory) -> Path:
    """A small fast bank, 4 rooms x 3 positions, simulated with 2 worker processes."""
    out = tmp_path_factory.mktemp("bank2")
    return simulate_bank(out, 4, 3, seed=7, workers=2, fast=True)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _direct_direction(rir: np.ndarray, distance_m: float) -> tuple[float, float]:
    """(azimuth, elevation) in degrees from the W/X/Y/Z ratios at the direct-path peak."""
    n = int(round(distance_m / 343.0 * SR))
    n = n - 3 + int(np.argmax(np.abs(rir[0, n - 3:n + 4])))
    w, y, z, x = rir[:, n] / rir[0, n]
    return math.degrees(math.atan2(y, x)), math.degrees(math.asin(np.clip(z, -1, 1)))


def _angle_between(az1, el1, az2, el2) -> float:
    def vec(az, el):
        az, el = math.radians(az), math.radians(el)
        return np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    return math.degrees(math.acos(np.clip(vec(az1, el1) @ vec(az2, el2), -1, 1)))


# -- measure_t30 -------------------------------------------------------------------------------

@pytest.mark.parametrize("t60", [0.2, 0.6, 1.8])
def test_measure_t30_on_exponential_decay(t60):
    rng = np.random.default_rng(0)
    n = int(1.5 * t60 * SR)
    t = np.arange(n) / SR
    rir = rng.standard_normal(n) * np.exp(-3 * math.log(10) * t / t60)  # amplitude: -60 dB at t60
    rir = np.concatenate([np.zeros(200), rir])  # a pre-delay does not change the slope
    assert measure_t30(rir, SR) == pytest.approx(t60 * 1000, rel=0.03)


def test_measure_t30_rejects_short_decay_and_silence():
    t = np.arange(2000) / SR
    with pytest.raises(ValueError, match="-35 dB"):
        measure_t30(np.exp(-t / 1.0), SR)  # decays only a few dB
    with pytest.raises(ValueError, match="silent"):
        measure_t30(np.zeros(100), SR)



def test_direct_to_reverberant_ratio_of_a_known_split():
    rng = np.random.default_rng(0)
    rir = np.zeros(SR)
    rir[480] = 1.0                                    # direct sound at 10 ms, energy 1
    tail = rng.standard_normal(SR - 1000) * np.exp(-np.arange(SR - 1000) / 4800)
    rir[1000:] = tail / np.sqrt(np.sum(tail ** 2)) * np.sqrt(0.25)  # 0.25 of it after the window
    assert direct_to_reverberant_db(rir, SR) == pytest.approx(10 * math.log10(4.0), abs=1e-9)
    with pytest.raises(ValueError, match="silent"):
        direct_to_reverberant_db(np.zeros(100), SR)
    with pytest.raises(ValueError, match="no energy after"):
        direct_to_reverberant_db(np.eye(1, 100, 10)[0], SR)

# -- physics of single RIRs ----------------------------------------------------------------------

def _place(room: Room, receiver, yaw_deg, az_deg, el_deg, dist) -> Position:
    receiver = np.asarray(receiver, float)
    yaw = math.radians(yaw_deg)
    az, el = math.radians(az_deg), math.radians(el_deg)
    local = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    return Position(receiver=receiver, yaw=yaw, source=receiver + dist * rotation_z(yaw) @ local)


@pytest.mark.parametrize("az,el,yaw", [(0, 0, 0), (90, 0, 30), (-90, 0, -120), (180, 0, 75),
                                       (30, 60, 200), (-135, -45, 10)])
def test_direct_path_arrives_from_metadata_direction(az, el, yaw):
    room = Room(dims=(6.0, 5.0, 3.0), absorption=(0.3,) * 6, t60_target_s=0.4)
    pos = _place(room, (3.0, 2.5, 1.4), yaw, az, el, 1.2)
    meta_az, meta_el, meta_d = pos.direction()
    assert _angle_between(meta_az, meta_el, az, el) < 1e-6 and meta_d == pytest.approx(1.2)
    rir, _ = simulate_rir(room, pos, np.random.default_rng(0), FAST_PARAMS)
    assert rir.shape[0] == 4
    rec_az, rec_el = _direct_direction(rir, meta_d)
    assert _angle_between(rec_az, rec_el, meta_az, meta_el) < 1.0


def test_t30_grows_as_absorption_falls_and_tail_is_diffuse_foa():
    measured = []
    for alpha in (0.6, 0.3, 0.12):
        room = Room(dims=(7.0, 5.0, 3.0), absorption=(alpha,) * 6, t60_target_s=0.0)
        pos = _place(room, (3.0, 2.0, 1.5), 0, 40, 10, 2.0)
        rir, info = simulate_rir(room, pos, np.random.default_rng(1), FAST_PARAMS)
        t30 = measure_t30(rir[0], SR)
        measured.append(t30)
        # measured decay agrees with the room's expected (Eyring-type) reverberation time
        assert t30 == pytest.approx(room.t60_model() * 1000, rel=0.15)
        # late field: each sample is one plane wave (X²+Y²+Z² = W²) from a direction uniform on
        # the sphere (each of X, Y, Z carries 1/3 of W's energy on average)
        late = rir[:, int(round(info["ism_radius_m"] / 343 * SR)) + 100:]
        late = late[:, late[0] != 0]
        np.testing.assert_allclose((late[1:] ** 2).sum(axis=0), late[0] ** 2, rtol=1e-9)
        shares = ((late[1:] / late[0]) ** 2).mean(axis=1)
        assert late.shape[1] > 5000 and np.all(np.abs(shares - 1 / 3) < 0.02)
    assert measured[0] < measured[1] < measured[2]



def test_direct_to_reverberant_ratio_falls_6_db_per_doubling_of_distance():
    """In one room the reverberant energy barely depends on the position while the direct sound
    falls as 1 / r²: about -6 dB per doubling of the source distance (the cue distance rests on)."""
    room = Room(dims=(8.0, 6.0, 3.0), absorption=(0.3,) * 6, t60_target_s=0.0)
    for az in (40, -100):
        drr = []
        for dist in (0.7, 1.4, 2.8):
            rir, _ = simulate_rir(room, _place(room, (4.0, 3.0, 1.5), 0, az, 0, dist),
                                  np.random.default_rng(1), FAST_PARAMS)
            drr.append(direct_to_reverberant_db(rir, SR))
        steps = -np.diff(drr)
        assert np.all((steps > 3.0) & (steps < 9.0)), drr

def test_sampled_rooms_span_the_requested_ranges():
    p = SimParams()
    rooms = [sample_room(room_rng(3, i), p) for i in range(300)]
    areas = np.array([r.area for r in rooms])
    t60 = np.array([r.t60_model() for r in rooms])
    assert areas.min() >= 10 and areas.max() <= 300 and areas.min() < 15 and areas.max() > 200
    assert t60.min() >= 0.149 and t60.max() <= 2.5 and t60.min() < 0.2 and t60.max() > 2.0
    assert all(max(r.absorption) <= 0.99 for r in rooms)
    assert all(2.4 <= r.dims[2] <= 6.0 for r in rooms)


def test_measured_t30_of_simulated_rooms_against_target_and_pyroomacoustics():
    """T30 as measured, not as modelled: 24 rooms drawn as the bank draws them (default ranges,
    T30 target 0.15-2.5 s), one position each; T30 from the rendered RIR's W channel (Schroeder
    backward integration, -5..-35 dB regression: :func:`measure_t30`) against (a) the room's target
    and (b) pyroomacoustics' independent ``experimental.measure_rt60(decay_db=30)``.

    Measured when this test was written (seed 21): against pyroomacoustics 23 of 24 rooms within
    0.8 %, one at +14 % (a two-slope decay: pyroomacoustics reads the -5 and -35 dB crossings,
    we fit a line between them). Against the target (0.96-1.57x): the 14 rooms with target >= 300 ms within 4.3 %;
    short targets in large rooms come out longer (up to +57 % at 175 ms in 149 m²: the exact
    image-source part, 80 ms, dominates the -5..-35 dB range there and its grazing paths decay
    slower than the diffuse model). The bank stores the measured value, so metadata stays right.
    Tolerances: 2 % for 90 % of rooms and 15 % for all against pyroomacoustics; 6 % against
    reverberant targets (>= 300 ms); 0.9-1.7x for the rest."""
    import pyroomacoustics as pra

    p = SimParams()
    ratios_pra, ratios_target, reverberant = [], [], []
    for i in range(24):
        rng = room_rng(21, i)
        room = sample_room(rng, p)
        rir, _ = simulate_rir(room, sample_position(rng, room, p), rng, p)
        t30 = measure_t30(rir[0], SR)
        ref = pra.experimental.measure_rt60(rir[0], fs=SR, decay_db=30) * 1000
        ratios_pra.append(t30 / ref)
        ratios_target.append(t30 / (room.t60_target_s * 1000))
        reverberant.append(room.t60_target_s >= 0.3)
    ratios_pra, ratios_target, reverberant = map(np.array, (ratios_pra, ratios_target, reverberant))
    assert np.all(np.abs(ratios_pra - 1) < 0.15) and np.mean(np.abs(ratios_pra - 1) < 0.02) >= 0.9
    assert reverberant.sum() >= 10 and np.all(np.abs(ratios_target[reverberant] - 1) < 0.06)
    assert np.all((ratios_target > 0.9) & (ratios_target < 1.7))
    # the targets span the range, so this is not one kind of room
    assert ratios_target.size == 24 and (~reverberant).sum() >= 5


def test_sampled_positions_fit_and_cover_distances_and_elevations():
    p = SimParams()
    dist, elev = [], []
    for i in range(200):
        rng = room_rng(5, i)
        room = sample_room(rng, p)
        pos = sample_position(rng, room, p)
        dims = np.array(room.dims)
        assert np.all(pos.source >= p.wall_margin_m - 1e-9) and np.all(pos.source <= dims - p.wall_margin_m + 1e-9)
        _, el, d = pos.direction()
        dist.append(d)
        elev.append(el)
    dist, elev = np.array(dist), np.array(elev)
    assert dist.min() >= 0.5 and dist.max() <= 6.0
    # every caption bin is well populated: near < 1 m, far > 2 m, above / below beyond 40°
    assert (dist < 1).mean() > 0.2 and (dist > 2).mean() > 0.2
    assert (elev > 40).mean() > 0.05 and (elev < -40).mean() > 0.05


# -- the bank ------------------------------------------------------------------------------------

def test_bank_files_are_4ch_foa_and_csv_follows_the_schema(bank):
    records = read_rirs_csv(bank)  # the project's own validating reader
    assert len(records) == 12
    for rec in records:
        info = sf.info(rec.rir_path)
        assert info.channels == 4 and info.samplerate == SR and info.format == "FLAC"
        assert rec.foa_format == "ambix" and rec.rir_path.is_relative_to(bank.parent)
    df = pd.read_csv(bank)
    assert not df["rir_path"].str.startswith("/").any()  # relative to the CSV


def test_bank_metadata_matches_geometry_and_audio(bank):
    df = pd.read_csv(bank)
    p = SimParams(**FAST)
    for _, r in df.iterrows():
        dims = np.array([r.room_length_m, r.room_width_m, r.room_height_m])
        src = np.array([r.source_x_m, r.source_y_m, r.source_z_m])
        rcv = np.array([r.receiver_x_m, r.receiver_y_m, r.receiver_z_m])
        assert np.all(src >= p.wall_margin_m - 1e-3) and np.all(src <= dims - p.wall_margin_m + 1e-3)
        assert np.all(rcv >= p.receiver_margin_m - 1e-3) and np.all(rcv <= dims - p.receiver_margin_m + 1e-3)
        pos = Position(receiver=rcv, yaw=math.radians(r.receiver_yaw_deg), source=src)
        az, el, d = pos.direction()
        assert d == pytest.approx(r.source_distance_m, abs=2e-3)
        assert _angle_between(az, el, r.azimuth_deg, r.elevation_deg) < 0.1
        assert r.area_m2 == pytest.approx(dims[0] * dims[1], rel=1e-3)
        rir, sr = sf.read(bank.parent / r.rir_path, always_2d=True)
        rir = rir.T
        # the file's direct path comes from the CSV's direction, and its decay is the CSV's T30
        rec_az, rec_el = _direct_direction(rir, r.source_distance_m)
        assert _angle_between(rec_az, rec_el, r.azimuth_deg, r.elevation_deg) < 3.0
        assert measure_t30(rir[0], sr) == pytest.approx(r.fullband_T30_ms, rel=1e-3)
        assert r.fullband_T30_ms == pytest.approx(r.t60_target_ms, rel=0.25)


def test_same_seed_same_bank_whatever_the_workers(bank, tmp_path):
    again = simulate_bank(tmp_path / "one", 4, 3, seed=7, workers=1, fast=True)
    assert _digest(again.parent) == _digest(bank.parent)
    other = simulate_bank(tmp_path / "other", 1, 2, seed=8, workers=1, fast=True)
    assert other.read_bytes() != again.read_bytes()


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_writes_a_bank(tmp_path):
    res = CliRunner().invoke(synth_main, ["rirs", "--out", str(tmp_path / "r"), "--rooms", "1",
                                          "--positions-per-room", "2", "--fast", "--format", "wav",
                                          "--no-progress"])
    assert res.exit_code == 0, res.output
    records = read_rirs_csv(tmp_path / "r" / "rirs.csv")
    assert len(records) == 2 and sf.info(records[0].rir_path).subtype == "FLOAT"


@pytest.mark.parametrize("args,message", [
    (["--rooms", "0"], "--rooms"),
    (["--t30-range", "2", "1"], "--t30-range"),
    (["--max-rir-seconds", "1"], "--max-rir-seconds"),
    (["--fast", "--t30-range", "0.2", "2"], "--max-rir-seconds"),
    (["--area-range", "1", "50"], "--area-range"),
    (["--format", "mp3"], "--format"),
])
def test_cli_bad_options_are_one_line_errors(tmp_path, args, message):
    res = CliRunner().invoke(synth_main, ["rirs", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and message in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r" / "rirs.csv").exists()
