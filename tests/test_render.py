"""`disse-synth render`: physics recovered from real shards, determinism, resume after a real
SIGKILL, job splitting, bad inputs counted or reported in one line."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from click.testing import CliRunner

from disse.pipeline.cli import main
from disse.pipeline.features import direction_from_iv, intensity_features
from disse.pipeline.foa import angular_error_deg, plane_wave_rir
from disse.pipeline.render import select_shards
from disse.pipeline.shards import read_tar_samples
from disse.schemas import FeatureParams, decode_sample, load_caption_rules

RIR_HEADER = "rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms"
# front, left, right, behind, above, below-back-left
ANECHOIC = [(0.0, 0.0), (90.0, 0.0), (-90.0, 0.0), (180.0, 0.0), (30.0, 70.0), (135.0, -50.0)]
SR = 48000


def click_train(sr: int = SR, seconds: float = 8.0) -> np.ndarray:
    """Clicks 0.4 s apart, each 7 ms after an STFT frame centre at 48 kHz: that frame's window
    ends before the first reflection arrives, so it holds the direct sound alone."""
    x = np.zeros(int(sr * seconds), np.float32)
    for n in range(2, int(seconds * 100) - 10, 40):
        x[int(round((480 * n + 336) * sr / SR))] = 0.9
    return x


def _write_inputs(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    audio = root / "audio"
    audio.mkdir(parents=True)
    noise = lambda sr, s: (0.1 * rng.standard_normal(int(sr * s))).astype(np.float32)  # noqa: E731
    sf.write(audio / "n_flac.flac", noise(44100, 12), 44100)      # longer than 10 s: cropped
    sf.write(audio / "n_wav.wav", np.stack([noise(48000, 4)] * 2, 1), 48000)  # stereo, short
    sf.write(audio / "n_ogg.ogg", noise(32000, 10), 32000, format="OGG", subtype="VORBIS")
    sf.write(audio / "n_mp3.mp3", noise(44100, 10), 44100, format="MP3")
    sf.write(audio / "clicks.wav", click_train(), SR)
    clips = root / "clips.csv"
    clips.write_text("audiocap_id,caption\n" + "".join(
        f"{n},{c}\n" for n, c in [("n_flac", "Hiss of white noise."), ("n_wav", "A short hiss."),
                                  ("n_ogg", "Steady noise."), ("n_mp3", "Noise from a speaker."),
                                  ("clicks", "A regular clicking.")]))
    rirs_dir = root / "rirs"
    rirs_dir.mkdir()
    rows = []
    for i, (az, el) in enumerate(ANECHOIC):
        sf.write(rirs_dir / f"pw{i}.wav", plane_wave_rir(az, el, 2400, delay=48).T, SR, subtype="FLOAT")
        rows.append(f"rirs/pw{i}.wav,{az},{el},{1.5 + i},{30 + 40 * i},{150 + 300 * i}")
    rirs = root / "rirs.csv"
    rirs.write_text(RIR_HEADER + "\n" + "\n".join(rows) + "\n")
    return clips, rirs


def _render_args(clips: Path, rirs: Path, audio: Path, out: Path, *extra: str) -> list[str]:
    return ["render", "--clips", str(clips), "--audio-dir", str(audio), "--rirs", str(rirs),
            "--out", str(out), "--shard-size", "2", "--rirs-per-clip", "2", "--clips-per-rir", "2",
            "--val-fraction", "0.25", "--test-fraction", "0.25", "--no-progress", *extra]


def _checksums(out: Path) -> dict[str, str]:
    """sha256 of every shard, sizes.json and the manifest (not the _parts bookkeeping)."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and "_parts" not in p.parts)
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("render_inputs")
    clips, rirs = _write_inputs(root)
    return root, clips, rirs


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """One full render with 2 workers: what every other way of rendering must reproduce."""
    root, clips, rirs = inputs
    out = tmp_path_factory.mktemp("ref") / "shards"
    res = CliRunner().invoke(main, _render_args(clips, rirs, root / "audio", out, "--workers", "2"))
    assert res.exit_code == 0, res.output
    return out


def _all_samples(out: Path) -> list[dict]:
    return [s for tar in sorted(out.glob("*/*.tar")) for s in read_tar_samples(tar)]


# ----------------------------------------------------------------------------------------------
# Shards: contents, physics, readers
# ----------------------------------------------------------------------------------------------

