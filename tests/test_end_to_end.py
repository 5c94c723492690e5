"""Issue 7 in small: the README's demo pipeline (render -> train -> evaluate) through the three CLIs.

The shards come from the session's ``demo_shards`` fixture (the same code as ``disse-synth demo``, on
a small corpus); training and evaluation run through ``disse-train`` and ``disse-eval`` exactly as
``make demo`` calls them, with fewer steps. The assertions are the demo's, on a smaller scale: the
model retrieves sources well above chance on held-out clips and rooms (whole rooms are held out),
its source embedding is invariant to the room, its direction stands beside the intensity-vector
physics baseline, and the report is written.
"""
import json

import pytest
from click.testing import CliRunner

from disse.trainer.cli.eval import main as eval_main
from disse.trainer.cli.train import cli as train_main


@pytest.mark.slow
def test_demo_pipeline_end_to_end(demo_shards, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, [
        "--config", "demo", f"data.train={demo_shards / 'train'}", f"data.val={demo_shards / 'val'}",
        f"train.out_dir={run}", "train.max_steps=40", "data.batch_size=8", "optim.warmup_steps=4",
        "eval.each_epoch=false", "eval.every_steps=20", "eval.at_start=false", "log.progress=false",
        "data.num_workers=1", "train.threads=1"])
    assert result.exit_code == 0, result.output
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()

    out = tmp_path / "eval"
    result = CliRunner().invoke(eval_main, [
        "--checkpoint", str(run / "checkpoints" / "latest.pt"), "--shards", str(demo_shards / "test"),
        "--out", str(out), "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "SRC t2a R@1" in result.output and "chance" in result.output
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for name in ("report.md", "projection_spatial.png", "projection_source.png", "direction_error.png"):
        assert (out / name).is_file(), name

    # 40 steps on 16 training samples: the direction of the full demo's results, at a smaller scale.
    # Sources are retrieved from text above chance, on clips and rooms never seen in training.
    assert metrics["SRC/t2a/R@1"] >= 2 * metrics["SRC/t2a/R@1/chance"], metrics["SRC/t2a/R@1"]
    # The source embedding moves less across rooms than across sources.
    assert metrics["IR_source"] > 1.0, metrics["IR_source"]
    # Direction is predicted better than a random guess (90 degrees).
    assert metrics["phys/direction_err_deg/mean"] < 75.0, metrics["phys/direction_err_deg/mean"]
    # The learned direction stands beside the physics baseline on the same held-out items, and is
    # not far behind it after 40 steps (the full demo beats it several times over: docs/spatial.md).
    base = metrics["phys/direction_err_deg/iv_baseline/mean"]
    assert metrics["phys/direction_err_deg/mean"] <= 1.5 * base + 5.0, (metrics["phys/direction_err_deg/mean"], base)
    # Every leakage check is reported next to its chance level (the paper setting, text_input=full,
    # lets the text space head read source words: the checks are there to show it).
    for key in ("X-SRC/t2a/R@1", "X-SPA/t2a/R@1", "AX-SRC/a2a/R@1", "AX-SPA/a2a/R@1"):
        assert key in metrics and key + "/chance" in metrics
