"""The capacity-planning scripts run and print their figures (tiny sizes: the figures are not checked here)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from shardgen import write_shards

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path):
    res = run("gpu_check.py", "--out", str(tmp_path / "gpu.json"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr
    assert "no CUDA GPU" in res.stdout and not (tmp_path / "gpu.json").exists()


def test_data_benchmark_prints_every_row(tmp_path):
    write_shards(tmp_path, "train", [6, 6])
    res = run("data.py", "--quick", "--shards", str(tmp_path / "train"))
    assert res.returncode == 0, res.stderr
    for row in ("plain reference", "pipeline, in-process", "pipeline, 2 DataLoader worker(s)",
                "same, 2 worker(s), DataLoader defaults", "hand-over from a worker",
                "features in torch from 48 kHz", "CLAP extractor of W"):
        assert row in res.stdout, (row, res.stdout)


def test_capacity_plan_counts_flops_and_prints_the_table(tmp_path):
    res = run("capacity.py", "--quick", "--json", str(tmp_path / "cap.json"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    rows = {ln.split("|")[1].strip(): ln for ln in lines if ln.startswith("| ") and not ln.startswith("| ---")}
    assert {"paper", "official", "Spatial AudioCaps", "Clotho"} <= set(rows), res.stdout
    assert float(rows["paper"].split("|")[2].replace(",", "")) > 0  # GFLOP per sample, counted
    again = run("capacity.py", "--flops-from", str(tmp_path / "cap.json"))
    assert again.returncode == 0 and again.stdout.splitlines()[-4:] == lines[-4:]


def test_leak_power_oracle_passes_and_chance_is_a_coin_flip(tmp_path):
    # a balanced design like the demo's test split: 32 sources x 9 spaces each, no source twice in one space
    rng = np.random.default_rng(0)
    source_id = np.repeat([f"s{i}" for i in range(32)], 9)
    space_id = np.array([f"p{(i * 7 + j * 5) % 70}" for i in range(32) for j in range(9)])
    assert len(set(zip(source_id, space_id))) == len(source_id)
    src = (source_id[:, None] == np.unique(source_id)[None]).astype(np.float32)
    # the "measured" model: a source embedding that knows the space as well, which the rule must catch
    spa = (space_id[:, None] == np.unique(space_id)[None]).astype(np.float32)
    leaky = np.concatenate([src, 2.0 * spa], 1) + 0.01 * rng.standard_normal((288, 32 + 70)).astype(np.float32)
    np.savez(tmp_path / "emb.npz", source_id=source_id, space_id=space_id, text_source=leaky, audio_source=leaky,
             text_space=spa, audio_space=spa)
    res = run("leak_power.py", str(tmp_path / "emb.npz"), "--draws", "40")
    assert res.returncode == 0, res.stderr
    rows = {ln.split()[0]: ln.split() for ln in res.stdout.splitlines() if "/R@1" in ln.split()[0]}
    totals = [ln.split() for ln in res.stdout.splitlines() if ln.strip().startswith("all three")]
    assert set(rows) == {"X-SRC/t2a/R@1", "X-SRC/a2t/R@1", "AX-SRC/a2a/R@1", "X-SPA/t2a/R@1", "X-SPA/a2t/R@1",
                         "AX-SPA/a2a/R@1"}, res.stdout
    for key, cells in rows.items():
        assert cells[-2] == "1.000" and float(cells[-1]) == 0.0, (key, res.stdout)  # the oracle: never a leak
    # at chance, the source side's three checks (chance ~0.01, ~3 hits) all pass in far fewer than all draws
    space_total, source_total = totals
    assert float(source_total[-4]) < 0.9 and source_total[-3] == "1.000", res.stdout
    assert source_total[2] == "fail" and space_total[2] == "pass", res.stdout  # the leaky source embedding is caught
