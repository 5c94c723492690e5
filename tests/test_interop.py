"""Reading the shards elsewhere: the plain-webdataset recipe of docs/synthesis.md ("Reading the shards
without disse"), on real tar shards of schema v4, v3 and v2, and Hugging Face ``datasets`` where installed.

The recipe functions below are copied verbatim into the docs: keep them in step."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from disse.schemas import decode_sample
from shardgen import write_shards


# --- the recipe (docs/synthesis.md) --------------------------------------------------------------
def audio_handler(key: str, data: bytes):
    """webdataset decoder for .wav / .flac members: (float32 array (channels, T) in +-1, sample rate)."""
    if key.rsplit(".", 1)[-1] not in ("wav", "flac"):
        return None
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x.T, sr


def to_foa(sample: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """-> (FOA (4, T) float32 AmbiX W, Y, Z, X; iv (6, frames, mels) float32; metadata dict)."""
    if "yzx.flac" in sample:                     # schema 3, 4: W and Y, Z, X in two members
        (w, sr), (yzx, _) = sample["w.wav"], sample["yzx.flac"]
        foa = np.concatenate([w, yzx])
    else:                                        # schema 1, 2: one 4-channel FLAC
        foa, sr = sample["foa.flac"]
    iv = sample["iv.npz"]["iv"] if "iv.npz" in sample else sample["iv.npy"]  # schema 4: deflated .npz
    iv = iv / np.float32(127) if iv.dtype == np.int8 else iv.astype(np.float32)  # int8 (3, 4): q / 127
    return foa, iv, sample["json"]
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[4, 3, 2])
def shards(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"v{request.param}")
    write_shards(root, "train", [3, 2], schema_version=request.param)
    return sorted(str(p) for p in (root / "train").glob("*.tar"))


def test_plain_webdataset_recipe_reads_what_disse_reads(shards):
    ours = {}
    for s in wds.WebDataset(shards, shardshuffle=False):  # raw bytes: disse's own decoder
        foa, iv, meta = decode_sample(s)
        ours[s["__key__"]] = (foa, iv.astype(np.float32), meta)
    plain = wds.WebDataset(shards, shardshuffle=False).decode(audio_handler).map(to_foa)
    n = 0
    for foa, iv, meta in plain:
        ref_foa, ref_iv, ref_meta = ours[meta["key"]]
        assert foa.shape == ref_foa.shape and foa.dtype == np.float32
        assert np.array_equal(foa, ref_foa)
        np.testing.assert_allclose(iv, ref_iv, atol=1e-3)
        assert meta["schema_version"] == ref_meta.schema_version and meta["caption"] == ref_meta.caption
        n += 1
    assert n == 5


# --- the Hugging Face recipe (docs/synthesis.md): rows of raw member bytes, decoded lazily ---------
def raw_rows(urls):
    """One row per sample: the member bytes as they are in the tar (nothing decoded)."""
    for s in wds.WebDataset(urls, shardshuffle=False):
        yield {"key": s["__key__"], "json": s["json"].decode("utf-8"),
               "w_wav": s["w.wav"], "yzx_flac": s["yzx.flac"], "iv": s.get("iv.npz") or s["iv.npy"]}


def decode_rows(batch):
    """Lazy decoding (with_transform): FOA (4, T) float32 AmbiX W, Y, Z, X; iv float32."""
    out = {"key": batch["key"], "json": batch["json"], "foa": [], "iv": []}
    for w, yzx, iv in zip(batch["w_wav"], batch["yzx_flac"], batch["iv"]):
        w = sf.read(io.BytesIO(w), dtype="float32", always_2d=True)[0].T
        yzx = sf.read(io.BytesIO(yzx), dtype="float32", always_2d=True)[0].T
        out["foa"].append(np.concatenate([w, yzx]))
        q = np.load(io.BytesIO(iv), allow_pickle=False)   # .npz (schema 4) or .npy (3)
        q = q["iv"] if isinstance(q, np.lib.npyio.NpzFile) else q
        out["iv"].append(q / np.float32(127) if q.dtype == np.int8 else q.astype(np.float32))
    return out
# ------------------------------------------------------------------------------------------------


def test_hugging_face_datasets_recipe(shards):
    """Runs where ``datasets`` is installed (not in the dev environment: laion-clap pins numpy < 2 and
    pyarrow >= 18 needs numpy >= 2; checked by hand in a venv with datasets 5.2.0, pyarrow 26.0.1,
    numpy 2.4.6)."""
    datasets = pytest.importorskip("datasets")
    if "yzx.flac" not in next(iter(wds.WebDataset(shards, shardshuffle=False))):
        pytest.skip("the recipe is for schema versions 3 and 4")
    ds = datasets.Dataset.from_generator(raw_rows, gen_kwargs={"urls": shards}).with_transform(decode_rows)
    assert len(ds) == 5
    ours = {s["__key__"]: decode_sample(s) for s in wds.WebDataset(shards, shardshuffle=False)}
    for i in range(len(ds)):
        row = ds[i]
        foa, iv, meta = ours[row["key"]]
        assert np.array_equal(np.asarray(row["foa"]), foa)
        np.testing.assert_allclose(np.asarray(row["iv"]), iv.astype(np.float32), atol=1e-3)
