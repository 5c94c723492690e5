"""The data contracts: CSV validation names file/row/field, rule-table thresholds, sample round trip."""
import io
import math

import numpy as np
import pytest
import soundfile as sf

from disse.schemas import (SchemaError, ShardMeta, decode_sample, encode_sample, load_caption_rules,
                           load_feature_params, read_clips_csv, read_rirs_csv, stable_id_int)
from disse.schemas.config import load_config
from disse.schemas.shard import (decode_foa_sample, decode_iv, decode_meta, decode_w, decode_w_wav, encode_iv_npz,
                                 iv_is_bounded)
from disse.schemas.records import wrap_azimuth

RIR_HEADER = "rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms\n"


def test_rir_csv_nan_names_file_row_field(tmp_path):
    p = tmp_path / "rirs.csv"
    p.write_text(RIR_HEADER + "a.wav,10,0,1.5,40,300\nb.wav,nan,0,1.5,40,300\n")
    with pytest.raises(SchemaError) as e:
        read_rirs_csv(p)
    assert "rirs.csv" in str(e.value) and "row 2" in str(e.value) and "azimuth_deg" in str(e.value)
    skipped = []
    records = read_rirs_csv(p, skipped=skipped)
    assert [r.rir_id for r in records] == ["a"] and len(skipped) == 1


def test_rir_csv_missing_column_and_file(tmp_path):
    p = tmp_path / "rirs.csv"
    p.write_text("rir_path,azimuth_deg\na.wav,10\n")
    with pytest.raises(SchemaError, match="missing column"):
        read_rirs_csv(p)
    with pytest.raises(SchemaError, match="not found"):
        read_rirs_csv(tmp_path / "nope.csv")


def test_clips_csv_resolves_audio_dir(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "c1.wav").write_bytes(b"")
    p = tmp_path / "clips.csv"
    p.write_text("audiocap_id,caption\nc1,a dog barks\nc2,\n")
    with pytest.raises(SchemaError, match="row 2.*caption"):
        read_clips_csv(p, tmp_path / "audio")
    skipped = []
    clips = read_clips_csv(p, tmp_path / "audio", skipped=skipped)
    assert clips[0].path == tmp_path / "audio" / "c1.wav" and len(skipped) == 1


def test_azimuth_wrap():
    assert wrap_azimuth(190) == pytest.approx(-170)
    assert wrap_azimuth(-180) == pytest.approx(180)
    assert wrap_azimuth(540) == pytest.approx(180)


@pytest.mark.parametrize("az,label", [(0, "front"), (35, "front"), (35.5, "front-left"), (55, "left"),
                                      (125, "left"), (130, "back-left"), (145, "behind"),
                                      (180, "behind"), (-145, "behind"), (-125, "right"),
                                      (-55, "right"), (-40, "front-right")])
def test_direction_thresholds(az, label):
    rules = load_caption_rules()
    assert rules.attributes["direction"].label_of(az) == label


def test_other_thresholds():
    attrs = load_caption_rules().attributes
    assert [attrs["elevation"].label_of(v) for v in (40, 40.5, -40, -41)] == ["level", "above", "level", "below"]
    assert [attrs["distance"].label_of(v) for v in (0.99, 1.0, 2.0, 2.01)] == ["near", "mid", "mid", "far"]
    assert [attrs["room_size"].label_of(v) for v in (49.9, 50, 100, 100.1)] == ["small", "medium", "medium", "large"]
    assert [attrs["reverberation"].label_of(v) for v in (199, 200, 999, 1001)] == [
        "dampened", "slightly-reverberant", "reverberant", "highly-reverberant"]


def test_sample_round_trip():
    fp = load_feature_params()
    rng = np.random.default_rng(0)
    foa = (rng.standard_normal((4, 4800)) * 0.1).astype(np.float32)
    iv = rng.standard_normal((6, 11, fp.n_mels)).astype(np.float16)
    meta = ShardMeta(key="s0", split="train", source_id="c1", space_id="left|level|near|small|dampened",
                     rir_id="r1", source_caption="a dog", spatial_caption="on the left", caption="a dog on the left",
                     azimuth_deg=90.0, elevation_deg=0.0, source_distance_m=0.5, area_m2=20.0, t30_ms=150.0,
                     descriptors={}, features=fp.to_dict())
    raw = encode_sample(foa, iv, meta)
    foa2, iv2, meta2 = decode_sample(raw)
    # schema v4: 16-bit FOA (round(x * 2**15)), int8 features (q / 127, clipped to +-1), deflated
    assert foa2.shape == (4, 4800) and np.abs(foa2 - foa).max() <= 2 ** -16
    assert iv2.dtype == np.float16 and np.abs(iv2.astype(np.float32) - iv.astype(np.float32).clip(-1, 1)).max() <= 0.004
    assert meta2 == meta
    v2 = encode_sample(foa, iv, ShardMeta(**{**meta.__dict__, "schema_version": 2}))  # still written and read
    foa2, iv2, _ = decode_sample(v2)
    assert np.abs(foa2 - foa).max() < 1e-5 and np.array_equal(iv2, iv)
    v3 = encode_sample(foa, iv, ShardMeta(**{**meta.__dict__, "schema_version": 3}))  # iv.npy, not deflated
    foa3, iv3, _ = decode_sample(v3)
    assert "iv.npy" in v3 and "iv.npz" not in v3
    assert np.array_equal(foa3, decode_sample(raw)[0]) and np.array_equal(iv3, decode_sample(raw)[1])
    with pytest.raises(SchemaError, match="__key__"):
        encode_sample(foa, iv, ShardMeta(**{**meta.__dict__, "key": "a.b"}))


