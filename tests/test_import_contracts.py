"""The import direction of DESIGN.md ("Layout") is checked by import-linter, not hoped for.

The contracts live in pyproject.toml ([tool.importlinter]). The second test copies the source tree, adds one
wrong arrow (the evaluator importing the training loop) and checks that the same contracts then fail, so the
check cannot pass vacuously.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("schemas", "pipeline", "trainer", "configs")
USERS_OWN = {"configs/my.yaml"}  # a file the docs tell the user to write

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter (dev extra) is not installed")


def _lint(cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else dict(os.environ)
    return subprocess.run([str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_a_wrong_import_breaks_a_contract(tmp_path):
    # the same package layout as the installed one (disse.* -> top-level folders), copied so it can be edited
    pkg = tmp_path / "src" / "disse"
    pkg.mkdir(parents=True)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    metrics = pkg / "trainer" / "evaluation" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nimport disse.trainer.training.loop  # noqa: E402  (a wrong arrow)\n")

    res = _lint(tmp_path, pythonpath=str(tmp_path / "src"))
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "disse.trainer.evaluation.metrics -> disse.trainer.training.loop" in res.stdout


def test_every_source_file_the_docs_configs_and_code_name_exists():
    # the split of trainer/ into packages moved files; a path in a comment or a doc that points nowhere
    # sends a newcomer looking for a file that is not there
    named = re.compile(r"\b((?:trainer|pipeline|schemas|benchmarks|configs)/[\w/]+\.(?:py|yaml))\b")
    roots = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "configs").glob("*.yaml")]
    for folder in ("trainer", "pipeline", "schemas", "benchmarks", "tests"):
        roots += sorted((ROOT / folder).rglob("*.py"))
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in roots
                      for m in named.findall(p.read_text(errors="replace"))
                      if not (ROOT / m).exists() and m not in USERS_OWN})
    assert not missing, "\n".join(missing)
