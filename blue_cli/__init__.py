"""blue: a command-line runner for locate-then-edit knowledge editing experiments."""

__version__ = "0.1.0"