def test_shards_hold_48k_foa_and_directions_within_5_degrees(reference):
    samples = _all_samples(reference)
    seen_rirs = set()
    for raw in samples:
        foa, iv, meta = decode_sample(raw)
        assert foa.shape == (4, 480000) and foa.dtype == np.float32
        assert sf.info(__import__("io").BytesIO(raw["yzx.flac"])).samplerate == 48000
        assert sf.info(__import__("io").BytesIO(raw["yzx.flac"])).subtype == "PCM_16"  # schema v3, v4
        assert iv.dtype == np.float16 and iv.shape == (6, 1001, 64)
        assert np.abs(foa).max() <= 0.99 + 1e-6
        assert meta.render["gain"] > 0 and meta.features["sample_rate"] == 48000
        est = direction_from_iv(iv)
        assert angular_error_deg(*est, meta.azimuth_deg, meta.elevation_deg) < 5.0, meta.key
        if meta.key == samples[0]["__key__"]:  # the 16-bit FOA of the shard holds the direction too
            again = direction_from_iv(intensity_features(foa, FeatureParams.from_dict(meta.features)))
            assert angular_error_deg(*again, meta.azimuth_deg, meta.elevation_deg) < 5.0
        seen_rirs.add(meta.rir_id)
    assert seen_rirs == {f"pw{i}" for i in range(len(ANECHOIC))}  # every RIR rendered


def test_ids_captions_and_splits(reference):
    rules = load_caption_rules()
    by_split: dict[str, list] = {}
    for raw in _all_samples(reference):
        _, _, meta = decode_sample(raw, audio=False)
        by_split.setdefault(meta.split, []).append(meta)
        values = {"azimuth_deg": meta.azimuth_deg, "elevation_deg": meta.elevation_deg,
                  "source_distance_m": meta.source_distance_m, "area_m2": meta.area_m2,
                  "t30_ms": meta.t30_ms}
        assert meta.descriptors == rules.describe(values)
        assert meta.space_id == rules.space_id(meta.descriptors)
        assert meta.key == f"{meta.source_id}__{meta.rir_id}"
        for attribute, phrase in meta.render["phrases"].items():
            assert phrase in rules.phrases(attribute, meta.descriptors[attribute])
            assert phrase in meta.caption.lower() and phrase in meta.spatial_caption.lower()
    assert set(by_split) == {"train", "val", "test"}
    for a in by_split:
        for b in by_split:
            if a < b:  # disjoint in dry clips and in RIRs
                assert not {m.source_id for m in by_split[a]} & {m.source_id for m in by_split[b]}
                assert not {m.rir_id for m in by_split[a]} & {m.rir_id for m in by_split[b]}


