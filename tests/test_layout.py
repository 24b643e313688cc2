"""The package's shape: modules import only those before them; the library imports no CLI toolkit; importing
charnn, and `charnn --help`, import no torch."""

import ast
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, cli_env

# A package (report/, serve/) is one entry: its modules may import each other.
ORDER = ["version", "errors", "terminal", "files", "fields", "config", "planning", "devicecheck", "threads", "runtime",
         "distributed", "textfile", "data", "batches", "corpus_cache", "model", "meta", "checkpoint", "rundir",
         "runlock", "finetune", "stepplan", "stepper", "graphstep", "sample", "beam", "evaluate", "inspect",
         "memory", "schedule", "trainstep", "trainloop", "resume", "train", "progress", "report", "export", "serve",
         "cli_run", "cli_options", "cli_output", "cli_app", "cli_tools", "cli", "cli_docs", "__main__"]
PKG = Path(__file__).resolve().parents[1] / "charnn"
ROOT = "__init__"  # the package itself: lazy, it imports nothing of charnn when imported


def lazy_names() -> dict[str, str]:
    """Public name -> module, from the `_EXPORTS` table of charnn/__init__.py."""
    for node in ast.walk(ast.parse((PKG / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def entry(path: Path) -> str:
    """The ORDER entry a file belongs to: its module, or the package directly under charnn/ holding it."""
    parts = path.relative_to(PKG).with_suffix("").parts
    return parts[0]


def resolve(name: str, exports: dict[str, str]) -> str:
    """What `from charnn import name` imports: a module or package of that name, else the module behind a
    lazily exported name, else the package root."""
    if (PKG / f"{name}.py").exists() or (PKG / name / "__init__.py").exists():
        return name
    return exports.get(name, ROOT)


def charnn_imports(path: Path, exports: dict[str, str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "charnn":
                found |= {resolve(a.name, exports) for a in node.names}
            elif node.module.startswith("charnn."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "charnn":
                    found.add(ROOT)
                elif a.name.startswith("charnn."):
                    found.add(a.name.split(".")[1])
    return found


def test_modules_import_only_earlier_modules():
    exports = lazy_names()
    assert exports, "charnn/__init__.py lost its _EXPORTS table"
    for path in sorted(PKG.rglob("*.py")):
        if path == PKG / "__init__.py":
            continue
        name = entry(path)
        assert name in ORDER, f"add {name} to the layout order"
        rank = ORDER.index(name)
        for dep in charnn_imports(path, exports) - {name}:  # a package's modules may import each other
            if dep == ROOT:
                continue  # the root's own names (__version__): it imports nothing (test below)
            assert dep in ORDER, f"{path.relative_to(PKG)} imports charnn.{dep}, which is not in the layout order"
            assert ORDER.index(dep) < rank, f"{path.relative_to(PKG)} imports {dep}, which comes after it"


def test_lazy_names_point_at_their_modules():
    import charnn

    for name, module in lazy_names().items():
        assert module in ORDER and name in charnn.__all__
        assert getattr(charnn, name) is getattr(__import__(f"charnn.{module}", fromlist=[name]), name)


def test_package_root_imports_nothing_of_charnn():
    """`__init__` loads its names lazily, so importing any module never imports the whole package (only
    charnn.version, which imports nothing, may be read eagerly)."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    for node in tree.body:  # module level only: the lazy loader imports inside a function
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n == "charnn" or n.startswith("charnn.") and n != "charnn.version" for n in names), \
                ast.unparse(node)


def test_charnn_train_is_the_function_whichever_is_imported_first():
    code = "import charnn.train, charnn; from charnn import train; print(callable(charnn.train), callable(train))"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env())
    assert out.stdout.split() == ["True", "True"], out.stderr


def _modules_after(code: str) -> set[str]:
    code += "\nimport sys; print(' '.join(sorted(sys.modules)), file=sys.stderr)"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=cli_env())
    return set(out.stderr.split()) if out.returncode == 0 else {f"failed: {out.stderr}"}


def test_importing_charnn_imports_no_torch_typer_or_rich():
    loaded = _modules_after("import charnn; charnn.__version__; charnn.ModelConfig")
    assert not loaded & {"torch", "numpy", "typer", "rich", "click", "tqdm", "fastapi", "uvicorn"}, loaded


def test_help_imports_no_torch():
    for args in ([], ["train"], ["sample"], ["eval"], ["report"], ["serve"], ["export"]):
        code = (f"import sys\nsys.argv = ['charnn', *{args!r}, '--help']\nfrom charnn.cli import main\n"
                "try:\n    main()\nexcept SystemExit:\n    pass")
        loaded = _modules_after(code)
        assert "typer" in loaded and not loaded & {"torch", "numpy"}, (args, loaded & {"torch", "numpy"})