def _meta(**kw) -> ShardMeta:
    fp = load_feature_params()
    return ShardMeta(**{**dict(key="s0", split="train", source_id="c1", space_id="left", rir_id="r1",
                                 source_caption="a dog", spatial_caption="on the left", caption="a dog on the left",
                                 azimuth_deg=90.0, elevation_deg=0.0, source_distance_m=0.5, area_m2=20.0,
                                 t30_ms=150.0, descriptors={}, features=fp.to_dict()), **kw})


def test_w_member_is_the_foa_w_channel_in_16_bits():
    """v4 (as v3) stores W (w.wav) and Y, Z, X (yzx.flac) once each at 16 bits; v2's w.wav holds W of
    its 24-bit foa.flac rounded to 16 bits; v1 (no W member) gives W from foa.flac."""
    rng = np.random.default_rng(1)
    foa = (rng.standard_normal((4, 4800)) * 0.2).clip(-1, 1).astype(np.float32)
    iv = np.zeros((6, 11, 64), np.float16)
    v3 = encode_sample(foa, iv, _meta())
    v2 = encode_sample(foa, iv, _meta(schema_version=2))
    v1 = encode_sample(foa, iv, _meta(schema_version=1))
    assert set(v3) == {"__key__", "w.wav", "yzx.flac", "iv.npz", "json"} and set(v2) - set(v1) == {"w.wav"}
    info = sf.info(io.BytesIO(v3["yzx.flac"]))
    assert (info.format, info.subtype, info.channels) == ("FLAC", "PCM_16", 3)
    assert sf.info(io.BytesIO(v2["foa.flac"])).subtype == "PCM_24"
    w3, sr = decode_w(v3, decode_meta(v3["json"]), where="v3")
    w2, _ = decode_w(v2, decode_meta(v2["json"]), where="v2")
    w1, _ = decode_w(v1, decode_meta(v1["json"]), where="v1")
    assert sr == 48000 and w3.dtype == np.float32 and w3.shape == (4800,)
    foa3, _ = decode_foa_sample(v3, decode_meta(v3["json"]))
    assert np.array_equal(w3, foa3[0]) and np.abs(foa3 - foa).max() <= 2 ** -16
    assert np.array_equal(foa3 * 2 ** 15, np.rint(foa3 * 2 ** 15))  # exact 16-bit values
    assert np.array_equal(w3, w2) and np.abs(w1 - foa[0]).max() <= 2 ** -24
    assert np.array_equal(decode_w_wav(v3["w.wav"], frames=100)[0], w3[:100])


def test_iv_int8_only_for_bounded_features():
    """The project's features are stored as int8 (q / 127); another preset's stay float16. Both are
    a standard deflated .npz (np.load reads it) whose bytes depend on the values only."""
    iv = np.linspace(-1.2, 1.2, 6 * 11 * 64).reshape(6, 11, 64).astype(np.float32)
    raw = encode_sample(np.zeros((4, 480), np.float32), iv, _meta())
    with np.load(io.BytesIO(raw["iv.npz"])) as z:
        assert z.files == ["iv"] and z["iv"].dtype == np.int8
        assert np.array_equal(z["iv"], decode_iv(raw["iv.npz"], dequantise=False))
    got = decode_iv(raw["iv.npz"])
    assert got.dtype == np.float16 and got.max() == 1 and got.min() == -1
    np.testing.assert_allclose(got.astype(np.float32), iv.clip(-1, 1), atol=0.5 / 127 + 1e-3)
    assert not iv_is_bounded({"preset": "official"}) and iv_is_bounded({"n_mels": 64})
    # no time stamp in the zip: the same features give the same bytes later on
    assert encode_iv_npz(iv, quantise=True) == raw["iv.npz"] and encode_iv_npz(iv[:, :5], quantise=True) != raw["iv.npz"]
    unbounded = encode_iv_npz(iv * 100, quantise=False)
    assert decode_iv(unbounded).dtype == np.float16 and decode_iv(unbounded).max() == np.float16(120)
    for data, member in ((_npy(np.zeros((6, 2, 3), np.int32)), "iv.npy"), (_npz(np.zeros((6, 2, 3), np.int32)), "iv.npz")):
        with pytest.raises(SchemaError, match=f"{member}.*int8, float16 or float32"):
            decode_iv(data, where="x")
    with pytest.raises(SchemaError, match="field 'iv.npz'.*cannot decode npz"):
        decode_iv(raw["iv.npz"][:40], where="x")
    with pytest.raises(SchemaError, match="field 'iv.npz'.*one array 'iv'"):
        decode_iv(_npz(np.zeros((6, 2, 3), np.int8), other=np.zeros(2)), where="x")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npz(a: np.ndarray, **more: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, iv=a, **more)
    return buf.getvalue()


