"""`disse-eval --checkpoint <released layout> --shards <official grid> --metrics official` end to end:
a tiny official grid (2 sources x 2 RIRs), a random DISSEOfficial saved as the release saves it, a toy
RoBERTa folder. Also: the loader's official path (de-gained W), the release's .npz round trip, and one-line
errors when the model and the shards' feature preset do not match."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from disse.pipeline.official_features import split_official_iv
from disse.pipeline.shards import read_tar_samples
from disse.trainer.data.loader import decode_raw, eval_loader, resolve_shards
from disse.trainer.cli.eval import main as eval_main
from disse.trainer.evaluation.official_metrics import load_npz

from test_official_grid import _rir_row, _write

pytest.importorskip("pyroomacoustics")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from disse.pipeline.cli import main

    root = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(0)
    (root / "dry").mkdir()
    sf.write(root / "dry" / "104274.wav", rng.standard_normal(48000 * 3) * 0.1, 48000)
    sf.write(root / "dry" / "107283.flac", rng.standard_normal(44100 * 12) * 0.05, 44100)
    _write(root / "audio_fixed.csv", [
        {"audiocap_id": "104274", "youtube_id": "a", "start_time": 0, "caption": "Rain is falling continuously"},
        {"audiocap_id": "107283", "youtube_id": "b", "start_time": 30, "caption": "A man speaks"}])
    _write(root / "rir_fixed.csv", [_rir_row("auto_000000", (4.0, 3.5, 3.0), 0.9, 0.84, 77, -46, 150),
                                    _rir_row("auto_000001", (6.0, 5.0, 3.0), 0.9, 2.05, -100, 42, 150)])
    res = CliRunner().invoke(main, [str(a) for a in (
        "official-grid", "--audio-catalogue", root / "audio_fixed.csv", "--rir-catalogue", root / "rir_fixed.csv",
        "--dry-root", root / "dry", "--out", root / "out", "--any-size", "--no-progress", "--shard-size", "2")])
    assert res.exit_code == 0, res.output
    return root / "out" / "test"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A random full-size-audio DISSEOfficial with a toy RoBERTa, saved as {"model": sd, "epoch": 20}."""
    from disse.trainer.model.official import DISSEOfficial, OfficialConfig

    from test_official_model import _roberta_dir

    d = tmp_path_factory.mktemp("released")
    rb = _roberta_dir(d / "roberta", full=False)
    torch.manual_seed(0)
    model = DISSEOfficial(OfficialConfig(roberta_dir=str(rb), text_max_length=24)).eval()
    torch.save({"model": model.state_dict(), "epoch": 20}, d / "disse_epoch20.pt")
    # the toy RoBERTa has 100 positions: the config's text_max_length replaces the release's 512
    (d / "official.yaml").write_text("model:\n  preset: official\n  official:\n    text_max_length: 24\n")
    return d, model, rb


def _run(*args):
    return CliRunner().invoke(eval_main, [str(a) for a in args])


def test_loader_reads_official_shards_with_the_release_omni(grid):
    shards = resolve_shards(str(grid))
    raw = next(iter(read_tar_samples(shards.urls[0])))
    s = decode_raw(raw, preset="official")
    assert s["iv"].shape == (6, 201, 1601) and s["iv"].dtype == np.float16
    assert s["waveform"].dtype == np.int16 and s["waveform"].shape == (480000,)
    assert s["w_scale"] == pytest.approx(1 / s["meta"].render["gain"])
    batch = next(iter(eval_loader(shards, batch_size=2, preset="official")))
    assert batch["iv"].shape == (2, 6, 201, 1601) and batch["w_scale"].shape == (2,)
    # the training / project path keeps refusing an official features block
    from disse.schemas import SchemaError
    with pytest.raises(SchemaError, match="preset"):
        decode_raw(raw)


