"""The package's shape: modules import only those before them; the library imports no CLI toolkit."""

import ast
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, cli_env

ORDER = ["version", "errors", "files", "config", "plan", "runtime", "distributed", "data", "corpus_cache", "model",
         "checkpoint", "rundir", "stepper", "sample", "evaluate", "inspect", "schedule", "trainstep", "trainloop",
         "train", "progress", "report_assets", "report", "cli", "__main__"]
PKG = Path(__file__).resolve().parents[1] / "charnn"


def charnn_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charnn."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("charnn.")}
    return found


def test_modules_import_only_earlier_modules():
    for path in PKG.glob("*.py"):
        if path.stem == "__init__":
            continue
        assert path.stem in ORDER, f"add {path.stem} to the layout order"
        rank = ORDER.index(path.stem)
        for dep in charnn_imports(path):
            assert ORDER.index(dep) < rank, f"{path.stem} imports {dep}, which comes after it"


def test_importing_charnn_does_not_import_typer_or_rich():
    code = "import sys, charnn; print(any(m in sys.modules for m in ('typer', 'rich', 'click')))"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env())
    assert out.stdout.strip() == "False", out.stderr
