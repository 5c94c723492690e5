"""The capacity-planning scripts run and print their figures (tiny sizes: the figures are not checked here)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
