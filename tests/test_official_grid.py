"""`disse-synth official-rirs` / `official-grid` on a tiny catalogue with generated clips."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import random

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from disse.pipeline.cli import main
from disse.pipeline.official_features import official_direction, official_intensity, split_official_iv
from disse.pipeline.official_grid import load_aformat_rir, load_dry_official, spatialise_official
from disse.pipeline.shards import read_tar_samples
from disse.schemas import decode_sample, load_caption_rules
from disse.schemas.shard import decode_w

pytest.importorskip("pyroomacoustics")


def _rir_row(name, dims, alpha, d, az, el, t30):
    c = np.array(dims) / 2
    a, e = math.radians(az), math.radians(el)
    pos = c + d * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    return {"rir_path": f"RIR_dataset/RIR_data/test/{name}.wav", "dims": str(list(dims)),
            "area_m2": dims[0] * dims[1], "alpha": alpha, "fullband_T30_ms": t30, "source_distance_m": d,
            "azimuth_deg": az, "elevation_deg": el,
            "source_pos_xyz": "[" + ", ".join(str(round(float(v), 3)) for v in pos) + "]",
            "distance": d, "fs": 48000, "room_id": "0000abcd", "split": "test"}


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    (root / "dry" / "test").mkdir(parents=True)
    sf.write(root / "dry" / "104274.wav", np.stack([rng.standard_normal(44100 * 3) * 0.1] * 2, 1), 44100)
    sf.write(root / "dry" / "test" / "107283.flac", rng.standard_normal(48000 * 12) * 0.05, 48000)
    _write(root / "audio_fixed.csv", [
        {"audiocap_id": "104274", "youtube_id": "a", "start_time": 0, "caption": "Rain is falling continuously"},
        {"audiocap_id": "107283", "youtube_id": "b", "start_time": 30, "caption": "A man speaks"}])
    # written out of order: the grid sorts RIR rows by rir_path
    _write(root / "rir_fixed.csv", [
        _rir_row("auto_000002", (6.0, 5.0, 3.0), 0.9, 2.05, 170, 43, 150),
        _rir_row("auto_000000", (4.0, 3.5, 3.0), 0.9, 0.84, 77, -46, 150),
        _rir_row("auto_000001", (5.0, 4.0, 3.0), 0.9, 0.9, -100, 42, 150)])
    args = ["official-grid", "--audio-catalogue", root / "audio_fixed.csv", "--rir-catalogue", root / "rir_fixed.csv",
            "--dry-root", root / "dry", "--out", root / "out", "--any-size", "--no-progress", "--shard-size", "3"]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return root, args


def _samples(out):
    return [s for tar in sorted((out / "test").glob("*.tar")) for s in read_tar_samples(tar)]


def test_order_ids_and_captions_follow_the_release(grid):
    root, _ = grid
    samples = [decode_sample(s, audio=False) for s in _samples(root / "out")]
    metas = [m for _, _, m in samples]
    assert [(m.source_id, m.space_id) for m in metas] == [
        (s, p) for s in ("104274", "107283") for p in ("auto_000000", "auto_000001", "auto_000002")]
    rules = load_caption_rules("official")
    rng = random.Random(42)
    for m in metas:
        values = {k: getattr(m, k) for k in ("azimuth_deg", "elevation_deg", "source_distance_m", "area_m2")}
        values["t30_ms"] = m.t30_ms
        assert m.caption == rules.caption(m.source_caption, rules.describe(values), rng)[0]
        assert m.caption == m.spatial_caption and m.rir_id == m.space_id and m.split == "test"
    assert metas[0].caption.startswith("The sound: Rain is falling continuously is coming from the nearby down right")
    manifest = list(csv.DictReader(open(root / "out" / "manifest.csv")))
    assert [r["text"] for r in manifest] == [m.caption for m in metas]
    assert manifest[3]["dry_path"].endswith("dry/test/107283.flac")
    summary = json.loads((root / "out" / "grid.json").read_text())
    assert summary["samples"] == 6 and summary["features"]["preset"] == "official"


def test_features_and_w_are_the_release_computation(grid):
    root, _ = grid
    raw = _samples(root / "out")[1]                        # 104274 x auto_000001
    _, iv, meta = decode_sample(raw, audio=False)
    assert iv.shape == (6, 201, 1601)
    dry = load_dry_official(root / "dry" / "104274.wav")
    foa = spatialise_official(dry, load_aformat_rir(root / "out" / "rirs" / "auto_000001.wav"))
    act, rea = official_intensity(foa)
    got_act, got_rea = split_official_iv(iv)
    loud = np.linalg.norm(act, axis=0) > 1e-3
    np.testing.assert_allclose(got_act[:, loud], act[:, loud], atol=1e-3)      # float16 storage
    np.testing.assert_allclose(got_rea[:, loud], rea[:, loud], rtol=2e-3, atol=1e-3)
    w, _ = decode_w(raw, meta, where="grid")
    np.testing.assert_allclose(w / meta.render["gain"], foa[0], atol=2.0 ** -15 / meta.render["gain"] * 1.01)
    # a dampened room: the summed active intensity points near the catalogue direction, in the
    # release's frame (+azimuth = +Y)
    az, el = official_direction(got_act[:, :40])  # < 1.6 kHz: the 5 cm capsules do not alias
    assert abs((az - meta.azimuth_deg + 180) % 360 - 180) < 25 and abs(el - meta.elevation_deg) < 25


def test_rebuild_is_byte_identical_and_rirs_command(grid, tmp_path):
    root, args = grid
    out2 = tmp_path / "again"
    args2 = [str(a) for a in args]
    args2[args2.index("--out") + 1] = str(out2)
    args2 += ["--rir-root", str(root / "out" / "rirs")]
    res = CliRunner().invoke(main, args2)
    assert res.exit_code == 0, res.output
    for a in sorted((root / "out" / "test").glob("*.tar")):
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256((out2 / "test" / a.name).read_bytes()).digest()
    res = CliRunner().invoke(main, ["official-rirs", "--catalogue", str(root / "rir_fixed.csv"), "--out",
                                    str(tmp_path / "r"), "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "r").glob("*.wav")] == ["auto_000002.wav"]  # catalogue order


def test_wrong_sizes_and_missing_clips_are_one_line_errors(grid, tmp_path):
    root, args = grid
    a = [str(x) for x in args if str(x) != "--any-size"]
    res = CliRunner().invoke(main, a)
    assert res.exit_code == 2 and "96 audio rows" in res.output
    (tmp_path / "empty").mkdir()
    b = [str(x) for x in args]
    b[b.index("--dry-root") + 1] = str(tmp_path / "empty")
    b[b.index("--out") + 1] = str(tmp_path / "o")
    res = CliRunner().invoke(main, b)
    assert res.exit_code == 2 and "missing inputs" in res.output and "104274" in res.output
