"""Streaming data: complete passes, exact resume, few shards, corrupt shards skipped and counted."""
from __future__ import annotations

import io
import itertools
import json
import tarfile

import numpy as np
import pytest
import torch

from disse.schemas import SchemaError, stable_id_int
from disse.trainer.data.loader import (DataConfig, StreamPosition, eval_loader, resolve_shards, slot_plan,
                                slot_pass_size, steps_per_epoch, train_loader)
from shardgen import write_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_shards(root, "train", [5, 7, 3])
    return root / "train"


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


@pytest.mark.parametrize("n,k", [(1, 4), (3, 4), (4, 4), (10, 4), (9, 2), (5, 1)])
def test_slot_plan_reads_every_sample_once(n, k):
    sizes = [3 + (i * 5) % 7 for i in range(n)]
    for pass_ in range(3):
        seen = []
        for slot in range(k):
            for i, stride, off in slot_plan(n, k, slot, seed=1, pass_=pass_):
                seen += [(i, j) for j in range(sizes[i]) if j % stride == off]
        assert sorted(seen) == [(i, j) for i in range(n) for j in range(sizes[i])]


def test_resolve_directory_and_brace(shard_dir):
    a = resolve_shards(str(shard_dir))
    b = resolve_shards(str(shard_dir / "train-{000000..000002}.tar"))
    assert a.urls == b.urls and a.sizes == [5, 7, 3] and a.total == 15
    assert steps_per_epoch(a, 4) == 3


def test_missing_shard_and_sizes_are_clear_errors(shard_dir, tmp_path):
    with pytest.raises(SchemaError, match="data.train.*not found"):
        resolve_shards(str(shard_dir / "train-{000000..000005}.tar"))
    (tmp_path / "x.tar").write_bytes(b"")
    with pytest.raises(SchemaError, match="sizes.json"):
        resolve_shards(str(tmp_path))


def test_batch_contract(shard_dir):
    batch = take(train_loader(resolve_shards(str(shard_dir)), DataConfig(batch_size=4, num_workers=0)), 1)[0]
    # compact on the wire: int16 PCM W and int8 features q / 127 (the model converts to float32)
    assert batch["waveform"].shape == (4, 12000) and batch["waveform"].dtype == torch.int16
    assert batch["iv"].shape == (4, 6, 26, 64) and batch["iv"].dtype == torch.int8
    assert batch["source_id"].dtype == torch.int64
    assert batch["source_id"].tolist() == [stable_id_int(s) for s in batch["source_id_str"]]
    for k in ("source_text", "space_text", "caption", "key", "descriptors", "space_id_str"):
        assert len(batch[k]) == 4
    t = batch["targets"]
    assert torch.allclose(t["direction"].norm(dim=1), torch.ones(4))
    # the W channel, not another: the writer put the sample index into W's first samples
    for key, w in zip(batch["key"], batch["waveform"]):
        assert w[0].item() * 2 ** -15 == pytest.approx(int(key.split("_")[1]) / 1000, abs=2 ** -16)
    # direction vector: azimuth 90 (left) -> +y
    for az, el, d in zip(t["azimuth_deg"].tolist(), t["elevation_deg"].tolist(), t["direction"]):
        exp = [np.cos(np.radians(el)) * np.cos(np.radians(az)), np.cos(np.radians(el)) * np.sin(np.radians(az)),
               np.sin(np.radians(el))]
        assert d.tolist() == pytest.approx(exp, abs=1e-6)


def test_more_slots_than_shards_no_hang_and_full_pass(shard_dir):
    """3 shards, 2 ranks x 2 workers: every slot is fed and pass 0 covers each sample once."""
    shards = resolve_shards(str(shard_dir))
    cfg = DataConfig(batch_size=1, num_workers=2, shuffle_buffer=4, seed=3)
    first_pass = []
    for rank in range(2):
        for b in take(train_loader(shards, cfg, rank=rank, world=2), 24):
            slot, pass_, _ = b["_position"]
            if pass_ == 0:
                first_pass += b["key"]
    assert sorted(first_pass) == sorted(f"train_{i:06d}" for i in range(15))
    assert sum(slot_pass_size(shards, 4, s, 3, 0) for s in range(4)) == 15


