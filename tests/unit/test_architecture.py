"""Imports point one way (../shared/STYLE.md §2):
cli -> {runs, tools, api, locate} -> {editing, evaluation, datasets, models, reporting} -> config -> base modules."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "blue_cli"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _files(sub: str):
    return sorted((PKG / sub).rglob("*.py"))


# The first-party packages (or top-level modules) each package may import, besides itself.
# BASE: blue_cli/__init__ (ASSETS_DIR, install hints), errors, cache, faults, download, progress.
BASE = {"__init__", "errors", "cache", "faults", "download", "progress"}
ALLOWED = {
    "errors": set(),
    "progress": set(),
    "faults": set(),
    "cache": {"errors", "faults"},
    "download": {"__init__", "errors", "cache"},
    "config": BASE,
    "models": BASE | {"config"},
    # the edit record type (datasets/records.py, a plain dataclass) is the one datasets name allowed
    "evaluation": BASE | {"config", "models", "datasets.records"},
    "datasets": BASE | {"config", "models", "evaluation"},
    "editing": BASE | {"config", "models", "evaluation", "datasets"},
    # rendering only; it reads run files through runs/files.py (names and readers, no run logic)
    "reporting": BASE | {"config", "datasets", "runs.files"},
    "runs": BASE | {"config", "models", "evaluation", "datasets", "editing"},
    # causal tracing (blue locate): the model through the adapter, facts from the datasets' loaders
    "locate": BASE | {"config", "models", "datasets"},
    "tools": BASE | {"config", "models", "evaluation", "datasets", "editing", "runs"},
    "api": BASE | {"config", "models", "evaluation", "datasets", "editing"},
    "cli": BASE
    | {"config", "models", "evaluation", "datasets", "editing", "runs", "tools", "reporting", "api", "locate"},
}


def _package(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0].removesuffix(".py")


def _first_party_targets(path: Path) -> set[str]:
    """The first-party packages a file imports: ``blue_cli.runs.files`` gives ``runs`` and ``runs.files``."""
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module] if node.module != "blue_cli" else [f"blue_cli.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        for mod in mods:
            parts = mod.split(".")
            if parts[0] != "blue_cli":
                continue
            if len(parts) == 1 or parts[1] not in {*ALLOWED, "api"}:
                out.add("__init__")  # a name from blue_cli/__init__.py
                continue
            out.add(parts[1] if len(parts) == 2 else f"{parts[1]}.{parts[2]}")
    return out


def test_every_package_imports_only_downwards():
    """Every file of every package (the planners in tools/ included) imports only what its
    package may import; an import of a package's own modules is free."""
    seen = set()
    for f in sorted(PKG.rglob("*.py")):
        pkg = _package(f)
        if pkg == "__init__" or pkg == "__main__":
            continue
        seen.add(pkg)
        assert pkg in ALLOWED, f"{f.relative_to(PKG)}: package '{pkg}' has no entry in ALLOWED"
        allowed = ALLOWED[pkg]
        bad = sorted(
            t
            for t in _first_party_targets(f)
            if t.split(".")[0] != pkg and t not in allowed and t.split(".")[0] not in allowed
        )
        assert not bad, f"{f.relative_to(PKG)} ({pkg}) imports {bad}"
    assert seen == set(ALLOWED), set(ALLOWED) ^ seen


def test_the_import_rule_catches_an_upward_import():
    """The checker itself: an evaluation module importing the runner is caught, errors is not."""
    targets = _first_party_targets_of_text("from blue_cli.runs.runner import run_experiment\nimport blue_cli.errors\n")
    assert targets == {"runs.runner", "errors"}
    assert {t for t in targets if t.split(".")[0] not in ALLOWED[_package(PKG / "evaluation" / "x.py")]} == {
        "runs.runner"
    }


def _first_party_targets_of_text(text: str) -> set[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.py"
        path.write_text(text, encoding="utf-8")
        return _first_party_targets(path)


def test_linalg_imports_only_torch():
    mods = _imports(PKG / "editing" / "linalg.py")
    assert {m.split(".")[0] for m in mods} <= {"torch", "math", "__future__"}


def test_evaluation_never_imports_editing():
    for f in _files("evaluation"):
        assert not any(m.startswith("blue_cli.editing") for m in _imports(f)), f


def test_reporting_imports_neither_models_nor_editing():
    for f in _files("reporting"):
        bad = [m for m in _imports(f) if m.startswith(("blue_cli.models", "blue_cli.editing", "torch"))]
        assert not bad, (f, bad)


def test_strategies_never_import_a_concrete_method():
    for f in _files("editing/strategies"):
        bad = [m for m in _imports(f) if m.startswith("blue_cli.editing.methods") and not m.endswith(".base")]
        assert not bad, (f, bad)


def test_library_code_does_not_import_rich_outside_cli_and_reporting():
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).as_posix()
        if rel.startswith(("reporting/", "cli/")):
            continue
        assert not any(m.startswith("rich") for m in _imports(f)), rel


def test_no_method_name_branches_in_strategies_or_runner():
    from blue_cli.config.registry import METHODS, method_class

    method_class("memit")  # fills the registry
    for f in [*_files("editing/strategies"), PKG / "runs" / "runner.py"]:
        text = f.read_text(encoding="utf-8")
        for name in METHODS:
            assert f'== "{name}"' not in text and f"== '{name}'" not in text, (f, name)


# -- dependencies: every imported distribution is declared ------------------------------------

REPO = PKG.parent
# scripts/ is on the test path (pyproject: pythonpath): its modules are this repository's own.
FIRST_PARTY = {"blue_cli", "tests", "tiny_build"} | {p.stem for p in (REPO / "scripts").glob("*.py")}


def _declared_distributions() -> set[str]:
    """Every distribution the installed blue-editing requires, runtime and extras
    (importlib.metadata reads what pyproject.toml declared at install time)."""
    import re
    from importlib.metadata import requires

    return {
        re.split(r"[\s\[<>=!~;(]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in requires("blue-editing")
    }


def _top_level_imports(path: Path) -> set[str]:
    """Absolute imports only: a relative import is first-party by construction."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_every_imported_distribution_is_declared_in_pyproject():
    """blue_cli, tests, scripts and benchmarks import only the standard library, themselves
    and distributions that pyproject.toml declares (runtime, the test extra or an optional extra)."""
    import sys
    from importlib.metadata import packages_distributions

    provided = packages_distributions()
    declared = _declared_distributions()
    undeclared = {}
    for folder in ("blue_cli", "tests", "scripts", "benchmarks"):
        for f in sorted((REPO / folder).rglob("*.py")):
            for name in _top_level_imports(f) - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"}:
                dists = {d.lower().replace("_", "-") for d in provided.get(name, [name])}
                if not dists & declared:
                    undeclared.setdefault(name, []).append(str(f.relative_to(REPO)))
    assert not undeclared, undeclared


def test_checking_overrides_imports_neither_torch_nor_transformers():
    """`blue edit methd=x` must answer before the heavy libraries load: composing every
    method and dataset (their schemas register on import) must not import them."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from blue_cli.config.schema import group_choices
        from blue_cli.config.overrides import validate_overrides
        for method in group_choices("method"):
            for dataset in group_choices("dataset"):
                validate_overrides([f"method={method}", f"dataset={dataset}", "strategy=spread"])
        try:
            validate_overrides(["methd=x"])
        except Exception as exc:
            print(type(exc).__name__)
        print(sorted(m for m in ("torch", "transformers", "numpy", "datasets") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ConfigError", "[]"], out.stdout + out.stderr[-2000:]
