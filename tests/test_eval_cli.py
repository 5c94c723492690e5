"""disse-eval end to end: --embeddings, --compare, bad input, and --checkpoint on real shards."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from disse.schemas import load_caption_rules
from disse.trainer.evaluation import metrics as M
from disse.trainer.cli.eval import main
from disse.trainer.evaluation.evaluate import Embeddings, evaluate_embeddings


def make_npz(path, n=240, seed=0, quality=1.0):
    """Embeddings of a partly learned model with every optional array (physical, descriptors, prompts)."""
    rng = np.random.default_rng(seed)
    rules = load_caption_rules()
    src = np.arange(n) // 4
    az, el = rng.uniform(-180, 180, n), rng.uniform(-70, 70, n)
    dist, area, t30 = rng.uniform(0.5, 4, n), rng.uniform(20, 200, n), rng.uniform(100, 1500, n)
    desc = {a: np.array([rules.attributes[a].label_of(v) for v in vals])
            for a, vals in (("direction", az), ("elevation", el), ("distance", dist), ("room_size", area),
                            ("reverberation", t30))}
    space = np.array(["|".join(desc[a][i] for a in rules.space_id_order) for i in range(n)])
    _, spa_code = np.unique(space, return_inverse=True)
    p_src, p_spa = rng.normal(size=(src.max() + 1, 32)), rng.normal(size=(spa_code.max() + 1, 16))

    def noisy(p, ids):
        return (quality * p[ids] + rng.normal(size=(n, p.shape[1]))).astype(np.float32)

    prompts = {a: (np.array(rules.attributes[a].labels), rng.normal(size=(len(rules.attributes[a].labels), 16))
                   .astype(np.float32)) for a in rules.attributes}
    emb = Embeddings(noisy(p_src, src), noisy(p_spa, spa_code), noisy(p_src, src), noisy(p_spa, spa_code),
                     np.array([f"clip{i}" for i in src]), space,
                     physical={"true_azimuth_deg": az, "true_elevation_deg": el, "true_distance_m": dist,
                               "true_area_m2": area, "true_t30_ms": t30,
                               "pred_direction": M.direction_from_angles(az + rng.normal(0, 15, n), el),
                               "iv_direction": M.direction_from_angles(az + rng.normal(0, 35, n),
                                                                       el + rng.normal(0, 10, n)),
                               "pred_distance_m": dist + rng.normal(0, 0.3, n),
                               "pred_area_m2": area + rng.normal(0, 20, n), "pred_t30_ms": t30 + rng.normal(0, 100, n)},
                     descriptors=desc, prompts=prompts, keys=np.array([f"k{i:05d}" for i in range(n)]))
    emb.save(path)
    return emb


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    emb = make_npz(d / "emb.npz")
    res = run(["--embeddings", d / "emb.npz", "--out", d / "out", "--chunk-size", "50"])
    return d, emb, res


def test_embeddings_path_writes_report_metrics_and_plots(scored):
    d, emb, res = scored
    assert res.exit_code == 0, res.output + res.stderr
    out = d / "out"
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["format"] == "disse-eval metrics" and doc["meta"]["embeddings"].endswith("emb.npz")
    m = doc["metrics"]
    # the file holds exactly what evaluate_embeddings computes (same function as the trainer's validation)
    ref = evaluate_embeddings(emb, load_caption_rules(), chunk_size=50)
    assert m.keys() == ref.keys()
    assert all(m[k] == pytest.approx(v) for k, v in ref.items())
    for task in ("SRC", "SPA", "X-SRC", "X-SPA"):
        for d_ in ("t2a", "a2t"):
            for k in ("R@1", "R@5", "R@10", "mAP@10"):
                assert 0.0 <= m[f"{task}/{d_}/{k}/chance"] <= m[f"{task}/{d_}/R@10/chance"] + 1e-12 or k == "R@10"
    assert m["SRC/t2a/R@1"] > 3 * m["SRC/t2a/R@1/chance"]  # the embeddings carry source identity
    assert 5 < m["phys/direction_err_deg/mean"] < 30
    # the physics baseline on the same items, and how the model compares with it
    assert m["phys/direction_err_deg/mean"] < m["phys/direction_err_deg/iv_baseline/mean"] < 60
    assert m["phys/direction_err_deg/vs_iv_baseline"] == pytest.approx(
        m["phys/direction_err_deg/mean"] / m["phys/direction_err_deg/iv_baseline/mean"])
    # audio-side leakage checks, with their chance levels
    for task in ("AX-SRC", "AX-SPA"):
        for k in ("R@1", "R@5", "R@10", "mAP@10"):
            assert 0.0 <= m[f"{task}/a2a/{k}/chance"] <= 1.0 and f"{task}/a2a/{k}" in m
    assert {f"zeroshot/{a}/acc" for a in ("direction", "elevation", "distance", "room_size", "reverberation")} <= m.keys()
    report = (out / "report.md").read_text()
    for needle in ("Retrieval", "X-SRC", "IR_space", "direction error", "Zero-shot", "projection_spatial.png",
                   "direction_error.png", "(chance)", "Leakage checks", "| AX-SRC | a2a |", "| AX-SPA | a2a |"):
        assert needle in report, needle
    # the baseline row sits right under the learned one, with its own chance level
    lines = report.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("| direction error, mean — model |"))
    assert lines[i + 1].startswith("| direction error, mean — IV baseline (physics) | "
                                   f"{m['phys/direction_err_deg/iv_baseline/mean']:.1f} | ° | 90.0 |")
    assert any(ln.startswith("| direction error, model mean / IV baseline mean | ") for ln in lines)
    # X- and AX- checks share the leakage table, after the SRC / SPA table
    leak = report.index("## Leakage checks")
    assert report.index("| X-SRC | t2a |") > leak and report.index("| AX-SRC | a2a |") > leak
    assert report.index("| SRC | t2a |") < leak
    for png in ("projection_spatial.png", "projection_source.png", "direction_error.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert "SRC t2a R@1" in res.output and "report.md" in res.output
    assert "AX-SRC a2a R@1" in res.output and "IV baseline (physics) mean" in res.output


def test_compare_prints_two_runs_side_by_side(scored, tmp_path):
    d, _, _ = scored
    make_npz(tmp_path / "worse.npz", quality=0.3)
    res = run(["--embeddings", tmp_path / "worse.npz", "--out", tmp_path / "worse", "--no-plots"])
    assert res.exit_code == 0, res.stderr
    assert not list((tmp_path / "worse").glob("*.png"))
    res = run(["--compare", d / "out" / "metrics.json", tmp_path / "worse" / "metrics.json"])
    assert res.exit_code == 0, res.stderr
    a = json.loads((d / "out" / "metrics.json").read_text())["metrics"]
    b = json.loads((tmp_path / "worse" / "metrics.json").read_text())["metrics"]
    line = next(ln for ln in res.output.splitlines() if ln.startswith("SRC/t2a/R@1 "))
    cols = line.split()
    assert float(cols[1]) == pytest.approx(a["SRC/t2a/R@1"], abs=5e-4)
    assert float(cols[2]) == pytest.approx(b["SRC/t2a/R@1"], abs=5e-4)
    assert float(cols[3]) == pytest.approx(b["SRC/t2a/R@1"] - a["SRC/t2a/R@1"], abs=1e-3)
    assert float(cols[3]) < 0  # the noisier embeddings retrieve worse
    # new keys are listed generically, with their chance levels
    for key in ("AX-SRC/a2a/R@1", "AX-SPA/a2a/mAP@10", "phys/direction_err_deg/iv_baseline/mean"):
        cols = next(ln for ln in res.output.splitlines() if ln.startswith(key + " ")).split()
        assert float(cols[1]) == pytest.approx(a[key], abs=5e-4) and float(cols[-1]) == pytest.approx(
            a[f"{key}/chance"], abs=5e-4), key
    assert any(ln.startswith("phys/direction_err_deg/vs_iv_baseline ") for ln in res.output.splitlines())


def test_save_embeddings_roundtrip(scored, tmp_path):
    d, emb, _ = scored
    res = run(["--embeddings", d / "emb.npz", "--out", tmp_path / "o", "--no-plots",
               "--save-embeddings", tmp_path / "again.npz"])
    assert res.exit_code == 0, res.stderr
    back = Embeddings.load(tmp_path / "again.npz")
    np.testing.assert_array_equal(back.audio_space, emb.audio_space)
    np.testing.assert_array_equal(back.space_id, emb.space_id)


def test_older_npz_without_iv_direction(scored, tmp_path):
    """Files written before the physics baseline existed score as before, without its keys and rows."""
    d, _, _ = scored
    arrays = dict(np.load(d / "emb.npz"))
    del arrays["iv_direction"]
    np.savez(tmp_path / "old.npz", **arrays)
    res = run(["--embeddings", tmp_path / "old.npz", "--out", tmp_path / "o", "--chunk-size", "50"])
    assert res.exit_code == 0, res.output + res.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]
    new = json.loads((d / "out" / "metrics.json").read_text())["metrics"]
    assert not [k for k in m if "iv_baseline" in k]
    assert m == {k: v for k, v in new.items() if "iv_baseline" not in k}
    assert "IV baseline" not in (tmp_path / "o" / "report.md").read_text()
    assert (tmp_path / "o" / "direction_error.png").stat().st_size > 10_000


def _bad_npz(tmp_path, mutate):
    arrays = dict(np.load(tmp_path.parent / "good.npz")) if (tmp_path.parent / "good.npz").exists() else None
    if arrays is None:
        make_npz(tmp_path / "good.npz", n=40)
        arrays = dict(np.load(tmp_path / "good.npz"))
    mutate(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("mutate,needle", [
    (lambda a: a.pop("audio_source"), "missing array(s) ['audio_source']"),
    (lambda a: a.__setitem__("text_space", a["text_space"][:-3]), "field 'text_space'"),
    (lambda a: a["audio_space"].__setitem__((5, 2), np.nan), "field 'audio_space': non-finite value (NaN or inf) at row 5"),
    (lambda a: a.__setitem__("source_id", a["source_id"][:10]), "field 'source_id': shape (10,), expected (40,)"),
    (lambda a: a.__setitem__("pred_direction", a["pred_direction"][:, :2]), "field 'pred_direction'"),
])
def test_bad_inputs_one_line_error_exit_2(tmp_path, mutate, needle):
    path = _bad_npz(tmp_path, mutate)
    res = run(["--embeddings", path, "--out", tmp_path / "o"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert needle in res.stderr and "bad.npz" in res.stderr
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_wrong_files_and_arguments(tmp_path):
    (tmp_path / "x.npz").write_text("not an archive")
    cases = [
        (["--embeddings", tmp_path / "x.npz"], "x.npz"),
        (["--embeddings", tmp_path / "nope.npz"], "not found"),
        ([], "give either --checkpoint"),
        (["--checkpoint", tmp_path / "m.pt"], "--checkpoint needs --shards"),
        (["--compare", tmp_path / "x.npz", tmp_path / "x.npz"], "not JSON"),
    ]
    for args, needle in cases:
        res = run(list(args) + ["--out", tmp_path / "o"])
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.startswith("error: ") and needle in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_console_script_reports_bad_file_without_traceback(tmp_path):
    """The installed entry point itself: one line on stderr, exit status 2."""
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    exe = [sys.executable, "-c", "from disse.trainer.cli.eval import main; main()"]
    p = subprocess.run(exe + ["--embeddings", str(tmp_path / "bad.npz")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr and "bad.npz" in p.stderr


# ---------------------------------------------------------------------------------------------
# --checkpoint --shards: a randomly initialised DELSA (demo config) saved as a real checkpoint

@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    import torch

    from disse.configs import config_path
    from disse.schemas.config import config_to_dict
    from disse.trainer.training.checkpoint import save_atomic
    from disse.trainer.training.config import load_train_config
    from disse.trainer.model.delsa import DELSA

    cfg = load_train_config(config_path("demo.yaml"), ["data.train=unused"])
    torch.manual_seed(0)
    model = DELSA(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_atomic({"model": model.state_dict(), "config": config_to_dict(cfg), "step": 0}, path)
    return path, model.eval()


def test_checkpoint_on_demo_shards(random_checkpoint, demo_shards, tmp_path):
    import torch

    from disse.trainer.model import physics
    from disse.trainer.data.loader import eval_loader, resolve_shards

    random_checkpoint, model = random_checkpoint  # the saved model, still in memory: the reference

    shards = demo_shards / "test"
    res = run(["--checkpoint", random_checkpoint, "--shards", shards, "--out", tmp_path / "out",
               "--batch-size", 5, "--save-embeddings", tmp_path / "emb.npz", "--device", "cpu"])
    assert res.exit_code == 0, res.output + res.stderr
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    m = doc["metrics"]
    n = resolve_shards(str(shards)).total
    assert m["n_items"] == n and doc["meta"]["checkpoint"] == str(random_checkpoint)
    assert doc["meta"]["skipped_samples"] == 0
    for key in ("SRC/t2a/R@1", "SPA/a2t/mAP@10", "X-SRC/t2a/R@5/chance", "IR_space", "IR_source/pairs_same_space_diff_source",
                "phys/direction_err_deg/median", "phys/t30_ms/mae", "zeroshot/direction/acc", "zeroshot/reverberation/acc/chance",
                "AX-SRC/a2a/R@1", "AX-SPA/a2a/mAP@10/chance", "phys/direction_err_deg/iv_baseline/mean",
                "phys/direction_err_deg/vs_iv_baseline"):
        assert key in m, key
    for png in ("projection_spatial.png", "projection_source.png", "direction_error.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000

    # the saved embeddings are the model's own outputs for those samples, ids and targets from the shards
    emb = Embeddings.load(tmp_path / "emb.npz")
    assert len(emb) == n and len(set(emb.keys.tolist())) == n
    assert evaluate_embeddings(emb, load_caption_rules()).keys() == m.keys()
    batch = next(iter(eval_loader(str(shards), batch_size=3)))
    row = {k: i for i, k in enumerate(emb.keys.tolist())}
    idx = np.array([row[k] for k in batch["key"]])
    with torch.no_grad():
        audio = model.encode_audio(batch["waveform"], batch["iv"])
        text = model.encode_batch_text(batch)
        real = physics.to_real_units(audio["phys"])
    np.testing.assert_allclose(emb.audio_space[idx], audio["space"].numpy(), atol=1e-5)
    np.testing.assert_allclose(emb.text_source[idx], text["source"].numpy(), atol=1e-5)
    np.testing.assert_allclose(emb.physical["pred_t30_ms"][idx], real["t30_ms"].numpy(), rtol=1e-4)
    np.testing.assert_allclose(emb.physical["true_azimuth_deg"][idx], batch["targets"]["azimuth_deg"].numpy())
    assert emb.space_id[idx].tolist() == batch["space_id_str"]
    assert emb.descriptors["direction"][idx].tolist() == [d["direction"] for d in batch["descriptors"]]
    assert set(emb.prompts) == set(load_caption_rules().attributes)
    # the physics baseline: the intensity-vector direction of each sample's own features
    from disse.pipeline.features import direction_from_iv

    iv_dir = emb.physical["iv_direction"][idx]
    np.testing.assert_allclose(iv_dir, physics.intensity_direction(batch["iv"], 0.95).numpy(), atol=1e-6)
    for iv, vec in zip(physics.iv_to_float(batch["iv"]).numpy(), iv_dir):  # int8 q -> q / 127
        try:
            az, el = direction_from_iv(iv, 0.95)
        except ValueError:  # no cell reaches 0.95: the documented fallback is the plain sum
            az, el = direction_from_iv(iv, 0.0)
        ref = M.direction_from_angles(np.array([az]), np.array([el]))
        assert M.angular_error_deg(vec[None], ref)[0] < 1e-3


def test_bad_checkpoint_or_shards_is_one_line_error(tmp_path, demo_shards, random_checkpoint):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    res = run(["--checkpoint", tmp_path / "junk.pt", "--shards", demo_shards / "test", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "junk.pt" in res.stderr
    assert res.stderr.count("\n") == 1
    res = run(["--checkpoint", random_checkpoint[0], "--shards", tmp_path / "nowhere", "--out", tmp_path / "o"])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "nowhere" in res.stderr and not (tmp_path / "o").exists()
