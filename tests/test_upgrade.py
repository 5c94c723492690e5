"""`disse-synth upgrade`: v1 / v2 / v3 shards become v4 (16-bit FOA, W as w.wav, int8 features in a
deflated iv.npz), train on the same batches, deterministically."""
from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from disse.pipeline.cli import main as synth
from disse.pipeline.shards import read_tar_samples, write_tar_atomic
from disse.schemas.shard import decode_foa_sample, decode_iv, decode_meta
from disse.trainer.data.loader import DataConfig, resolve_shards, train_loader
from disse.trainer.model.physics import iv_to_float
from shardgen import write_shards


@pytest.fixture(params=[1, 2, 3])
def v1(request, tmp_path):
    """Old shards: schema v1 (no W member), v2 (w.wav) or v3 (iv.npy)."""
    write_shards(tmp_path / "v1", "train", [4, 3], schema_version=request.param)
    return tmp_path / "v1"


def upgrade(*args):
    return CliRunner().invoke(synth, ["upgrade", *map(str, args), "--no-progress"])


def test_upgrade_to_v4_keeps_the_foa_to_16_bits_and_the_metadata(v1, tmp_path):
    res = upgrade(v1, tmp_path / "v4")
    assert res.exit_code == 0, res.output
    assert "7 sample(s) written" in res.output and "7 upgraded to v4" in res.output
    for name in ("train-000000.tar", "train-000001.tar"):
        old = read_tar_samples(v1 / "train" / name)
        new = read_tar_samples(tmp_path / "v4" / "train" / name)
        assert [s["__key__"] for s in old] == [s["__key__"] for s in new]
        for a, b in zip(old, new):
            assert set(b) == {"__key__", "w.wav", "yzx.flac", "iv.npz", "json"}
            meta_a, meta_b = decode_meta(a["json"]), decode_meta(b["json"])
            assert (meta_a.schema_version, meta_b.schema_version) in ((1, 4), (2, 4), (3, 4))
            assert {**json.loads(a["json"]), "schema_version": 4} == json.loads(b["json"])
            foa_a, _ = decode_foa_sample(a, meta_a)
            foa_b, sr = decode_foa_sample(b, meta_b)
            assert sr == 48000 and sf.info(io.BytesIO(b["yzx.flac"])).subtype == "PCM_16"
            assert np.abs(foa_b - foa_a).max() <= 2 ** -16
            iv_a, iv_b = decode_iv(a["iv.npy"]).astype(np.float32), decode_iv(b["iv.npz"]).astype(np.float32)
            assert np.load(io.BytesIO(b["iv.npz"]))["iv"].dtype == np.int8
            assert np.abs(iv_a - iv_b).max() <= 0.5 / 127 + 1e-3
            if meta_a.schema_version == 3:  # audio members kept byte for byte, int8 values as they were
                assert (a["w.wav"], a["yzx.flac"]) == (b["w.wav"], b["yzx.flac"]) and np.array_equal(iv_a, iv_b)
            else:
                assert len(b["yzx.flac"]) < 0.6 * len(a["foa.flac"])
            assert len(b["iv.npz"]) < 0.55 * len(a["iv.npy"]) * (2 if meta_a.schema_version == 3 else 1)
    assert json.loads((tmp_path / "v4" / "train" / "sizes.json").read_text()) == {
        "train-000000.tar": 4, "train-000001.tar": 3}


def test_upgraded_shards_train_on_the_same_batches(v1, tmp_path):
    assert upgrade(v1, tmp_path / "v4").exit_code == 0
    cfg = DataConfig(batch_size=3, num_workers=0, shuffle_buffer=3, seed=5)
    old = list(itertools.islice(iter(train_loader(resolve_shards(str(v1 / "train")), cfg)), 4))
    new = list(itertools.islice(iter(train_loader(resolve_shards(str(tmp_path / "v4" / "train")), cfg)), 4))
    for a, b in zip(old, new):
        assert a["key"] == b["key"]
        # both round W to 16 bits: from 24-bit FLAC (v1, v4) or from the float render (v2, v3)
        assert (a["waveform"].int() - b["waveform"].int()).abs().max() <= 1
        assert (iv_to_float(a["iv"]) - iv_to_float(b["iv"])).abs().max() <= 0.5 / 127 + 1e-3


def test_upgrade_is_deterministic_and_v4_is_copied_unchanged(v1, tmp_path):
    assert upgrade(v1, tmp_path / "a").exit_code == 0
    assert upgrade(v1, tmp_path / "b", "--workers", "2").exit_code == 0  # same bytes from a process pool
    again = upgrade(tmp_path / "a", tmp_path / "c")
    assert again.exit_code == 0 and "0 upgraded to v4, 7 already v4" in again.output
    for name in ("train-000000.tar", "train-000001.tar"):
        a = (tmp_path / "a" / "train" / name).read_bytes()
        assert a == (tmp_path / "b" / "train" / name).read_bytes()
        assert read_tar_samples(tmp_path / "a" / "train" / name) == read_tar_samples(tmp_path / "c" / "train" / name)


def test_bad_samples_are_left_out_and_counted(v1, tmp_path):
    path = v1 / "train" / "train-000001.tar"
    samples = read_tar_samples(path)
    member, reason = ("iv.npy", "cannot decode npy") if "yzx.flac" in samples[1] else ("foa.flac", "cannot decode FLAC")
    samples[1][member] = b"not a " + member.encode()
    write_tar_atomic(path, samples)
    res = upgrade(v1, tmp_path / "v4")
    assert res.exit_code == 1
    assert f"left out: {path}:{samples[1]['__key__']}, field '{member}': {reason}" in res.output
    assert json.loads((tmp_path / "v4" / "train" / "sizes.json").read_text())["train-000001.tar"] == 2


def test_clear_errors(v1, tmp_path):
    res = upgrade(v1, v1 / "inside")
    assert res.exit_code == 2 and "error:" in res.output and "must not be the source" in res.output
    (tmp_path / "empty").mkdir()
    res = upgrade(tmp_path / "empty", tmp_path / "out")
    assert res.exit_code == 2 and "no shards" in res.output
    (v1 / "train" / "train-000002.tar").write_bytes(b"garbage" * 100)
    res = upgrade(v1, tmp_path / "out2")
    assert res.exit_code == 2 and "train-000002.tar" in res.output and "cannot read tar" in res.output
