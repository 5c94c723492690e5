"""Real recordings as a user's corpus has them: formats, rates, channel counts, lengths, and the bad
ones (silent, clipped, corrupt, too low a rate) skipped with a reason, never a traceback.

Every fixture is a real file written with libsndfile at test time (MP3, OGG Vorbis, FLAC, WAV)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from disse.pipeline.audio_io import load_clip, tile_to_length
from disse.pipeline.foa import plane_wave_rir
from disse.schemas import SchemaError

SR = 48000


def tone(sr: int, seconds: float, hz: float = 1000.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * sr / x.size)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """One small real file per case."""
    d = tmp_path / "audio"
    d.mkdir()
    rng = np.random.default_rng(0)
    out = {}

    def write(name: str, data: np.ndarray, sr: int, **kw) -> None:
        out[name.split(".")[0]] = d / name
        sf.write(d / name, data, sr, **kw)

    left, right = tone(44100, 10.5, 1000), tone(44100, 10.5, 1000, amp=0.1)
    write("mp3_stereo.mp3", np.stack([left, right], 1), 44100, format="MP3")
    write("ogg_8s.ogg", tone(32000, 8.0, 500), 32000, format="OGG", subtype="VORBIS")
    write("wav_16k.wav", tone(16000, 10.0, 2000), 16000, subtype="PCM_16")
    write("wav_8k.wav", tone(8000, 3.0, 700), 8000, subtype="PCM_16")
    write("flac_96k_6ch.flac", np.stack([tone(96000, 2.5, 3000)] * 6, 1), 96000, subtype="PCM_24")
    write("long_60s.flac", np.concatenate([tone(44100, 10.0, 1000), tone(44100, 50.0, 4000)]), 44100)
    write("silent.wav", np.zeros(SR * 5, np.float32), SR)
    write("near_silent.wav", (1e-4 * rng.standard_normal(SR * 5)).astype(np.float32), SR)
    write("clipped_badly.wav", np.clip(10 * tone(SR, 5.0, 300), -1, 1), SR, subtype="PCM_16")
    mild = tone(SR, 10.0, 300, amp=0.5)
    mild[1000:1100] = 1.0  # 100 samples at full scale: 0.02 % of the clip
    write("clipped_mildly.wav", mild, SR, subtype="PCM_16")
    write("rate_4k.wav", tone(4000, 10.0, 500), 4000)
    (d / "corrupt.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.bytes(4000))
    (d / "truncated.flac").write_bytes((d / "long_60s.flac").read_bytes()[:60])
    (d / "empty.wav").write_bytes(b"")
    out.update(corrupt=d / "corrupt.mp3", truncated=d / "truncated.flac", empty=d / "empty.wav")
    return out


def test_formats_rates_and_channels_decode_to_48k_mono_10s(files):
    cases = {"mp3_stereo": 1000, "ogg_8s": 500, "wav_16k": 2000, "wav_8k": 700, "flac_96k_6ch": 3000,
             "long_60s": 1000}
    for name, hz in cases.items():
        clip = load_clip(files[name])
        assert clip.shape == (480000,) and clip.dtype == np.float32, name
        assert abs(peak_hz(clip[:SR * 2]) - hz) < 2, name
    # stereo is mixed down by the mean of the channels: (0.3 + 0.1) / 2
    mp3 = load_clip(files["mp3_stereo"])
    assert abs(np.abs(mp3[SR:SR * 2]).max() - 0.2) < 0.01
    # a long file is cropped to its first 10 s (the 4 kHz part starts at 10 s)
    assert abs(peak_hz(load_clip(files["long_60s"])[-SR:]) - 1000) < 2


def test_short_clips_are_tiled_not_zero_padded(files):
    """8 s OGG and 2.5 s FLAC: the clip repeats to fill 10 s, at the same level to the end."""
    ogg = load_clip(files["ogg_8s"])
    assert abs(np.abs(ogg[-SR:]).max() - np.abs(ogg[SR:2 * SR]).max()) < 0.02
    assert abs(peak_hz(ogg[-SR:]) - 500) < 2
    short = load_clip(files["flac_96k_6ch"])  # 2.5 s -> four copies
    np.testing.assert_allclose(short[SR // 2:SR], short[SR // 2 + 120000:SR + 120000], atol=1e-3)
    np.testing.assert_array_equal(tile_to_length(np.arange(3), 7), [0, 1, 2, 0, 1, 2, 0])


@pytest.mark.parametrize("name, reason", [
    ("silent", "clip is silent"), ("near_silent", "clip is silent"),
    ("clipped_badly", "badly clipped"), ("corrupt", "cannot decode audio"),
    ("truncated", "cannot decode audio"), ("empty", "cannot decode audio"),
    ("rate_4k", "sample rate below 8000 Hz")])
def test_unusable_clips_raise_a_schema_error_naming_the_file(files, name, reason):
    with pytest.raises(SchemaError, match=reason) as info:
        load_clip(files[name])
    assert info.value.file == str(files[name])
    assert str(files[name].parent) not in info.value.reason  # the path is in .file, not the reason


def test_mild_clipping_is_rendered(files):
    assert load_clip(files["clipped_mildly"]).shape == (480000,)


def test_render_counts_every_bad_clip_in_the_manifest(files, tmp_path):
    """The whole mixed folder through ``disse-synth render``: good clips rendered, bad ones skipped
    with their reasons counted in the manifest, exit status 1 only for the failure rate."""
    from click.testing import CliRunner

    from disse.pipeline.cli import main

    clips = tmp_path / "clips.csv"
    names = sorted(files)
    clips.write_text("audiocap_id,caption,path,split\n" + "".join(
        f"{n},A sound called {n.replace('_', ' ')}.,audio/{files[n].name},train\n" for n in names))
    (tmp_path / "rirs").mkdir()
    sf.write(tmp_path / "rirs" / "r0.wav", plane_wave_rir(45.0, 0.0, 2400, delay=48).T, SR, subtype="FLOAT")
    sf.write(tmp_path / "rirs" / "r1.wav", plane_wave_rir(-90.0, 0.0, 2400, delay=48).T, SR, subtype="FLOAT")
    rirs = tmp_path / "rirs.csv"
    rirs.write_text("rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms,split\n"
                    "rirs/r0.wav,45,0,1.5,40,300,train\nrirs/r1.wav,-90,0,2.5,80,600,train\n")
    res = CliRunner().invoke(main, ["render", "--clips", str(clips), "--audio-dir", str(tmp_path), "--rirs",
                                    str(rirs), "--out", str(tmp_path / "out"), "--rirs-per-clip", "2",
                                    "--clips-per-rir", "1", "--shard-size", "64", "--no-progress"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    bad = {"silent", "near_silent", "clipped_badly", "corrupt", "truncated", "empty", "rate_4k"}
    skipped = {Path(s["file"]).stem for s in manifest["skipped"]}
    assert skipped == bad
    assert manifest["rendered_samples"] == 2 * (len(names) - len(bad))
    reasons = manifest["skip_reasons"]
    assert reasons["clip is silent (peak below -60 dBFS)"] == 4
    assert sum(n for r, n in reasons.items() if r.startswith("cannot decode audio")) == 6
    assert res.exit_code == 1  # 7 of 14 clips bad: far above --max-failure-rate
