"""disse-eval --metrics official|both and the release's .npz layout, end to end through the CLI."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from disse.trainer.cli.eval import main
from disse.trainer.evaluation.official_metrics import evaluate_official, load_npz, save_npz


def _grid(n_src=6, n_spa=5, seed=0, modalities=("audio", "text")):
    rng = np.random.default_rng(seed)
    src = np.repeat([f"{100 + i}" for i in range(n_src)], n_spa)
    spa = np.tile([f"auto_{j:06d}" for j in range(n_spa)], n_src)
    ps, pp = rng.normal(size=(n_src, 8)), rng.normal(size=(n_spa, 8))
    si, pi = np.repeat(np.arange(n_src), n_spa), np.tile(np.arange(n_spa), n_src)
    d = {"source_id": src, "spatial_id": spa}
    for m in modalities:
        d[f"{m}_source"] = ps[si] + 0.3 * rng.normal(size=(len(si), 8))
        d[f"{m}_spatial"] = pp[pi] + 0.3 * rng.normal(size=(len(si), 8))
    return d


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_official_only_on_a_release_npz(tmp_path):
    d = _grid()
    save_npz(tmp_path / "emb.npz", d)
    res = run(["--embeddings", tmp_path / "emb.npz", "--metrics", "official", "--out", tmp_path / "out"])
    assert res.exit_code == 0, res.output
    nested = json.loads((tmp_path / "out" / "official_metrics.json").read_text())
    assert set(nested) == {"iidr", "cross_modal", "intra_modal"}
    assert set(nested["cross_modal"]) == {"on_task_source", "on_task_spatial", "off_task_source",
                                          "off_task_spatial", "both"}
    ref = evaluate_official(load_npz(tmp_path / "emb.npz"))
    assert nested["iidr"]["audio_source"]["IIDR_source"] == ref["iidr"]["audio_source"]["IIDR_source"]
    flat = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert flat and all(k.startswith("official/") for k in flat)
    assert flat["official/cross_modal/both/text_to_audio/queries"] == 30
    assert "official/iidr/audio_source/IIDR_source" in res.output


def test_audio_only_release_npz_gets_iidr_and_intra_modal(tmp_path):
    save_npz(tmp_path / "a.npz", _grid(modalities=("audio",)))
    res = run(["--embeddings", tmp_path / "a.npz", "--metrics", "official", "--out", tmp_path / "o"])
    assert res.exit_code == 0, res.output
    nested = json.loads((tmp_path / "o" / "official_metrics.json").read_text())
    assert "cross_modal" not in nested and set(nested["intra_modal"]) == {"audio"}
    res = run(["--embeddings", tmp_path / "a.npz", "--out", tmp_path / "p"])  # project metrics need four
    assert res.exit_code == 2 and "--metrics official" in res.output


def test_both_beside_project_metrics_and_official_npz_written(tmp_path):
    d = _grid()
    save_npz(tmp_path / "emb.npz", d)
    res = run(["--embeddings", tmp_path / "emb.npz", "--metrics", "both", "--out", tmp_path / "out", "--no-plots",
               "--save-official-embeddings", tmp_path / "again.npz", "--save-embeddings", tmp_path / "project.npz"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert "SRC/t2a/R@1" in m and "official/cross_modal/on_task_source/text_to_audio/R@1" in m
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## The DISSE release's metrics" in report and "| both | text → audio |" in report
    assert "| audio_spatial |" in report
    again = load_npz(tmp_path / "again.npz")
    np.testing.assert_array_equal(again["spatial_id"], d["spatial_id"])
    np.testing.assert_allclose(again["audio_spatial"], d["audio_spatial"], rtol=1e-6)
    # this project's layout read back gives the same official figures
    res2 = run(["--embeddings", tmp_path / "project.npz", "--metrics", "official", "--out", tmp_path / "out2"])
    assert res2.exit_code == 0, res2.output
    a = json.loads((tmp_path / "out" / "official_metrics.json").read_text())
    b = json.loads((tmp_path / "out2" / "official_metrics.json").read_text())
    assert a["cross_modal"]["both"] == b["cross_modal"]["both"]


def test_descriptor_labels_with_the_official_rules():
    from disse.schemas import load_caption_rules
    from disse.trainer.evaluation.evaluate import Embeddings

    e = np.eye(3, dtype=np.float32)
    emb = Embeddings(e, e, e, e, np.array(["a", "b", "c"]), np.array(["x", "y", "z"]),
                     physical={"true_azimuth_deg": np.array([90.0, 45.0, -90.0]),
                               "true_elevation_deg": np.zeros(3)})
    assert emb.descriptor_labels("direction", load_caption_rules("official")).tolist() == ["right", "none", "left"]
    assert emb.descriptor_labels("direction", load_caption_rules()).tolist() == ["left", "front-left", "right"]
