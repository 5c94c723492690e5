"""`disse-synth`: what a first hour with real data runs into, each bad input ending in one line.

Every test feeds its input through the CLI (click's CliRunner, or a subprocess where two processes
must meet) and checks the message and that no traceback is printed. Inputs are small and generated
here: short noise clips and plane-wave RIRs (docs/synthesis.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from click.testing import CliRunner

from disse.pipeline.cli import main
from disse.pipeline.foa import plane_wave_rir

SR = 48000
RIR_HEADER = "rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms,room_index"


def write_inputs(root: Path, n_clips: int = 8, n_rooms: int = 8, *, split_column: bool = False
                 ) -> tuple[Path, Path, Path]:
    """``n_clips`` half-second noise clips (``clips.csv``, ``audio/``) and ``n_rooms`` plane-wave RIRs,
    one per room (``rirs.csv``, ``rirs/``). Returns (clips.csv, audio folder, rirs.csv)."""
    rng = np.random.default_rng(0)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    for i in range(n_clips):
        sf.write(audio / f"c{i}.wav", (0.1 * rng.standard_normal(SR // 2)).astype(np.float32), SR)
    clips = root / "clips.csv"
    clips.write_text("audiocap_id,caption\n" + "".join(f"c{i},Noise number {i}.\n" for i in range(n_clips)))
    rirs_dir = root / "rirs"
    rirs_dir.mkdir(exist_ok=True)
    rows = []
    for i in range(n_rooms):
        az = -180.0 + 360.0 * (i + 0.5) / n_rooms
        sf.write(rirs_dir / f"pw{i}.wav", plane_wave_rir(az, 0.0, 960, delay=48).T, SR, subtype="FLOAT")
        rows.append(f"rirs/pw{i}.wav,{az},0.0,{1.0 + i % 4},{20 + 10 * i},{200 + 50 * i},{i}")
    rirs = root / "rirs.csv"
    rirs.write_text(RIR_HEADER + "\n" + "\n".join(rows) + "\n")
    return clips, audio, rirs


def render_args(clips: Path, audio: Path, rirs: Path, out: Path, *extra: str) -> list[str]:
    return ["render", "--clips", str(clips), "--audio-dir", str(audio), "--rirs", str(rirs),
            "--out", str(out), "--no-progress", *extra]


def invoke(args: list) -> "object":
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(output: str) -> str:
    """The single ``error:`` line of ``output`` (asserted to be one, with no traceback)."""
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


# ---------------------------------------------------------------------------------------------
# a) --features / --rules take a preset name before any path check
# ---------------------------------------------------------------------------------------------

def test_preset_names_win_over_a_folder_of_that_name(tmp_path, monkeypatch):
    clips, audio, rirs = write_inputs(tmp_path)
    (tmp_path / "official").mkdir()  # e.g. a checkout of the release next to the data
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path)
    res = invoke(render_args(clips, audio, rirs, tmp_path / "out", "--plan-only",
                             "--features", "official", "--rules", "official"))
    assert res.exit_code == 0, res.output
    assert "is a directory" not in res.output and "Traceback" not in res.output
    res = invoke(["captions", "--rirs", rirs, "--limit", "2", "--rules", "official"])
    assert res.exit_code == 0, res.output
    assert "space_id:" in res.output
    res = invoke(["captions", "--rirs", rirs, "--limit", "1", "--rules", "project"])
    assert res.exit_code == 0, res.output


def test_preset_options_still_take_a_yaml_path_and_help_lists_the_presets(tmp_path):
    from disse.configs import config_path

    clips, audio, rirs = write_inputs(tmp_path)
    mine = tmp_path / "my_rules.yaml"
    mine.write_text(config_path("caption_rules_v1.yaml").read_text())
    res = invoke(["captions", "--rirs", rirs, "--limit", "1", "--rules", mine])
    assert res.exit_code == 0, res.output
    res = invoke(["captions", "--rirs", rirs, "--rules", tmp_path / "nope.yaml"])
    assert res.exit_code == 2
    assert "nope.yaml" in one_error_line(res.output)
    help_text = invoke(["render", "--help"]).output
    assert "--features [project|official|FILE.yaml]" in help_text
    assert "--rules [project|v1|official|FILE.yaml]" in help_text
    assert "configs/features.yaml" in " ".join(help_text.split())
    assert "[project|v1|official|FILE.yaml]" in invoke(["captions", "--help"]).output


# ---------------------------------------------------------------------------------------------
# b) official-rirs: a catalogue without the columns it needs
# ---------------------------------------------------------------------------------------------

def test_official_rirs_catalogue_without_dims_is_one_error(tmp_path):
    from disse.pipeline.aformat import CATALOGUE_RIR_COLUMNS

    cat = tmp_path / "rir_fixed.csv"
    cat.write_text("rir_path,alpha,fs,source_distance_m,azimuth_deg,elevation_deg,source_pos_xyz\n"
                   'test/auto_000000.wav,0.9,48000,1.0,0,0,"[3.0, 2.5, 1.5]"\n')
    res = invoke(["official-rirs", "--catalogue", cat, "--out", tmp_path / "rirs"])
    assert res.exit_code == 2, res.output
    line = one_error_line(res.output)
    assert str(cat) in line and "missing column(s) dims" in line and "rir_fixed.csv" in line
    assert not (tmp_path / "rirs").exists()
    # no rir_path at all: named too
    cat.write_text("name,dims\nx,\"[1, 2, 3]\"\n")
    res = invoke(["official-rirs", "--catalogue", cat, "--out", tmp_path / "rirs"])
    assert res.exit_code == 2 and "missing column(s) rir_path" in one_error_line(res.output)
    help_text = " ".join(invoke(["official-rirs", "--help"]).output.split())
    assert all(c in help_text for c in CATALOGUE_RIR_COLUMNS)


def test_official_rirs_catalogue_without_dims_is_fine_when_every_file_exists(tmp_path):
    cat = tmp_path / "rir_fixed.csv"
    cat.write_text("rir_path,azimuth_deg\ntest/auto_000000.wav,0\n")
    (tmp_path / "rirs").mkdir()
    (tmp_path / "rirs" / "auto_000000.wav").write_bytes(b"kept")
    res = invoke(["official-rirs", "--catalogue", cat, "--out", tmp_path / "rirs"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rirs" / "auto_000000.wav").read_bytes() == b"kept"


# ---------------------------------------------------------------------------------------------
# c) a render with bad clips names them, and counts failures per clip
# ---------------------------------------------------------------------------------------------

def _two_bad_clips(root: Path) -> tuple[Path, Path, Path]:
    clips, audio, rirs = write_inputs(root, n_clips=8, n_rooms=4)
    (audio / "c3.wav").unlink()                                   # missing
    (audio / "c5.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # corrupt
    return clips, audio, rirs


def test_render_with_a_missing_and_a_corrupt_clip_names_them_and_counts_clips(tmp_path):
    import json

    clips, audio, rirs = _two_bad_clips(tmp_path)
    rates = {}
    for k in (1, 2):
        out = tmp_path / f"out_k{k}"
        res = invoke(render_args(clips, audio, rirs, out, "--rirs-per-clip", k, "--val-fraction", "0",
                                 "--test-fraction", "0"))
        assert res.exit_code == 1, res.output
        line = one_error_line(res.output)
        assert "25.0% of clips (2 of 8 clips failed)" in line and "--max-failure-rate 5.0%" in line
        assert str(out / "manifest.json") in line
        skips = [ln for ln in res.output.splitlines() if ln.startswith("skipped: ")]
        n = f"1 clip ({k} sample{'s' if k > 1 else ''})"
        assert any(ln.startswith(f"skipped: {n}: audio file not found: {audio / 'c3.'}") for ln in skips), res.output
        assert any(ln.startswith(f"skipped: {n}: cannot decode audio") and ln.endswith(str(audio / "c5.wav"))
                   for ln in skips), res.output
        m = json.loads((out / "manifest.json").read_text())
        assert {s["source_id"] for s in m["skipped"]} == {"c3", "c5"}
        assert all(s["input"] == "clip" and s["file"] and s["reason"] for s in m["skipped"])
        assert len(m["skipped"]) == 2 * k and m["skipped_samples"] == 2 * k
        rates[k] = (m["failure_rate"], m["clip_failure_rate"], m["failures"]["clips"])
    assert rates[1] == rates[2] == (0.25, 0.25, {"failed": 2, "of": 8, "rate": 0.25})


def test_an_unreadable_rir_counts_against_the_rirs_not_the_clips(tmp_path):
    import json

    clips, audio, rirs = write_inputs(tmp_path, n_clips=4, n_rooms=4)
    (tmp_path / "rirs" / "pw2.wav").write_bytes(b"not audio")
    out = tmp_path / "out"
    res = invoke(render_args(clips, audio, rirs, out, "--rirs-per-clip", "2", "--val-fraction", "0",
                             "--test-fraction", "0"))
    assert res.exit_code == 1, res.output
    assert "25.0% of RIRs (1 of 4 RIRs unusable)" in one_error_line(res.output)
    assert any(ln.startswith("skipped: 1 RIR (") and ln.endswith(str(tmp_path / "rirs" / "pw2.wav"))
               for ln in res.output.splitlines()), res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["clip_failure_rate"] == 0 and m["rir_failure_rate"] == 0.25
    assert {s["input"] for s in m["skipped"]} == {"rir"}


# ---------------------------------------------------------------------------------------------
# d) splits too small to measure anything are said, one line each
# ---------------------------------------------------------------------------------------------

def test_small_splits_are_warned_one_line_each_with_their_sizes(tmp_path):
    clips, audio, rirs = write_inputs(tmp_path, n_clips=10, n_rooms=12)
    res = invoke(render_args(clips, audio, rirs, tmp_path / "out", "--plan-only", "--rirs-per-clip", "3"))
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    small = {ln.split(":")[1].split()[-1]: ln for ln in res.stderr.splitlines()
             if ln.startswith("warning: small split ")}
    assert set(small) == {"val", "test"}, res.stderr
    for split, line in small.items():
        assert line.startswith(f"warning: small split {split}: 1 clip (1 recording), 1 RIR (1 room), 1 sample,")
        assert "R@K / mAP of SRC, X-SRC and AX-SRC are undefined" in line and "R@10 is 1" in line
        assert f"--{split}-fraction" in line
    # the single-RIR warning is said once, by its own line, not repeated per split
    assert sum("hold a single RIR" in ln for ln in res.stderr.splitlines()) == 1


def test_split_sizes_are_counted_and_a_corpus_large_enough_gets_no_warning():
    from disse.pipeline.render import RenderOptions, make_plan
    from disse.schemas import DryClip, RirRecord, load_caption_rules, load_feature_params

    clips = [DryClip(f"c{i}", f"Sound number {i}.", Path(f"/x/c{i}.wav")) for i in range(300)]
    rirs = [RirRecord(f"r{i}", Path(f"/x/r{i}.wav"), 0.9 * i - 180, 0.0, 1.5, 40.0, 400.0,
                      extra={"room_index": str(i // 2)}) for i in range(400)]
    plan = make_plan(clips, rirs, RenderOptions(rirs_per_clip=2, val_fraction=0.1, test_fraction=0.1),
                     load_feature_params(), load_caption_rules())
    assert not plan.warnings, plan.warnings
    for split in ("val", "test"):
        c = plan.counts[split]
        assert c["recordings"] == c["clips"] >= 10 and 10 <= c["rooms"] == c["rirs"] // 2
    # three held-out rooms: too few to measure, said even with many clips
    plan = make_plan(clips, rirs[:24], RenderOptions(rirs_per_clip=2, val_fraction=0.25, test_fraction=0.25),
                     load_feature_params(), load_caption_rules())
    lines = [w for w in plan.warnings if w.startswith("small split ")]
    assert lines and all("rooms (under 10)" in w or "with one room" in w for w in lines), plan.warnings


# ---------------------------------------------------------------------------------------------
# e) two renders into one folder: the second is refused, a stale lock is taken over
# ---------------------------------------------------------------------------------------------

def _lock(out: Path, name: str, pid: int, host: str | None = None, **extra) -> Path:
    import json
    import socket

    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": "2025-01-01T00:00:00Z",
                                "shards": None, "job": None, **extra}))
    return path


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_live_lock_refuses_a_second_render_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    clips, audio, rirs = write_inputs(tmp_path, n_clips=4, n_rooms=4)
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = _lock(out, ".render.lock", sleeper.pid)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run([sys.executable, "-m", "disse.pipeline.cli",
                               *map(str, render_args(clips, audio, rirs, out, "--rirs-per-clip", "2"))],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: {lock}: another render writes to {out}")
    assert f"pid {sleeper.pid}" in line and "host " in line and "--job-index" in line
    assert not list(out.glob("*/*.tar")) and lock.is_file()  # nothing written, the owner's lock kept


def test_a_dead_owners_lock_is_taken_over_with_a_note(tmp_path):
    clips, audio, rirs = write_inputs(tmp_path, n_clips=4, n_rooms=4)
    out = tmp_path / "out"
    pid = _dead_pid()
    _lock(out, ".render.lock", pid)
    res = invoke(render_args(clips, audio, rirs, out, "--rirs-per-clip", "2", "--max-failure-rate", "1"))
    assert res.exit_code == 0, res.output
    assert f"note: took over the stale lock {out / '.render.lock'}" in res.stderr
    assert f"pid {pid} is no longer running" in res.stderr
    assert not (out / ".render.lock").exists() and list(out.glob("*/*.tar"))


def test_job_array_locks_per_job_index(tmp_path):
    import os

    clips, audio, rirs = write_inputs(tmp_path, n_clips=6, n_rooms=6)
    out = tmp_path / "out"
    args = render_args(clips, audio, rirs, out, "--rirs-per-clip", "2", "--shard-size", "2")
    # job 0 of 2 is running (this very process stands in for it): job 1 renders beside it
    _lock(out, ".render-job-0-of-2.lock", os.getpid(), shards=[0, 3], job=[0, 2])
    res = invoke(args + ["--job-index", "1", "--num-jobs", "2"])
    assert res.exit_code == 0, res.output
    assert not (out / ".render-job-1-of-2.lock").exists()
    # a second task given index 0, and a whole-folder run, overlap job 0's shards: refused
    for extra, held in ((["--job-index", "0", "--num-jobs", "2"], ".render-job-0-of-2.lock"),
                        ([], ".render-job-0-of-2.lock")):
        res = invoke(args + extra)
        assert res.exit_code == 2, res.output
        line = one_error_line(res.output)
        assert line.startswith(f"error: {out / held}: another render writes to {out}")
        assert f"pid {os.getpid()}" in line and "job 0 of 2, shards 0..2" in line
    assert not (out / ".render.lock").exists()  # the refused run left no lock of its own


def test_another_hosts_lock_is_stale_only_when_not_refreshed(tmp_path):
    import os
    import time

    clips, audio, rirs = write_inputs(tmp_path, n_clips=4, n_rooms=4)
    out = tmp_path / "out"
    lock = _lock(out, ".render.lock", 4242, host="elsewhere.example")
    res = invoke(render_args(clips, audio, rirs, out, "--plan-only"))
    assert res.exit_code == 0  # planning writes nothing and takes no lock
    res = invoke(render_args(clips, audio, rirs, out, "--rirs-per-clip", "2"))
    assert res.exit_code == 2 and "on another host" in one_error_line(res.output)
    old = time.time() - 3600
    os.utime(lock, (old, old))
    res = invoke(render_args(clips, audio, rirs, out, "--rirs-per-clip", "2", "--max-failure-rate", "1"))
    assert res.exit_code == 0, res.output
    assert "not refreshed for 60 min" in res.stderr
