"""blue: a command-line runner for locate-then-edit knowledge editing experiments.

``from blue_cli import edit, evaluate`` is the Python API (see :mod:`blue_cli.api`).
"""

from pathlib import Path

__version__ = "0.1.0"
# Data shipped inside the package: tiny models, bundled samples, the paper's tables.
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
# The name on the package index (``blue-cli`` there is another project); the command is ``blue``.
DISTRIBUTION = "blue-editing"


def install_hint(extra: str) -> str:
    """How to install an optional extra, from the index or from a checkout of this repository."""
    return f'pip install "{DISTRIBUTION}[{extra}]" (from a checkout: pip install -e ".[{extra}]")'


def __getattr__(name: str):
    """``edit`` and ``evaluate`` load torch and transformers only when asked for."""
    if name in ("edit", "evaluate", "EditResult"):
        from blue_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'blue_cli' has no attribute {name!r}")
