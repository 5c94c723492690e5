"""`disse-synth inspect`: summary, --show, --stats (+ --plot), --export, --plot-sample, on a folder,
a brace pattern and one tar; clear errors for unknown keys and missing shards.

The shards are built here from simulated FOA RIRs (disse.pipeline.rirs) convolved with short dry
signals, encoded with disse.schemas.encode_sample and written with plain tarfile.
"""
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from scipy.signal import fftconvolve, stft

from disse.pipeline.cli import main as synth_main
from disse.pipeline.inspect import (collect_metas, dataset_stats, find_sample, find_shards,
                                    iter_samples, iter_shard, iv_direction)
from disse.pipeline.rirs import FAST, Position, Room, SimParams, rotation_z, simulate_rir
from disse.schemas import ShardMeta, encode_sample, load_caption_rules, load_feature_params

SR = 48000
N = SR  # 1-s clips keep the fixture fast; the schema does not fix the length
DIRECTIONS = [(0, 0), (90, 0), (-90, 10), (180, -5), (45, 60), (-30, -50)]  # (az, el)
SPLIT_LAYOUT = {"train": [3, 3], "val": [3]}  # samples per shard


def _intensity(foa: np.ndarray, n_mels: int) -> np.ndarray:
    """A small stand-in for the renderer's features: I_act / I_rea pooled into equal-width bands."""
    _, _, z = stft(foa, fs=SR, nperseg=1024, noverlap=1024 - 480)
    w, xyz = z[0], z[[3, 1, 2]]  # AmbiX W, Y, Z, X -> x, y, z
    energy = (np.abs(z) ** 2).sum(axis=0) + 1e-8
    prod = np.conj(w)[None] * xyz / energy[None]
    iv = np.concatenate([prod.real, prod.imag])  # (6, freq, time)
    bands = np.array_split(np.arange(1, iv.shape[1]), n_mels)
    return np.stack([iv[:, b].mean(axis=1) for b in bands], axis=-1)  # (6, time, bands)


def _sample(i: int, split: str, az: float, el: float, rules, fp) -> dict:
    room = Room(dims=(6.0 + i, 5.0, 3.0), absorption=(0.35,) * 6, t60_target_s=0.0)
    receiver = np.array([3.0, 2.5, 1.5])
    local = np.array([math.cos(math.radians(az)) * math.cos(math.radians(el)),
                      math.sin(math.radians(az)) * math.cos(math.radians(el)), math.sin(math.radians(el))])
    dist = 0.8 + 0.15 * (i % 6)
    pos = Position(receiver=receiver, yaw=0.3 * i, source=receiver + dist * rotation_z(0.3 * i) @ local)
    rir, _ = simulate_rir(room, pos, np.random.default_rng(i), SimParams(**FAST))
    rng = np.random.default_rng(100 + i)
    dry = rng.standard_normal(N) * np.exp(-((np.arange(N) / SR - 0.4) ** 2) / 0.02)  # noise burst
    foa = np.stack([fftconvolve(dry, h)[:N] for h in rir])
    foa = (0.5 * foa / np.abs(foa).max()).astype(np.float32)
    iv = _intensity(foa, fp.n_mels)
    az_m, el_m, d_m = pos.direction()
    values = {"azimuth_deg": az_m, "elevation_deg": el_m, "source_distance_m": d_m,
              "area_m2": room.area, "t30_ms": room.t60_model() * 1000}
    descriptors = rules.describe(values)
    source_id = f"clip{i % 4}"  # sources repeat across spaces
    meta = ShardMeta(key=f"{split}_{i:04d}", split=split, source_id=source_id,
                     space_id=rules.space_id(descriptors), rir_id=f"rir{i}",
                     source_caption=f"noise burst {i % 4}", spatial_caption=f"{descriptors['direction']} of you",
                     caption=f"noise burst {i % 4}, {descriptors['direction']} of you",
                     descriptors=descriptors, features=fp.to_dict(), render={"seed": i}, **values)
    return encode_sample(foa, iv, meta, SR)


