"""Built-in methods: every module here registers itself (see blue_cli.config.registry)."""
