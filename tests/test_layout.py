"""The package's shape: modules import only those before them, between the wings and inside each; the library
imports no CLI toolkit; importing charnn, and `charnn --help`, import no torch."""

import ast
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, cli_env

# The wings: each entry is a flat module or a package directly under charnn/; each imports only entries before it.
ORDER = [
    "version",
    "errors",
    "terminal",
    "fields",
    "config",
    "presets",
    "shapes",
    "devicecheck",
    "ram",
    "runtime",
    "distributed",
    "textfile",
    "data",
    "model",
    "calibration",
    "store",
    "evaluate",
    "dynamic",
    "novelty",
    "inspect",
    "memory",
    "sampling",
    "training",
    "report",
    "export",
    "serve",
    "cli",
    "__main__",
]
# Inside a package the same rule holds for its modules (`__init__` may hand on any of them).
PACKAGES = {
    "store": ["files", "meta", "trainstate", "bundled", "checkpoint", "fast_utf8", "corpus_cache", "rundir", "runlock"],
    "novelty": ["spans", "index", "run"],
    "sampling": ["draw", "packing", "stepper", "cudagraph", "generate", "beam"],
    "training": [
        "threads",
        "schedule",
        "batches",
        "timing",
        "choices",
        "plan",
        "step",
        "average",
        "speed",
        "finetune",
        "runstate",
        "loop",
        "refit",
        "resume",
        "setup",
        "train",
    ],
    "report": ["svg", "analysis", "markup", "curves", "record", "passage", "lookback", "page"],
    "export": ["output", "spec", "html", "onnx"],
    "serve": [
        "jobs",
        "rows",
        "lone",
        "window",
        "delivery",
        "schemas",
        "engine",
        "worker",
        "replies",
        "bodies",
        "middleware",
        "metrics",
        "models",
        "openai_schemas",
        "openai_replies",
        "openai_api",
        "app",
        "server",
    ],
    "cli": ["run", "options", "output", "progress", "app", "train", "tools", "commands", "docs"],
}
PKG = Path(__file__).resolve().parents[1] / "charnn"
ROOT = "__init__"  # the package itself: lazy, it imports nothing of charnn when imported


def lazy_names() -> dict[str, str]:
    """Public name -> module (dotted under charnn), from the `_EXPORTS` table of charnn/__init__.py."""
    for node in ast.walk(ast.parse((PKG / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def module_of(path: Path) -> tuple[str, ...]:
    """charnn/sampling/stepper.py -> ("sampling", "stepper")."""
    return path.relative_to(PKG).with_suffix("").parts


def resolve(dotted: str, names: list[str], exports: dict[str, str]) -> list[tuple[str, ...]]:
    """The modules an import of `names` from charnn.`dotted` reaches, as paths of parts under charnn."""
    base = tuple(dotted.split(".")[1:])
    found = []
    for name in names or [""]:
        parts = (*base, name) if name else base
        if (PKG.joinpath(*parts).with_suffix(".py")).exists() or (PKG.joinpath(*parts) / "__init__.py").exists():
            found.append(parts)
        elif not base and name in exports:
            found.append(tuple(exports[name].split(".")))
        else:
            found.append(base or (ROOT,))
    return found


def charnn_imports(path: Path, exports: dict[str, str]) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "charnn" or node.module.startswith("charnn."):
                found.update(resolve(node.module, [a.name for a in node.names], exports))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "charnn" or a.name.startswith("charnn."):
                    found.update(resolve(a.name, [], exports))
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: use absolute imports"
    return found


def test_modules_import_only_earlier_modules():
    exports = lazy_names()
    assert exports, "charnn/__init__.py lost its _EXPORTS table"
    for path in sorted(PKG.rglob("*.py")):
        if path == PKG / "__init__.py":
            continue
        mine = module_of(path)
        assert mine[0] in ORDER, f"add {mine[0]} to the layout order"
        for dep in charnn_imports(path, exports):
            if dep == (ROOT,):
                continue  # the root's own names (__version__): it imports nothing (test below)
            where = path.relative_to(PKG)
            assert dep[0] in ORDER, f"{where} imports charnn.{'.'.join(dep)}, which is not in the layout order"
            if dep[0] != mine[0]:
                assert ORDER.index(dep[0]) < ORDER.index(mine[0]), f"{where} imports {dep[0]}, which comes after it"
                continue
            if mine[-1] == "__init__" or len(dep) == 1:
                continue  # a package's face hands on its modules; a module may name its own package
            order = PACKAGES[mine[0]]
            assert mine[1] in order and dep[1] in order, f"add {where} and charnn.{'.'.join(dep)} to PACKAGES"
            assert order.index(dep[1]) < order.index(mine[1]), f"{where} imports {'.'.join(dep)}, which comes after it"


def test_every_package_module_has_its_place():
    for package, order in PACKAGES.items():
        modules = {p.stem for p in (PKG / package).glob("*.py")} - {"__init__"}
        assert modules == set(order), (package, modules ^ set(order))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_a_module():
    """What two modules share is public in one home: no `from charnn.x import _name`, no `x._name` on an
    imported charnn module, and `__all__` lists public names only (tests may reach private names)."""
    crossings = []
    for path in sorted(PKG.rglob("*.py")):
        where = path.relative_to(PKG)
        modules = set()  # local names bound to charnn modules
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "charnn":
                crossings += [f"{where}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
                parts = tuple(node.module.split(".")[1:])
                modules |= {a.asname or a.name for a in node.names if PKG.joinpath(*parts, f"{a.name}.py").exists()}
            elif isinstance(node, ast.Import):
                modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "charnn"}
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                if isinstance(node.value, (ast.List, ast.Tuple)):
                    names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                    crossings += [f"{where}: __all__ lists {n}" for n in names if _private(n)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if ast.unparse(node.value).split(".")[0] in modules:
                    crossings.append(f"{where}: {ast.unparse(node)}")
    assert not crossings, crossings


def test_lazy_names_point_at_their_modules():
    import charnn

    for name, module in lazy_names().items():
        assert module.split(".")[0] in ORDER and name in charnn.__all__
        assert getattr(charnn, name) is getattr(__import__(f"charnn.{module}", fromlist=[name]), name)


def test_package_root_imports_nothing_of_charnn():
    """`__init__` loads its names lazily, so importing any module never imports the whole package (only
    charnn.version, which imports nothing, may be read eagerly)."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    for node in tree.body:  # module level only: the lazy loader imports inside a function
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n == "charnn" or n.startswith("charnn.") and n != "charnn.version" for n in names), (
                ast.unparse(node)
            )


def test_charnn_train_is_the_function_whichever_is_imported_first():
    code = (
        "import charnn.training.train, charnn; from charnn import train; print(callable(charnn.train), callable(train))"
    )
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
        code = (
            f"import sys\nsys.argv = ['charnn', *{args!r}, '--help']\nfrom charnn.cli.commands import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass"
        )
        loaded = _modules_after(code)
        assert "typer" in loaded and not loaded & {"torch", "numpy"}, (args, loaded & {"torch", "numpy"})


LONG = 60  # lines: a function longer than this says why in a `# long:` comment above it


def _says_why(lines: list[str], first: int) -> bool:
    """Whether the comment block right above line `first` (1-based) holds a `# long:` reason."""
    i = first - 2
    while i >= 0 and lines[i].lstrip().startswith("#"):
        if lines[i].lstrip().startswith("# long:"):
            return True
        i -= 1
    return False


def test_long_functions_say_why():
    unexplained = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if node.end_lineno - first + 1 > LONG and not _says_why(lines, first):
                    unexplained.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name}")
    assert not unexplained, unexplained