def test_shuffle_is_seeded_and_changes_per_pass(shard_dir):
    shards = resolve_shards(str(shard_dir))
    keys = lambda seed: [k for b in take(train_loader(shards, DataConfig(batch_size=5, num_workers=0, seed=seed,
                                                                         shuffle_buffer=6)), 6) for k in b["key"]]
    a, b, c = keys(0), keys(0), keys(1)
    assert a == b and a != c
    assert sorted(a[:15]) == sorted(a[15:30]) and a[:15] != a[15:30]  # each pass a new order


@pytest.mark.parametrize("workers,consumed", [(0, 4), (2, 3)])
def test_resume_mid_epoch_is_exact(shard_dir, workers, consumed):
    shards = resolve_shards(str(shard_dir))
    cfg = DataConfig(batch_size=2, num_workers=workers, shuffle_buffer=5, seed=7)
    full = take(train_loader(shards, cfg), consumed + 6)
    pos = StreamPosition(num_workers=max(1, workers))
    for b in full[:consumed]:
        slot, pass_, index = b["_position"]
        pos.positions[slot] = (pass_, index)
        pos.batches += 1
    pos = StreamPosition.from_dict(json.loads(json.dumps(pos.to_dict())))  # as stored in a checkpoint
    resumed = take(train_loader(shards, cfg, start=pos), 6)
    for a, b in zip(full[consumed:], resumed):
        assert a["key"] == b["key"]
        assert torch.equal(a["waveform"], b["waveform"])


def test_resume_with_other_worker_count_is_refused(shard_dir):
    with pytest.raises(SchemaError, match="num_workers"):
        train_loader(resolve_shards(str(shard_dir)), DataConfig(num_workers=2),
                     start=StreamPosition(num_workers=3))