def test_w_member_errors_name_the_member():
    foa = np.zeros((4, 480), np.float32)
    v3 = encode_sample(foa, np.zeros((6, 2, 64), np.float16), _meta())
    v2 = encode_sample(foa, np.zeros((6, 2, 64), np.float16), _meta(schema_version=2))
    for sample, member in ((v3, "w.wav"), (v3, "yzx.flac"), (v2, "w.wav"), (v2, "foa.flac")):
        with pytest.raises(SchemaError, match=f"{member}.*missing member '{member}'"):
            decode_sample({k: v for k, v in sample.items() if k != member})
    stereo = io.BytesIO()
    sf.write(stereo, np.zeros((480, 2), np.float32), 48000, format="WAV", subtype="PCM_16")
    with pytest.raises(SchemaError, match="field 'w.wav'.*1 channel"):
        decode_w_wav(stereo.getvalue(), where="x")
    with pytest.raises(SchemaError, match="field 'w.wav'.*cannot decode WAV"):
        decode_w_wav(b"RIFFjunk", where="x")
    with pytest.raises(SchemaError, match="field 'yzx.flac'.*cannot decode FLAC"):
        decode_sample({**v3, "yzx.flac": b"fLaCjunk"})
    short = encode_sample(np.zeros((4, 240), np.float32), np.zeros((6, 2, 64), np.float16), _meta())
    with pytest.raises(SchemaError, match="field 'yzx.flac'.*does not match w.wav"):
        decode_sample({**v3, "yzx.flac": short["yzx.flac"]})
    with pytest.raises(SchemaError, match="field 'iv.npz'.*missing member 'iv.npz'"):
        decode_sample({k: v for k, v in v3.items() if k != "iv.npz"})
    with pytest.raises(SchemaError, match="schema_version.*not supported"):
        decode_meta(_meta(schema_version=5).to_json_bytes())


def test_stable_id_int_is_stable():
    assert stable_id_int("clip-1") == stable_id_int("clip-1") != stable_id_int("clip-2")
    assert -(2 ** 63) <= stable_id_int("x") < 2 ** 63


def test_load_config_overrides_and_errors(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Inner:
        lr: float = 1e-3
        steps: int = 10

    @dataclass
    class Outer:
        name: str = "x"
        inner: Inner = field(default_factory=Inner)

    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, p, ["inner.steps=5"])
    assert cfg.inner.lr == 0.1 and cfg.inner.steps == 5 and cfg.name == "run"
    with pytest.raises(SchemaError, match="inner.stepz"):
        load_config(Outer, p, ["inner.stepz=5"])
    with pytest.raises(SchemaError, match="inner.steps"):
        load_config(Outer, p, ["inner.steps=abc"])
    assert math.isclose(load_config(Outer).inner.lr, 1e-3)
    p.write_text("inner:\n  lr: 3e-4\n")  # YAML 1.1 reads this as a string
    assert load_config(Outer, p).inner.lr == 3e-4


def test_group_tar_members_groups_as_webdataset(tmp_path):
    """One grouping for trainer, inspect and tests: same keys and extensions as webdataset's reader."""
    import tarfile

    import webdataset as wds

    from disse.schemas.shard import group_tar_members
    names = ["__index__.json", "d/a.foa.flac", "d/a.JSON", "b.iv.npy", "b.json", "noext", "a.json"]
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(path) as tar:
        ours = [(k, sorted(g)) for k, g in group_tar_members(tar)]
    theirs = [(s["__key__"], sorted(k for k in s if not k.startswith("__")))
              for s in wds.WebDataset(str(path), shardshuffle=False, empty_check=False)]
    assert ours == theirs == [("__index__", ["json"]), ("d/a", ["foa.flac", "json"]), ("b", ["iv.npy", "json"]),
                              ("a", ["json"])]
    with tarfile.open(path, "a") as tar:
        for name in ("c.json", "c.json"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(path) as tar, pytest.raises(tarfile.ReadError, match="duplicate"):
        list(group_tar_members(tar))