def _write_tar(path: Path, samples: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for name in sorted(k for k in s if k != "__key__"):
                info = tarfile.TarInfo(f"{s['__key__']}.{name}")
                info.size = len(s[name])
                tar.addfile(info, io.BytesIO(s[name]))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """root/{train,val}/{split}-00000N.tar + sizes.json; 9 samples, 6 directions."""
    root = tmp_path_factory.mktemp("shards")
    rules, fp = load_caption_rules(), load_feature_params()
    i = 0
    for split, per_shard in SPLIT_LAYOUT.items():
        sizes = {}
        for s, count in enumerate(per_shard):
            samples = []
            for _ in range(count):
                az, el = DIRECTIONS[i % len(DIRECTIONS)]
                samples.append(_sample(i, split, az, el, rules, fp))
                i += 1
            name = f"{split}-{s:06d}.tar"
            _write_tar(root / split / name, samples)
            sizes[name] = count
        (root / split / "sizes.json").write_text(json.dumps(sizes))
    return root


def run(*args):
    return CliRunner().invoke(synth_main, ["inspect", *map(str, args)])


# -- finding and reading -------------------------------------------------------------------------

def test_finds_shards_in_folder_brace_pattern_and_file(dataset):
    assert [p.name for p in find_shards(dataset)] == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    brace = find_shards(f"{dataset}/train/train-{{000000..000001}}.tar")
    assert [p.name for p in brace] == ["train-000000.tar", "train-000001.tar"]
    assert find_shards(dataset / "val" / "val-000000.tar") == [dataset / "val" / "val-000000.tar"]


def test_grouping_matches_webdataset(dataset):
    import webdataset as wds

    shard = dataset / "train" / "train-000000.tar"
    ours = [(s.key, sorted(s.sizes)) for s in iter_shard(shard)]
    theirs = [(s["__key__"], sorted(k for k in s if not k.startswith("__")))
              for s in wds.WebDataset(str(shard), shardshuffle=False)]
    assert ours == theirs and len(ours) == 3


# -- summary and one sample -----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["root", "brace", "file"])
def test_summary(dataset, how):
    target = {"root": dataset, "brace": f"{dataset}/train/train-{{000000..000001}}.tar",
              "file": dataset / "val" / "val-000000.tar"}[how]
    res = run(target)
    assert res.exit_code == 0, res.output
    expected = {"root": (3, 9), "brace": (2, 6), "file": (1, 3)}[how]
    assert f"{expected[0]} shard(s), {expected[1]} sample(s)" in res.output
    assert "yzx.flac" in res.output and "w.wav" in res.output and "schema_version: 4" in res.output
    if how == "root":
        lines = {line.split()[0]: line.split() for line in res.output.splitlines() if line.strip()}
        assert lines["train"][1:3] == ["2", "6"] and lines["val"][1:3] == ["1", "3"]
    assert "disagrees" not in res.output


def test_summary_reports_sizes_json_mismatch(dataset, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dataset / "val", root / "val")
    (root / "val" / "sizes.json").write_text(json.dumps({"val-000000.tar": 5}))
    res = run(root)
    assert res.exit_code == 0 and "declares 5, holds 3" in res.output


def test_show_prints_metadata_and_captions(dataset):
    res = run(dataset, "--show", "train_0001")
    assert res.exit_code == 0, res.output
    assert "noise burst 1, left of you" in res.output
    assert "azimuth 90.0°" in res.output and "direction=left" in res.output
    assert f"4 x {N} at {SR} Hz" in res.output and "source_id: clip1" in res.output
    assert f"FOA (w.wav + yzx.flac, 16-bit): 4 x {N} at {SR} Hz" in res.output


def test_export_writes_the_samples_foa(dataset, tmp_path):
    out = tmp_path / "x" / "s.wav"
    res = run(dataset, "--export", "val_0007", out)
    assert res.exit_code == 0, res.output
    audio, sr = sf.read(out, always_2d=True, dtype="float32")
    sample = find_sample(find_shards(dataset), "val_0007")
    w, _ = sf.read(io.BytesIO(sample.data["w.wav"]), always_2d=True, dtype="float32")
    yzx, _ = sf.read(io.BytesIO(sample.data["yzx.flac"]), always_2d=True, dtype="float32")
    assert sr == SR and audio.shape == (N, 4) and np.array_equal(audio, np.concatenate([w, yzx], axis=1))


def test_plot_sample_and_intensity_direction(dataset, tmp_path):
    out = tmp_path / "sample.png"
    res = run(dataset, "--plot-sample", "train_0001", out)
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 50_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the features in the shard point where the metadata says (left: +90°)
    for key in ("train_0000", "train_0001", "train_0002", "train_0003"):
        sample = find_sample(find_shards(dataset), key)
        meta = sample.meta()
        iv = np.load(io.BytesIO(sample.data["iv.npz"]))["iv"]
        az, _ = iv_direction(iv)
        assert abs((az - meta.azimuth_deg + 180) % 360 - 180) < 15


# -- statistics ----------------------------------------------------------------------------------

def test_stats_table_and_plot(dataset, tmp_path):
    metas, bad = collect_metas(find_shards(dataset))
    stats = dataset_stats(metas)
    assert stats["samples"] == 9 and not bad and stats["splits"] == {"train": 6, "val": 3}
    az = np.array([m.azimuth_deg for m in metas])
    assert stats["quantities"]["azimuth_deg"]["median"] == pytest.approx(np.median(az))
    assert stats["ids"]["source_id"] == {"distinct": 4, "min": 2, "median": 2.0, "max": 3, "with_2_or_more": 4}
    assert sum(stats["descriptors"]["direction"].values()) == 9
    assert stats["descriptors"]["direction"]["left"] == 2  # samples 1 and 7
    out = tmp_path / "stats.png"
    res = run(dataset, "--stats", "--plot", out)
    assert res.exit_code == 0, res.output
    assert "azimuth (°)" in res.output and "T30 (ms)" in res.output and "source_id" in res.output
    assert "left 2 (22%)" in res.output
    assert out.stat().st_size > 50_000
    # bytes per sample, from the tar headers: all members, then each
    sizes = [sum(x.sizes.values()) for x in iter_samples(find_shards(dataset))]
    line = next(x for x in res.output.splitlines() if x.startswith("bytes per sample: "))
    value, unit = line.split()[3:5]
    assert float(value) * {"kB": 1e3, "MB": 1e6}[unit] == pytest.approx(np.mean(sizes), rel=0.01)
    assert "yzx.flac" in line and "w.wav" in line and "iv.npz" in line


def test_stats_skip_and_count_a_corrupt_sample(dataset, tmp_path):
    good = list(iter_shard(dataset / "val" / "val-000000.tar", read=None))
    bad = {"__key__": "broken", "foa.flac": b"x", "iv.npy": b"x", "json": b"{not json"}
    samples = [{"__key__": s.key, **s.data} for s in good] + [bad]
    _write_tar(tmp_path / "val-000000.tar", samples)
    res = run(tmp_path, "--stats")
    assert res.exit_code == 0, res.output
    assert "3 samples" in res.output and "skipped 1 unreadable sample(s)" in res.output
    assert "broken" in res.output


# -- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["unknown_key", "empty_dir", "missing_brace", "not_a_tar", "nowhere"])
def test_errors_are_one_line_with_status_2(dataset, tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 40)
    args = {"unknown_key": [dataset, "--show", "nope"],
            "empty_dir": [tmp_path / "empty"],
            "missing_brace": [f"{dataset}/train/train-{{000000..000005}}.tar"],
            "not_a_tar": [tmp_path / "junk.tar"],
            "nowhere": [tmp_path / "missing"]}[case]
    res = run(*args)
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    expected = {"unknown_key": "'nope'", "empty_dir": "no shards", "missing_brace": "train-000002.tar",
                "not_a_tar": "junk.tar", "nowhere": "missing"}[case]
    assert expected in lines[0]


# -- on the renderer's own output -----------------------------------------------------------------

def test_inspect_the_rendered_demo(demo_shards):
    """The shared demo fixture (rendered by disse-synth's renderer): summary agrees with sizes.json,
    statistics cover every sample, and every sample can be shown."""
    sizes = {split: sum(json.loads((demo_shards / split / "sizes.json").read_text()).values())
             for split in ("train", "val", "test")}
    res = run(demo_shards)
    assert res.exit_code == 0, res.output
    assert f"{sum(sizes.values())} sample(s)" in res.output and "disagrees" not in res.output
    for split, n in sizes.items():
        assert any(line.split()[:1] == [split] and line.split()[2] == str(n) for line in res.output.splitlines())
    metas, bad = collect_metas(find_shards(demo_shards))
    assert not bad and dataset_stats(metas)["samples"] == sum(sizes.values())
    res = run(f"{demo_shards}/val", "--show", metas[-1].key)
    assert res.exit_code == 0 and metas[-1].caption in res.output
