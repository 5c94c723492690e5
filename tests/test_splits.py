"""Held out means unseen: rooms and recordings never cross splits; the split seed is its own."""
from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from disse.pipeline.render import RenderOptions, make_plan, plan_from_files
from disse.pipeline.splits import assign_group_splits
from disse.schemas import SchemaError, load_caption_rules, load_feature_params
from disse.schemas.records import DryClip, RirRecord


def _rirs(rooms: int, positions: int, with_room: bool = True) -> list[RirRecord]:
    out = []
    for r in range(rooms):
        for p in range(positions):
            extra = {"room_index": str(r)} if with_room else {}
            out.append(RirRecord(f"r{r}_p{p}", Path(f"r{r}_p{p}.flac"), 10.0 * p, 0.0, 1.5, 50.0, 400.0,
                                 extra=extra))
    return out


def _clips(recordings: int, captions_per_recording: int) -> list[DryClip]:
    return [DryClip(f"cap{i}_{k}", f"caption {k} of recording {i}", Path(f"rec{i}.wav"), source_id=f"rec{i}")
            for i in range(recordings) for k in range(captions_per_recording)]


def _plan(clips, rirs, **options):
    return make_plan(clips, rirs, RenderOptions(rirs_per_clip=2, clips_per_rir=2, **options),
                     load_feature_params(), load_caption_rules())


def _splits_of(plan) -> tuple[dict, dict]:
    """group -> set of splits, for recordings and for rooms."""
    rec, room = defaultdict(set), defaultdict(set)
    for task in plan.shards:
        for spec in task.samples:
            rec[spec.clip.source_id].add(spec.split)
            room[spec.rir.extra.get("room_index", spec.rir.rir_id)].add(spec.split)
    return rec, room


@pytest.mark.parametrize("split_seed", [0, 1, 7])
def test_no_room_and_no_recording_in_two_splits(split_seed):
    plan = _plan(_clips(60, 5), _rirs(40, 6), split_seed=split_seed, val_fraction=0.2, test_fraction=0.2)
    rec, room = _splits_of(plan)
    assert max(len(s) for s in rec.values()) == 1, "a recording's caption rows crossed splits"
    assert max(len(s) for s in room.values()) == 1, "a room's positions crossed splits"
    used = {s for ss in room.values() for s in ss}
    assert used == {"train", "val", "test"}
    # every caption row of a recording was planned under that recording's id
    for task in plan.shards:
        for spec in task.samples:
            assert spec.clip.source_id == spec.clip.path.stem


def test_render_seed_never_moves_an_item_between_splits():
    clips, rirs = _clips(50, 2), _rirs(30, 4)

    def assignment(plan):
        return {(s.clip.audiocap_id, s.rir.rir_id): s.split for t in plan.shards for s in t.samples}

    def item_splits(plan):
        out = {}
        for t in plan.shards:
            for s in t.samples:
                out[s.clip.audiocap_id] = s.split
                out[s.rir.rir_id] = s.split
        return out

    a, b = _plan(clips, rirs, seed=0), _plan(clips, rirs, seed=12345)
    assert item_splits(a) == item_splits(b)
    assert assignment(a) != assignment(b)  # the seed still changes the pairing (it is not ignored)
    c = _plan(clips, rirs, seed=0, split_seed=3)
    assert item_splits(c) != item_splits(a)  # the split seed is what moves them


def test_without_room_column_each_rir_is_its_own_group(tmp_path):
    rirs = _rirs(5, 4, with_room=False)
    plan = _plan(_clips(20, 1), rirs)
    _, room = _splits_of(plan)
    assert len(room) == 20  # grouped by rir_id


def test_conflicting_split_column_in_one_group_is_an_error():
    with pytest.raises(SchemaError, match="room group 'A'.*two splits"):
        assign_group_splits({"a1": "A", "a2": "A", "b1": "B"}, 0.1, 0.1, 0,
                            {"a1": "train", "a2": "test"}, kind="room")


def test_one_explicit_split_moves_the_whole_group():
    out = assign_group_splits({"a1": "A", "a2": "A", "b1": "B"}, 0.1, 0.1, 0, {"a1": "test"})
    assert out["a1"] == out["a2"] == "test"


def _write_inputs(tmp_path: Path, with_room: bool = True) -> tuple[Path, Path]:
    clips = tmp_path / "clips.csv"
    rows = ["audiocap_id,caption,path"] + [f"c{i}_{k},caption {k},rec{i}.wav" for i in range(30) for k in range(3)]
    clips.write_text("\n".join(rows) + "\n")
    rirs = tmp_path / "rirs.csv"
    head = "rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms" + (",room_index" if with_room else "")
    rows = [head] + [f"r{r}_{p}.flac,{10 * p},0,1.5,50,400" + (f",{r}" if with_room else "")
                     for r in range(20) for p in range(4)]
    rirs.write_text("\n".join(rows) + "\n")
    return clips, rirs


def test_recording_id_comes_from_the_path_column(tmp_path):
    clips_csv, rirs_csv = _write_inputs(tmp_path)
    plan = plan_from_files(clips_csv, rirs_csv, RenderOptions(rirs_per_clip=2, clips_per_rir=2))
    rec, room = _splits_of(plan)
    assert set(rec) == {f"rec{i}" for i in range(30)}
    assert max(len(s) for s in rec.values()) == 1 and max(len(s) for s in room.values()) == 1
    assert plan.inputs["rir_split_groups"] == "room (room_index)"


def test_cli_warns_without_room_column(tmp_path):
    clips_csv, rirs_csv = _write_inputs(tmp_path, with_room=False)
    res = subprocess.run([sys.executable, "-m", "disse.pipeline.cli", "render", "--clips", str(clips_csv),
                          "--rirs", str(rirs_csv), "--out", str(tmp_path / "out"), "--plan-only"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "no 'room_index' column" in res.stderr
