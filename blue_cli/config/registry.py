"""Name -> class tables for methods, strategies and datasets, filled by decorators in each class's file.

Adding a method, strategy or dataset is one module plus one YAML: every module of the
``editing/methods``, ``editing/strategies`` and ``datasets`` packages is imported on first
lookup, and a method's or dataset's decorator also names its config schema.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

from blue_cli.errors import ConfigError

T = TypeVar("T")

METHODS: dict[str, type] = {}
METHOD_SCHEMAS: dict[str, type] = {}
STRATEGIES: dict[str, type] = {}
STRATEGY_SCHEMAS: dict[str, type | None] = {}
DATASETS: dict[str, type] = {}
DATASET_SCHEMAS: dict[str, type] = {}

METHOD_PACKAGE, STRATEGY_PACKAGE, DATASET_PACKAGE = (
    "blue_cli.editing.methods",
    "blue_cli.editing.strategies",
    "blue_cli.datasets",
)


def register_method(name: str, *, config: type, variants: tuple[str, ...] = ()) -> Callable[[type[T]], type[T]]:
    """Register a method class under ``name`` (and ``variants``, e.g. ``memit_seq``),
    each validated by the dataclass schema ``config``; a variant's YAML sets what differs."""

    def decorator(cls: type[T]) -> type[T]:
        cls.name = name  # type: ignore[attr-defined]
        for key in (name, *variants):
            METHODS[key] = cls
            METHOD_SCHEMAS[key] = config
        return cls

    return decorator


def register_strategy(name: str, *, config: type | None = None) -> Callable[[type[T]], type[T]]:
    """Register a strategy class under ``name``; ``config``: its own schema (a subclass of
    ``StrategyConfig`` with the strategy's keys and, optionally, a ``check`` classmethod),
    None for the shared one. Its YAML names it as ``/schema/strategy/<name>@_here_``."""

    def decorator(cls: type[T]) -> type[T]:
        STRATEGIES[name] = cls
        STRATEGY_SCHEMAS[name] = config
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def register_dataset(name: str, *, config: type) -> Callable[[type[T]], type[T]]:
    """Register a dataset (its loader and evaluator) under ``name``, validated by ``config``."""

    def decorator(cls: type[T]) -> type[T]:
        cls.name = name  # type: ignore[attr-defined]
        DATASETS[name] = cls
        DATASET_SCHEMAS[name] = config
        return cls

    return decorator


SOLVERS = ("auto", "direct", "updated")


def check_solver(method: type, choice: str) -> None:
    """One-line error for an unknown ``method.solver``, or ``updated`` for a method class that
    does not declare the updated solver (``EditMethod.updated_solver``)."""
    if choice not in SOLVERS:
        raise ConfigError(f"unknown method.solver '{choice}' (choose: {', '.join(SOLVERS)})")
    if choice == "updated" and not getattr(method, "updated_solver", False):
        raise ConfigError(
            f"method {method.name} has no updated solver (it solves directly): use method.solver=direct or auto"
        )


def _lookup(table: dict[str, type], kind: str, name: str, package: str) -> type:
    load_package(package)
    if name not in table:
        raise ConfigError(f"unknown {kind} '{name}' (choose: {', '.join(sorted(table))})")
    return table[name]


def method_class(name: str) -> type:
    return _lookup(METHODS, "method", name, METHOD_PACKAGE)


def strategy_class(name: str) -> type:
    return _lookup(STRATEGIES, "strategy", name, STRATEGY_PACKAGE)


def dataset_class(name: str) -> type:
    return _lookup(DATASETS, "dataset", name, DATASET_PACKAGE)


def method_schemas() -> dict[str, type]:
    """Method name -> config dataclass, for Hydra's ConfigStore."""
    load_package(METHOD_PACKAGE)
    return dict(METHOD_SCHEMAS)


def strategy_schemas() -> dict[str, type | None]:
    """Strategy name -> its config dataclass (None: the shared StrategyConfig), for Hydra's ConfigStore."""
    load_package(STRATEGY_PACKAGE)
    return dict(STRATEGY_SCHEMAS)


def dataset_schemas() -> dict[str, type]:
    """Dataset name -> config dataclass, for Hydra's ConfigStore."""
    load_package(DATASET_PACKAGE)
    return dict(DATASET_SCHEMAS)


def load_package(package_name: str) -> None:
    """Import every module of one of the packages above so their decorators run.

    Method and dataset modules import torch and transformers only inside the functions
    that compute, so reading their schemas (checking overrides) stays fast.
    """
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package_name}.{info.name}")


def load_builtins() -> None:
    """Import every method, strategy and dataset module."""
    for package_name in (METHOD_PACKAGE, STRATEGY_PACKAGE, DATASET_PACKAGE):
        load_package(package_name)
