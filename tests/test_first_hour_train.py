"""The first hour with disse-train: every bad input ends in one ``error: ...`` line naming where it came
from (the file or the command-line override) and the field, with a hint, exit status 2, no traceback."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_says_how_to_get_the_commands_on_the_path():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    # the two quick-start commands stay as they are
    assert re.search(r"^make demo ", quick, re.M) and re.search(r"^make test ", quick, re.M)
    assert "source .venv/bin/activate" in quick and ".venv/bin/disse-" in quick and "make install" in quick
    assert re.search(r"^install:", (ROOT / "Makefile").read_text(), re.M)
