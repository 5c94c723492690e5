"""Shards captioned with the release's rules (`disse-synth render --rules official`) train with validation and
score with project, official and both metrics, without the user naming the rule table anywhere: the trainer
reads it from the shards, disse-eval from the checkpoint. A table that is not the shards' is one error line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from disse.pipeline.cli import main as synth
from disse.pipeline.foa import plane_wave_rir
from disse.trainer.cli.eval import main as eval_main
from disse.trainer.cli.train import main as train_main

from test_train import SMALL


@pytest.fixture(scope="module")
def official_rules_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("official_rules")
    rng = np.random.default_rng(0)
    (root / "audio").mkdir()
    (root / "rirs").mkdir()
    clips = ["audiocap_id,caption"]
    for i in range(16):  # noises of different colours: sources the model can tell apart
        x = np.cumsum(rng.standard_normal(48000 * 2), axis=0) if i % 2 else rng.standard_normal(48000 * 2)
        x = np.convolve(x, np.ones(1 + i) / (1 + i), mode="same")
        sf.write(root / "audio" / f"c{i}.wav", 0.1 * x / np.abs(x).max(), 48000)
        clips.append(f"c{i},A sound of kind {i}")
    (root / "clips.csv").write_text("\n".join(clips) + "\n")
    rows = ["rir_path,azimuth_deg,elevation_deg,source_distance_m,area_m2,fullband_T30_ms,room_index"]
    for r in range(24):  # azimuths on both sides, some elevations no official rule names ("none")
        az, el = -170 + 15 * r, (-50, 0, 10, 60)[r % 4]
        sf.write(root / "rirs" / f"r{r}.wav", plane_wave_rir(az, el, 960, delay=10).T, 48000, subtype="FLOAT")
        rows.append(f"rirs/r{r}.wav,{az},{el},{0.5 + 0.15 * r},{30 + 8 * r},{200 + 45 * r},{r}")
    (root / "rirs.csv").write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(synth, [
        "render", "--clips", str(root / "clips.csv"), "--audio-dir", str(root / "audio"), "--rirs",
        str(root / "rirs.csv"), "--out", str(root / "shards"), "--rules", "official", "--rirs-per-clip", "2",
        "--clips-per-rir", "2", "--val-fraction", "0.25", "--test-fraction", "0.25", "--shard-size", "8",
        "--no-rir-check", "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "shards"


def _train(shards, out, *extra):
    return train_main(["--config", "demo", f"data.train={shards / 'train'}", f"data.val={shards / 'val'}",
                       f"train.out_dir={out}", "train.max_steps=4", "data.batch_size=8", "eval.every_steps=2",
                       "data.num_workers=0", *SMALL, *extra])


def test_official_rules_shards_train_with_validation_and_score(official_rules_shards, tmp_path, capsys):
    shards = official_rules_shards
    _train(shards, tmp_path / "run")  # returns on success (main exits only on an error)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["data"]["caption_rules"] == "official" and resolved["eval"]["caption_rules"] == "official"
    vals = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r["event"] == "val" for r in vals)

    for metrics in ("project", "official", "both"):
        res = CliRunner().invoke(eval_main, [
            "--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.pt"), "--shards", str(shards / "test"),
            "--out", str(tmp_path / metrics), "--metrics", metrics, "--no-plots"])
        assert res.exit_code == 0, res.output
        doc = json.loads((tmp_path / metrics / "metrics.json").read_text())
        assert doc["meta"]["caption_rules"] == "official"  # from the checkpoint, not the packaged v1
        m = doc["metrics"]
        if metrics != "official":
            assert "SRC/t2a/R@1" in m and "zeroshot/direction/acc" in m
        if metrics != "project":
            assert any(k.startswith("official/") for k in m)


def test_a_rule_table_that_is_not_the_shards_is_one_line(official_rules_shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _train(official_rules_shards, tmp_path / "run", "data.caption_rules=v1")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "data.caption_rules=official" in lines[0] and ".tar" in lines[0]
