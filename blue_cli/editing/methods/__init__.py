"""Built-in methods; importing this package registers them."""

from blue_cli.editing.methods import alphaedit, memit, pmet, prune, rect  # noqa: F401