def test_eval_scores_the_released_checkpoint_on_the_official_grid(grid, released, tmp_path):
    d, model, rb = released
    out = tmp_path / "eval"
    res = _run("--checkpoint", d / "disse_epoch20.pt", "--shards", grid, "--official-config", d / "official.yaml",
               "--roberta-dir", rb, "--metrics", "official", "--out", out, "--batch-size", "2",
               "--save-official-embeddings", out / "emb.npz", "--save-embeddings", out / "project_layout.npz")
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    flat = metrics.get("metrics", metrics)
    official = {k: v for k, v in flat.items() if k.startswith("official/")}
    for key in ("official/cross_modal/on_task_source/text_to_audio/R@1",
                "official/cross_modal/on_task_spatial/audio_to_text/R@1", "official/cross_modal/both/text_to_audio/MnR",
                "official/iidr/audio_source/IIDR_source", "official/iidr/audio_spatial/IIDR_spatial"):
        assert key in official, sorted(official)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in official.values())
    assert (out / "official_metrics.json").is_file()

    # the release's .npz layout: ids in grid order, normalised 512-d rows
    data = load_npz(out / "emb.npz")
    assert list(data["source_id"]) == ["104274", "104274", "107283", "107283"]
    assert list(data["spatial_id"]) == ["auto_000000", "auto_000001"] * 2
    for k in ("audio_source", "audio_spatial", "text_source", "text_spatial"):
        assert data[k].shape == (4, 512)
        np.testing.assert_allclose(np.linalg.norm(data[k], axis=1), 1.0, atol=1e-5)

    # the embedding of sample 0 is what the release computes from i_act, i_rea and omni_48k = W / gain
    raw = next(iter(read_tar_samples(resolve_shards(str(grid)).urls[0])))
    s = decode_raw(raw, preset="official")
    i_act, i_rea = split_official_iv(s["iv"])
    omni = s["waveform"].astype(np.float64) / 2 ** 15 / s["meta"].render["gain"]
    with torch.no_grad():
        a = model.encode_audio({"i_act": torch.from_numpy(i_act)[None], "i_rea": torch.from_numpy(i_rea)[None],
                                "omni_48k": torch.from_numpy(omni.astype(np.float32))[None]})
        t = model.encode_text([s["meta"].caption])
    norm = torch.nn.functional.normalize
    np.testing.assert_allclose(data["audio_spatial"][0], norm(a["audio_space_emb"], dim=-1)[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(data["audio_source"][0], norm(a["audio_source_emb"], dim=-1)[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(data["text_spatial"][0], norm(t["text_space_emb"], dim=-1)[0].numpy(), atol=1e-4)

    # round trip: the saved file scores to the same official figures without the model
    res = _run("--embeddings", out / "emb.npz", "--metrics", "official", "--out", tmp_path / "again")
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "official_metrics.json").read_text())
    assert again == json.loads((out / "official_metrics.json").read_text())
    # this project's layout (with the intensity baseline and the targets) reads back too
    res = _run("--embeddings", out / "project_layout.npz", "--metrics", "both", "--out", tmp_path / "both",
               "--rules", "official", "--no-plots")
    assert res.exit_code == 0, res.output
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())
    both = both.get("metrics", both)
    assert "SRC/t2a/R@1" in both and "phys/direction_err_deg/iv_baseline/mean" in both


def test_mismatched_presets_are_one_line_errors(grid, released, tmp_path):
    from disse.schemas.config import config_to_dict
    from disse.trainer.training.config import TrainConfig
    from disse.trainer.model.delsa import DELSA

    from shardgen import write_shards
    from test_model import small_config

    d, _, rb = released
    torch.manual_seed(0)
    cfg = TrainConfig(model=small_config())
    torch.save({"model": DELSA(cfg.model).state_dict(), "config": config_to_dict(cfg), "step": 1}, tmp_path / "p.pt")
    res = _run("--checkpoint", tmp_path / "p.pt", "--shards", grid, "--out", tmp_path / "e1")
    assert res.exit_code == 2 and "features.preset" in res.output and "official" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    write_shards(tmp_path / "proj", "test", [3])
    res = _run("--checkpoint", d / "disse_epoch20.pt", "--shards", tmp_path / "proj" / "test", "--metrics", "official",
               "--out", tmp_path / "e2")
    assert res.exit_code == 2 and "features.preset" in res.output and "project" in res.output
    assert len(res.output.strip().splitlines()) == 1
    # the project metrics need the released model's text side
    res = _run("--checkpoint", d / "disse_epoch20.pt", "--shards", grid, "--out", tmp_path / "e3")
    assert res.exit_code == 2 and "--roberta-dir" in res.output
    # without it, the audio side alone: the release's IIDR and intra-modal tasks
    res = _run("--checkpoint", d / "disse_epoch20.pt", "--shards", grid, "--metrics", "official",
               "--batch-size", "4", "--out", tmp_path / "e4", "--save-official-embeddings", tmp_path / "e4" / "a.npz")
    assert res.exit_code == 0, res.output
    data = load_npz(tmp_path / "e4" / "a.npz")
    assert sorted(k for k in data if k.endswith(("_source", "_spatial"))) == ["audio_source", "audio_spatial"]
    assert len(data["source_id"]) == 4 and (tmp_path / "e4" / "official_metrics.json").is_file()


def test_inspect_reads_the_direction_of_official_shards(grid, tmp_path):
    from disse.pipeline.cli import main
    from disse.pipeline.inspect import find_sample, find_shards, iv_direction
    from disse.pipeline.official_features import official_direction
    from disse.schemas.shard import decode_iv

    sample = find_sample(find_shards(grid), "104274__auto_000000")
    meta = sample.meta()
    iv = decode_iv(sample.data["iv.npz"]).astype(np.float32)
    # [act Y, Z, X] rows read as such: the same direction as the release-frame sum (+azimuth = +Y)
    assert iv_direction(iv, meta.features) == pytest.approx(official_direction(iv[:3]), abs=1e-6)
    az, _ = iv_direction(iv[:, :40], meta.features)  # < 1.6 kHz: the 5 cm capsules do not alias
    assert abs((az - meta.azimuth_deg + 180) % 360 - 180) < 25
    res = CliRunner().invoke(main, ["inspect", str(grid), "--show", "104274__auto_000000"])
    assert res.exit_code == 0, res.output
    assert "mean active intensity points to azimuth" in res.output and "int8" not in res.output
    out = tmp_path / "s.png"
    res = CliRunner().invoke(main, ["inspect", str(grid), "--plot-sample", "104274__auto_000000", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
