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
        if rel.startswith("reporting/") or rel == "cli.py":
            continue
        assert not any(m.startswith("rich") for m in _imports(f)), rel


def test_no_method_name_branches_in_strategies_or_runner():
    for f in [*_files("editing/strategies"), PKG / "runner.py"]:
        text = f.read_text(encoding="utf-8")
        for name in ("memit", "alphaedit", "pmet", "rect", "prune"):
            assert f'== "{name}"' not in text and f"== '{name}'" not in text, (f, name)
