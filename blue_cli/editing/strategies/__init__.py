"""Built-in strategies: every module here registers itself (see blue_cli.config.registry)."""
