"""Short, unique display labels for ids (schemas/display.py) and the report's plot legend that uses them."""
from __future__ import annotations

import numpy as np
import pytest

from disse.schemas.display import display_labels
from disse.trainer.evaluation import report
from disse.trainer.evaluation.embeddings import Embeddings

FREEDESKTOP = ["/usr/share/sounds/freedesktop/stereo/bell.oga",
               "/usr/share/sounds/freedesktop/stereo/complete.oga",
               "/usr/share/sounds/freedesktop/stereo/camera-shutter.oga"]


def test_absolute_paths_sharing_a_long_prefix_get_short_distinct_labels():
    assert display_labels(FREEDESKTOP) == ["bell", "complete", "camera-shutter"]
    # equal ids, equal labels; the order of the ids does not change any label
    assert display_labels(FREEDESKTOP[::-1] + FREEDESKTOP[:1]) == ["camera-shutter", "complete", "bell", "bell"]
    # only what all ids share is dropped: sub-folders and differing extensions stay
    assert display_labels(["/d/a/x.wav", "/d/b/x.wav", "/d/c.flac"]) == ["a/x.wav", "b/x.wav", "c.flac"]
    assert display_labels(["clip1", "clip2"]) == ["clip1", "clip2"]  # plain ids unchanged
    assert display_labels([FREEDESKTOP[0]]) == ["bell"]
    assert display_labels([]) == []


def test_long_labels_stay_distinct_within_the_width():
    long = [f"/data/clotho/development/a long recording name {m} that goes on and on.wav" for m in ("xx", "yy")]
    labels = display_labels(long, max_len=20)
    assert len(set(labels)) == 2 and all(len(x) <= 20 for x in labels)
    # the difference is in the cut-out middle: a stable hash suffix tells them apart
    assert all("~" in x for x in labels)
    assert display_labels(long, max_len=20) == labels
    ends = display_labels([f"/data/{'a' * 40}{i}.wav" for i in range(3)], max_len=20)
    assert len(set(ends)) == 3 and all(len(x) <= 20 and x.startswith("aaa") and "…" in x for x in ends)


def test_plot_legend_shows_path_ids_distinct(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    n = 24
    src = np.array(FREEDESKTOP * (n // 3))
    space = np.array(["left|near", "right|far"] * (n // 2))
    emb = Embeddings(*(rng.normal(size=(n, d)).astype(np.float32) for d in (8, 4, 8, 4)), src, space)
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    report.plot_projections(emb, None, tmp_path / "p.png", "source")
    assert (tmp_path / "p.png").stat().st_size > 0
    legends = {ax.get_legend().get_title().get_text(): [t.get_text() for t in ax.get_legend().get_texts()]
               for ax in figures[0].axes if ax.get_legend() is not None}
    assert sorted(legends["source_id"]) == ["bell", "camera-shutter", "complete"]
    assert sorted(legends["space_id"]) == ["left|near", "right|far"]
    # the ids themselves are untouched
    assert list(emb.source_id) == list(src)


@pytest.mark.parametrize("ids", [["a", "a", "b"], ["x/1.wav", "x/2.wav", "y/1.wav"], ["", "a"]])
def test_labels_are_one_to_one_with_distinct_ids(ids):
    labels = display_labels(ids)
    assert len(labels) == len(ids)
    assert len(set(labels)) == len(set(ids)) and all(labels)
