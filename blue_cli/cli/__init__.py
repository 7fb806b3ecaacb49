"""The ``blue`` command: Typer commands (commands.py) in front of one Hydra entry point, and the
override checks that run before torch is imported (overrides.py)."""

from blue_cli.cli.commands import app, main

__all__ = ["app", "main"]
