"""Imports point one way: cli -> runner -> {editing, evaluation, data, models, reporting}."""

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
FIRST_PARTY = {"blue_cli", "tests", "tiny_build"}


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
        from blue_cli.cli.overrides import validate_overrides
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