def test_corrupt_shard_and_sample_skipped_and_counted(tmp_path):
    write_shards(tmp_path, "train", [4, 4])
    d = tmp_path / "train"
    (d / "train-000002.tar").write_bytes(b"this is not a tar file" * 100)
    good = (d / "train-000001.tar").read_bytes()
    (d / "train-000003.tar").write_bytes(good[: len(good) // 2 + 700])  # truncated mid-member
    sizes = json.loads((d / "sizes.json").read_text())
    # a shard whose two samples are bad: unreadable JSON, non-finite features
    members = {}
    with tarfile.open(d / "train-000000.tar") as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    nan_iv = io.BytesIO()
    np.savez_compressed(nan_iv, iv=np.full((6, 26, 64), np.nan, dtype=np.float16))
    bad = {"bad_a.json": b"{not json", "bad_a.iv.npz": members["train_000000.iv.npz"],
           "bad_a.w.wav": members["train_000000.w.wav"],
           "bad_b.json": members["train_000000.json"], "bad_b.iv.npz": nan_iv.getvalue(),
           "bad_b.w.wav": members["train_000000.w.wav"]}
    with tarfile.open(d / "train-000004.tar", "w") as tar:
        for name, data in bad.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sizes.update({"train-000002.tar": 4, "train-000003.tar": 4, "train-000004.tar": 2})
    (d / "sizes.json").write_text(json.dumps(sizes))
    shards = resolve_shards(str(d))
    batches = take(train_loader(shards, DataConfig(batch_size=2, num_workers=0, shuffle_buffer=1)), 8)
    errors = batches[-1]["_errors"][1]
    assert errors["bad_shards"] >= 2 and errors["bad_samples"] >= 2
    first_pass = [k for b in batches if b["_position"][1] == 0 for k in b["key"]]
    assert set(f"train_{i:06d}" for i in range(8)) <= set(first_pass)
    emb = eval_loader(shards, batch_size=3)
    keys = [k for b in emb for k in b["key"]]
    assert len(keys) >= 8 and emb.dataset.errors.counts["bad_shards"] >= 2


def test_eval_loader_sees_every_sample_once(shard_dir):
    for workers in (0, 2):
        keys = [k for b in eval_loader(str(shard_dir), batch_size=4, num_workers=workers) for k in b["key"]]
        assert sorted(keys) == [f"train_{i:06d}" for i in range(15)]


def test_older_schema_versions_still_train(tmp_path):
    """Older shards give the same batches as v4: v1 (no W member) decodes W from the 4-channel
    foa.flac, v2-v4 read w.wav; v3's iv.npy and v4's iv.npz hold the same int8 features, which
    batches carry as int8 (the model divides by 127); v1 / v2 batches stay float16."""
    from disse.trainer.model.physics import iv_to_float
    for v in (1, 2, 3, 4):
        write_shards(tmp_path / f"v{v}", "train", [5, 7, 3], schema_version=v)
    cfg = DataConfig(batch_size=5, num_workers=0, shuffle_buffer=4, seed=2)
    b1, b2, b3, b4 = (take(train_loader(resolve_shards(str(tmp_path / f"v{v}" / "train")), cfg), 3) for v in (1, 2, 3, 4))
    for x, y, z, w in zip(b1, b2, b3, b4):
        assert x["key"] == y["key"] == z["key"] == w["key"] and torch.equal(x["iv"], y["iv"])
        assert y["iv"].dtype == torch.float16 and z["iv"].dtype == w["iv"].dtype == torch.int8
        assert torch.equal(z["iv"], w["iv"])
        assert (iv_to_float(w["iv"]) - y["iv"].float()).abs().max() <= 0.5 / 127 + 1e-3
        # v1 rounds its 24-bit W to 16 bits, v2-v4 the float render: at most one step apart at ties
        assert (x["waveform"].int() - y["waveform"].int()).abs().max() <= 1
        assert torch.equal(y["waveform"], z["waveform"]) and torch.equal(z["waveform"], w["waveform"])


def test_a_batch_mixing_int8_and_float16_features_is_float16():
    """Shards of several schema versions in one data set: int8 samples are de-quantised in the batch."""
    from disse.trainer.data.loader import collate_iv
    q = np.array([[[-127, 0, 64]]] * 6, np.int8)
    f = (q.astype(np.float32) / 127).astype(np.float16)
    assert collate_iv([q, q]).dtype == torch.int8
    mixed = collate_iv([q, f])
    assert mixed.dtype == torch.float16 and torch.equal(mixed[0], mixed[1]) and mixed[0, 0, 0, 0] == -1


def test_reader_drops_the_unused_foa_flac_before_the_shuffle_buffer(shard_dir):
    """Training reads W from w.wav: the other channels (v3 / v4's yzx.flac, v2's foa.flac) must not be
    held in memory or decoded."""
    from disse.trainer.data.loader import ErrorLog, _raw_samples
    raw = list(_raw_samples(str(shard_dir / "train-000000.tar"), ErrorLog()))
    assert len(raw) == 5 and all(set(s) == {"__key__", "__url__", "w.wav", "iv.npz", "json"} for s in raw)
    v2 = write_shards(shard_dir.parent / "v2", "train", [2], schema_version=2)[0]
    raw = list(_raw_samples(str(v2), ErrorLog()))
    assert len(raw) == 2 and all("w.wav" in s and "foa.flac" not in s for s in raw)


def test_reader_skips_w_when_no_audio_is_needed(shard_dir):
    from disse.trainer.data.loader import ErrorLog, _raw_samples
    raw = list(_raw_samples(str(shard_dir / "train-000000.tar"), ErrorLog(), with_audio=False))
    assert len(raw) == 5 and all(set(s) == {"__key__", "__url__", "iv.npz", "json"} for s in raw)


def test_reused_hand_over_buffers_never_change_a_batch_already_taken(shard_dir):
    """Workers stack batches into shared memory they reuse every prefetch_factor + 2 batches; batches the
    trainer holds on to keep their contents (each W row still carries its own sample's index)."""
    cfg = DataConfig(batch_size=2, num_workers=2, shuffle_buffer=3, prefetch_factor=1, seed=1)
    loader = train_loader(resolve_shards(str(shard_dir)), cfg)
    it = iter(loader)
    batches = list(itertools.islice(it, 24))  # each worker's 3 buffers come round 4 times
    assert len(it.kept) == 6
    ptrs = {b["waveform"].data_ptr() for b in it.kept}  # the workers' buffers, kept mapped here
    assert len(ptrs) <= 6
    for b in batches:
        for key, w in zip(b["key"], b["waveform"]):
            assert w[0].item() * 2 ** -15 == pytest.approx(int(key.split("_")[1]) / 1000, abs=2 ** -16)


def test_a_corrupt_deflated_feature_member_is_a_schema_error(shard_dir):
    """iv.npz is inflated by a fast path (ISA-L) that checks the member's size and CRC-32 like zipfile."""
    from disse.schemas.shard import decode_iv
    with tarfile.open(shard_dir / "train-000000.tar") as tar:
        data = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".iv.npz"))
    good = decode_iv(data, dequantise=False)
    assert good.dtype == np.int8 and good.shape[0] == 6
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF  # inside the deflated body
    with pytest.raises(SchemaError, match="iv.npz"):
        decode_iv(bytes(bad), dequantise=False)
