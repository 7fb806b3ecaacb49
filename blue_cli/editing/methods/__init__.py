"""Built-in methods; importing this package registers them."""

from blue_cli.editing.methods import memit  # noqa: F401
