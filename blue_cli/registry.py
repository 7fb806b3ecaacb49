"""Name -> class tables for methods and strategies, filled by decorators in each class's file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from blue_cli.errors import ConfigError

T = TypeVar("T")

METHODS: dict[str, type] = {}
STRATEGIES: dict[str, type] = {}


def _register(table: dict[str, type], name: str) -> Callable[[type[T]], type[T]]:
    def decorator(cls: type[T]) -> type[T]:
        table[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def register_method(name: str):
    return _register(METHODS, name)


def register_strategy(name: str):
    return _register(STRATEGIES, name)


def _lookup(table: dict[str, type], kind: str, name: str) -> type:
    _load_builtins()
    if name not in table:
        raise ConfigError(f"unknown {kind} '{name}' (choose: {', '.join(sorted(table))})")
    return table[name]


def method_class(name: str) -> type:
    return _lookup(METHODS, "method", name)


def strategy_class(name: str) -> type:
    return _lookup(STRATEGIES, "strategy", name)


def _load_builtins() -> None:
    """Import the built-in method and strategy modules so their decorators run."""
    import blue_cli.editing.methods  # noqa: F401
    import blue_cli.editing.strategies  # noqa: F401
