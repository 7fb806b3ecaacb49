"""Built-in strategies; importing this package registers them."""

from blue_cli.editing.strategies import blue, spread  # noqa: F401
