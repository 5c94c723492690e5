"""Click lives at the edge: `disse.pipeline.cli` is the only synthesis module that imports it."""
import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"


def _imports_click(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "click" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "click":
            return True
    return False


def test_only_cli_imports_click():
    offenders = sorted(p.name for p in PIPELINE.glob("*.py") if p.name != "cli.py" and _imports_click(p))
    assert offenders == []
    assert _imports_click(PIPELINE / "cli.py")


def test_every_command_is_registered():
    from disse.pipeline.cli import main

    assert sorted(main.commands) == ["captions", "demo", "inspect", "official-grid", "official-rirs",
                                     "render", "rirs", "upgrade"]
