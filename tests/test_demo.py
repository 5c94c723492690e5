"""The embedded demo: distinct honest sounds, splits disjoint, sources in several spaces and
spaces with several sources, rooms spanning the rule table's bins, re-runs that redo nothing."""
from __future__ import annotations

import json
import re
from collections import defaultdict

import numpy as np
import pytest
import soundfile as sf

from disse.pipeline.demo import ROOM_GRID, SOUND_TYPES, DemoConfig, make_clip, room_cell, room_splits, run_demo
from disse.pipeline.features import mel_filterbank, stft
from disse.pipeline.shards import read_tar_samples
from disse.schemas import decode_sample, load_caption_rules, load_feature_params


def _metas(root):
    out = []
    for tar in sorted(root.glob("*/*.tar")):
        for raw in read_tar_samples(tar):
            out.append(decode_sample(raw, audio=False)[2])
    return out


def _room(meta) -> str:
    return meta.rir_id.split("_p")[0]


def test_demo_rir_bank_holds_out_whole_rooms(demo_shards):
    import pandas as pd

    rirs = pd.read_csv(demo_shards / "inputs" / "rirs" / "rirs.csv")
    assert rirs.groupby("room_index")["split"].nunique().max() == 1
    assert set(rirs.split) == {"train", "val", "test"}


def test_default_demo_rooms_cross_size_reverberation_and_distance_evenly_in_every_split():
    """The default bank's rooms walk all 36 size x reverberation x distance cells the same number of
    times in each split: every distance class is as common as the others, and none of the three
    descriptors tells another (on the rule table's labels of each cell's ranges)."""
    rules = load_caption_rules()

    def labels(cell):
        (a_lo, a_hi), (t_lo, t_hi), (d_lo, d_hi) = ROOM_GRID[cell]
        return tuple(rules.attributes[name].label_of(v) for name, v in (
            ("room_size", (a_lo + a_hi) / 2), ("reverberation", 1000 * (t_lo + t_hi) / 2),
            ("distance", float(np.sqrt(d_lo * d_hi)))))
    assert len({labels(c) for c in range(len(ROOM_GRID))}) == len(ROOM_GRID) == 3 * 4 * 3
    for lo, hi in {g[2] for g in ROOM_GRID}:  # each distance range lies inside one rule bin
        assert rules.attributes["distance"].label_of(lo * 1.001) == rules.attributes["distance"].label_of(hi * 0.999)
    splits = room_splits(DemoConfig().rooms)
    for split, times in (("train", 5), ("val", 1), ("test", 2)):
        cells = [room_cell(r, splits) for r in range(len(splits)) if splits[r] == split]
        assert np.bincount(cells, minlength=len(ROOM_GRID)).tolist() == [times] * len(ROOM_GRID), split


def test_demo_splits_pairs_and_spaces(demo_shards):
    metas = _metas(demo_shards)
    manifest = json.loads((demo_shards / "manifest.json").read_text())
    assert manifest["complete"] and len(metas) == manifest["rendered_samples"] == 48
    by_split = defaultdict(list)
    for m in metas:
        by_split[m.split].append(m)
    assert set(by_split) == {"train", "val", "test"}
    types = {s.name for s in SOUND_TYPES[:8]}
    for split, ms in by_split.items():
        assert {m.source_id.rsplit("_v", 1)[0] for m in ms} == types  # every type in every split
        spaces_of, sources_of = defaultdict(set), defaultdict(set)
        for m in ms:
            spaces_of[m.source_id].add(m.rir_id)
            sources_of[m.rir_id].add(m.source_id)
        assert min(len(v) for v in spaces_of.values()) >= 2   # each source in several spaces
        assert min(len(v) for v in sources_of.values()) >= 2  # each space holds several sources
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not {m.source_id for m in by_split[a]} & {m.source_id for m in by_split[b]}
        assert not {m.rir_id for m in by_split[a]} & {m.rir_id for m in by_split[b]}
        # whole rooms are held out: no room has positions in two splits
        assert not {_room(m) for m in by_split[a]} & {_room(m) for m in by_split[b]}
    # 4 rooms from the size x reverberation grid: every reverberation bin, every room size
    assert {m.descriptors["reverberation"] for m in metas} == {
        "dampened", "slightly-reverberant", "reverberant", "highly-reverberant"}
    assert {m.descriptors["room_size"] for m in metas} == {"small", "medium", "large"}
    assert len({m.descriptors["direction"] for m in metas}) >= 5


def test_demo_foa_decodes(demo_shards):
    raw = read_tar_samples(sorted((demo_shards / "val").glob("*.tar"))[0])[0]
    foa, iv, meta = decode_sample(raw)
    assert foa.shape == (4, 480000) and iv.shape == (6, 1001, 64)
    assert meta.source_caption.rstrip(".").lower() in meta.caption.lower()


def test_demo_captions_are_the_type_captions(demo_shards):
    patterns = {s.name: [re.compile("^" + re.sub(r"\\\{\w+\\\}", r"[\\w-]+", re.escape(c)) + "$")
                         for c in s.captions] for s in SOUND_TYPES}
    for m in _metas(demo_shards):
        kind = m.source_id.rsplit("_v", 1)[0]
        assert any(p.match(m.source_caption) for p in patterns[kind]), (kind, m.source_caption)


def test_demo_sine_pitch_word_is_honest(demo_shards):
    params = load_feature_params()
    for v in range(3):
        x, sr = sf.read(demo_shards / "inputs" / "dry" / f"sine_v{v}.flac")
        f = np.argmax(np.abs(np.fft.rfft(x))) * sr / len(x)
        caption = next(m.source_caption for m in _metas(demo_shards) if m.source_id == f"sine_v{v}")
        word = "low" if f < 250 else "mid-range" if f < 1000 else "high"
        assert word in caption, (f, caption)
    assert params.sample_rate == sr


def test_sound_types_are_distinct():
    """Summary statistics of the log-mel spectrogram differ between every pair of types."""
    params = load_feature_params()
    fb = mel_filterbank(params)
    stats = []
    for sound in SOUND_TYPES:
        x, caption = make_clip(sound, 1, 4, seed=0)
        assert np.isfinite(x).all() and abs(np.abs(x).max() - 0.5) < 1e-6 and caption
        logmel = 10 * np.log10(np.abs(stft(x[None], params)[0]) ** 2 @ fb + 1e-6)
        stats.append(np.concatenate([logmel.mean(0), logmel.std(0)]))
    v = np.array(stats)
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert len(SOUND_TYPES) >= 30 and d.min() > 5.0


def test_demo_rerun_redoes_nothing(demo_shards):
    tars = sorted(demo_shards.glob("*/*.tar"))
    before = {t: t.stat().st_mtime_ns for t in tars}
    cfg = DemoConfig(types=8, clips_per_type=3, rooms=4, positions_per_room=3, rirs_per_clip=2,
                     clips_per_rir=2, shard_size=4, seed=0)
    manifest = run_demo(demo_shards, cfg, workers=1, progress=False)
    assert manifest["complete"]
    assert {t: t.stat().st_mtime_ns for t in tars} == before


@pytest.mark.parametrize("bad", [{"clips_per_type": 2}, {"rooms": 2}])
def test_demo_rejects_sizes_without_val_and_test(tmp_path, bad):
    cfg = DemoConfig(**{**DemoConfig(types=1, rooms=3).__dict__, **bad})
    with pytest.raises(ValueError):
        run_demo(tmp_path / "d", cfg, progress=False)