def test_read_back_with_webdataset_and_tarfile_and_sizes(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["complete"] and manifest["skipped_samples"] == 0
    total = 0
    for split in ("train", "val", "test"):
        sizes = json.loads((reference / split / "sizes.json").read_text())
        tars = sorted((reference / split).glob("*.tar"))
        assert sorted(sizes) == [t.name for t in tars]
        for tar in tars:
            with tarfile.open(tar) as tf:
                members = tf.getmembers()
            assert len(members) == 4 * sizes[tar.name]  # yzx.flac, iv.npz, json, w.wav
            assert all(m.mtime == members[0].mtime and m.uid == 0 and m.uname == "" for m in members)
        ds = wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
        n = 0
        for s in ds:
            assert {"yzx.flac", "iv.npz", "json", "w.wav"} <= set(s)
            n += 1
        assert n == sum(sizes.values()) == manifest["splits"][split]["rendered"]
        total += n
    assert total == manifest["rendered_samples"] == manifest["planned_samples"]
    on_disk = sum(t.stat().st_size for t in reference.rglob("*.tar"))
    assert manifest["bytes_per_sample"] == round(on_disk / total)  # schema v4: ~2.1 MB for 10 s clips
    for split in ("train", "val", "test"):
        s = manifest["splits"][split]
        assert s["bytes"] == sum(t.stat().st_size for t in (reference / split).glob("*.tar")) > 0
        assert s["bytes_per_sample"] == round(s["bytes"] / s["rendered"])
    assert not list(reference.rglob(".*.tmp"))  # nothing half-written left


# ----------------------------------------------------------------------------------------------
# Determinism, job splitting, resume after SIGKILL
# ----------------------------------------------------------------------------------------------

def test_one_worker_gives_identical_bytes(inputs, reference, tmp_path):
    root, clips, rirs = inputs
    out = tmp_path / "w1"
    res = CliRunner().invoke(main, _render_args(clips, rirs, root / "audio", out, "--workers", "1"))
    assert res.exit_code == 0, res.output
    assert _checksums(out) == _checksums(reference)


def test_job_array_union_equals_single_run(inputs, reference, tmp_path):
    root, clips, rirs = inputs
    out = tmp_path / "jobs"
    args = _render_args(clips, rirs, root / "audio", out)
    runner = CliRunner()
    plan = runner.invoke(main, args + ["--plan-only"])
    n_shards = int(plan.output.split("total:")[1].split("samples,")[1].split("shards")[0])
    assert n_shards >= 4
    first = select_shards(n_shards, job=(0, 2))
    res = runner.invoke(main, args + ["--job-index", "0", "--num-jobs", "2"])
    assert res.exit_code == 0, res.output
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    assert len(list(out.glob("*/*.tar"))) == len(first)
    res = runner.invoke(main, args + ["--shard-range", f"{first.stop}:"])  # the other job
    assert res.exit_code == 0, res.output
    assert _checksums(out) == _checksums(reference)


def test_killed_render_resumes_to_identical_shards(inputs, reference, tmp_path):
    root, clips, rirs = inputs
    out = tmp_path / "killed"
    args = _render_args(clips, rirs, root / "audio", out, "--workers", "1")
    proc = subprocess.Popen([sys.executable, "-m", "disse.pipeline.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("*/*.tar"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_before = len(list(out.glob("*/*.tar")))
    assert 2 <= n_before < len(_checksums(reference)) - 4  # killed mid-way
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert _checksums(out) == _checksums(reference)
    assert not list(out.rglob(".*.tmp"))


def test_a_render_killed_between_a_shard_and_its_part_record_resumes_without_leftovers(inputs, reference, tmp_path):
    """The kill that lands after a shard's tar is renamed into place but while its part record is a
    temporary file: the resumed render rewrites the shard and leaves no temporary file behind."""
    root, clips, rirs = inputs
    out = tmp_path / "between"
    args = _render_args(clips, rirs, root / "audio", out, "--workers", "1")
    assert CliRunner().invoke(main, args).exit_code == 0
    part = sorted((out / "_parts").glob("*.json"))[0]
    killed = part.with_name(f".{part.name}.otherhost-4242.tmp")
    killed.write_text(part.read_text()[:20])  # half a record, as a killed writer leaves it
    part.unlink()
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert _checksums(out) == _checksums(reference)
    assert part.exists() and not list(out.rglob(".*.tmp"))


# ----------------------------------------------------------------------------------------------
# A simulated room: the direct path is recovered from the shard
# ----------------------------------------------------------------------------------------------

def test_room_rir_direction_recovered_from_shard(tmp_path):
    from disse.pipeline import rirs as sim

    params = sim.SimParams(area_range=(25, 30), t30_range=(0.2, 0.25), early_ms=30.0, max_order=16,
                           max_rir_s=0.6)
    rng = np.random.default_rng(5)
    room = sim.sample_room(rng, params)
    receiver = np.array([room.dims[0] / 2, room.dims[1] / 2, 1.2])
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "clicks.wav", click_train(), SR)
    (tmp_path / "clips.csv").write_text("audiocap_id,caption,split\nclicks,A regular clicking.,train\n")
    rows = []
    # left, right, behind, above (and a front-right diagonal below ear level)
    for i, (az, el) in enumerate([(90, 0), (-90, 0), (180, 10), (20, 65), (-40, -30)]):
        u = np.array([math.cos(math.radians(az)) * math.cos(math.radians(el)),
                      math.sin(math.radians(az)) * math.cos(math.radians(el)), math.sin(math.radians(el))])
        pos = sim.Position(receiver=receiver, yaw=0.0, source=receiver + 1.0 * u)
        ir, _ = sim.simulate_rir(room, pos, rng, params)
        sf.write(tmp_path / f"room{i}.wav", (ir / np.abs(ir).max()).T.astype(np.float32), SR, subtype="FLOAT")
        a, e, d = pos.direction()
        rows.append(f"room{i}.wav,{a},{e},{d},{room.area},{sim.measure_t30(ir[0], SR)},train")
    (tmp_path / "rirs.csv").write_text(RIR_HEADER + ",split\n" + "\n".join(rows) + "\n")
    res = CliRunner().invoke(main, [
        "render", "--clips", str(tmp_path / "clips.csv"), "--audio-dir", str(tmp_path / "audio"),
        "--rirs", str(tmp_path / "rirs.csv"), "--out", str(tmp_path / "out"), "--rirs-per-clip", "5",
        "--shard-size", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    samples = _all_samples(tmp_path / "out")
    assert len(samples) == 5
    for raw in samples:
        _, iv, meta = decode_sample(raw, audio=False)
        plain = direction_from_iv(iv)                       # bent by reflections
        direct = direction_from_iv(iv, min_directivity=0.95)  # cells holding the direct sound
        err = angular_error_deg(*direct, meta.azimuth_deg, meta.elevation_deg)
        assert err < 5.0, (meta.rir_id, meta.azimuth_deg, meta.elevation_deg, direct, plain)


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------

def test_bad_inputs_are_skipped_counted_and_thresholded(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", (0.1 * np.random.default_rng(0).standard_normal(48000 * 2)).astype(np.float32), SR)
    (audio / "corrupt.flac").write_bytes(b"fLaC this is not audio" * 50)
    (tmp_path / "clips.csv").write_text(
        "audiocap_id,caption,split\ngood,A hiss.,train\nmissing,Gone.,train\ncorrupt,Broken.,train\n")
    sf.write(tmp_path / "ok.wav", plane_wave_rir(90, 0, 480).T, SR, subtype="FLOAT")
    sf.write(tmp_path / "stereo.wav", np.zeros((480, 2), np.float32) + 0.1, SR, subtype="FLOAT")
    (tmp_path / "rirs.csv").write_text(
        RIR_HEADER + ",split\nok.wav,90,0,1,20,300,train\nstereo.wav,0,0,1,20,300,train\n"
        "other.wav,nan,0,1,20,300,train\n")
    args = ["render", "--clips", str(tmp_path / "clips.csv"), "--audio-dir", str(audio), "--rirs",
            str(tmp_path / "rirs.csv"), "--out", str(tmp_path / "out"), "--rirs-per-clip", "2",
            "--clips-per-rir", "3", "--no-progress"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1  # 5 of 6 samples failed: far above the 5 % default
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["rendered_samples"] == 1 and m["skipped_samples"] == 5 and m["complete"]
    reasons = {s["key"]: (s["file"], s["reason"]) for s in m["skipped"]}
    assert "not found" in reasons["missing__ok"][1] and reasons["missing__ok"][0].endswith("missing.flac")
    assert "cannot decode" in reasons["corrupt__ok"][1] and reasons["corrupt__ok"][0].endswith("corrupt.flac")
    assert "4 channels" in reasons["good__stereo"][1] and reasons["good__stereo"][0].endswith("stereo.wav")
    (row,) = m["skipped_rows"]
    assert row["row"] == 3 and row["field"] == "azimuth_deg" and row["file"].endswith("rirs.csv")
    # the one good sample is a real render; a lenient threshold lets the run succeed
    res = CliRunner().invoke(main, args + ["--max-failure-rate", "0.9"])
    assert res.exit_code == 0, res.output


def test_cli_schema_error_is_one_line_exit_2(tmp_path):
    (tmp_path / "rirs.csv").write_text(RIR_HEADER + "\n")
    proc = subprocess.run([sys.executable, "-m", "disse.pipeline.cli", "render", "--clips",
                           str(tmp_path / "nope.csv"), "--rirs", str(tmp_path / "rirs.csv"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.csv" in lines[0]
    assert "Traceback" not in proc.stderr


def test_fuma_rir_converted_on_read_and_clip_resampled(tmp_path):
    from disse.pipeline.audio_io import load_clip, load_rir
    from disse.pipeline.foa import ambix_to_fuma

    ambix = plane_wave_rir(-60, 25, 480, delay=10)
    sf.write(tmp_path / "fuma.wav", ambix_to_fuma(ambix).T, 44100, subtype="FLOAT")
    got = load_rir(tmp_path / "fuma.wav", "fuma")  # also resampled 44.1 -> 48 kHz
    assert got.shape == (4, 523)
    peak = np.abs(got).argmax(axis=1)
    gains = got[np.arange(4), peak] / got[0, peak[0]]
    np.testing.assert_allclose(np.sign(gains) * np.abs(gains), ambix[:, 10], atol=0.02)
    tone = np.sin(2 * np.pi * 1000 * np.arange(44100 * 3) / 44100).astype(np.float32)
    sf.write(tmp_path / "tone.wav", tone, 44100)
    clip = load_clip(tmp_path / "tone.wav")
    assert clip.shape == (480000,)  # 3 s of tone, tiled to 10 s (audio_io: short clips repeat)
    np.testing.assert_allclose(clip[150000:160000], clip[6000:16000], atol=2e-3)
    spectrum = np.abs(np.fft.rfft(clip[:144000]))
    assert abs(np.argmax(spectrum) * 48000 / 144000 - 1000) < 1


def test_captions_preview_command(inputs):
    _, _, rirs = inputs
    res = CliRunner().invoke(main, ["captions", "--rirs", str(rirs), "--limit", "3"])
    assert res.exit_code == 0, res.output
    assert res.output.count("space_id:") == 3
    assert "pw1:" in res.output and "left|level|" in res.output
