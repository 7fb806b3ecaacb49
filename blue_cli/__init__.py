"""blue: a command-line runner for locate-then-edit knowledge editing experiments.

``from blue_cli import edit, evaluate`` is the Python API (see :mod:`blue_cli.api`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``edit`` and ``evaluate`` load torch and transformers only when asked for."""
    if name in ("edit", "evaluate", "EditResult"):
        from blue_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'blue_cli' has no attribute {name!r}")
