"""Layer plans of the strategies, and that every method composes with every strategy."""

import pytest

from blue_cli.config.registry import METHODS, STRATEGIES, method_class, strategy_class
from blue_cli.errors import ConfigError


def test_blue_writes_only_boundary_layers():
    assert strategy_class("blue")().written_layers([4, 5, 6, 7, 8]) == [4, 8]


def test_blue_with_one_critical_layer_writes_it_once():
    assert strategy_class("blue")().written_layers([3]) == [3]


def test_spread_writes_every_critical_layer():
    assert strategy_class("spread")().written_layers([13, 14, 15, 16, 17]) == [13, 14, 15, 16, 17]


def test_unknown_names_give_one_line_errors_listing_choices():
    """The choices are the registry's, whatever has been added to it."""
    with pytest.raises(ConfigError) as info:
        strategy_class("bleu")
    assert str(info.value) == f"unknown strategy 'bleu' (choose: {', '.join(sorted(STRATEGIES))})"
    with pytest.raises(ConfigError) as info:
        method_class("memitt")
    assert str(info.value) == f"unknown method 'memitt' (choose: {', '.join(sorted(METHODS))})"
    assert len(METHODS) >= 2 and len(STRATEGIES) >= 2


def test_registries_are_filled_by_decorators():
    method_class("memit")
    assert {"memit"} <= set(METHODS)
    assert {"blue", "spread"} <= set(STRATEGIES)
    assert all(cls.name == name for name, cls in STRATEGIES.items())
    assert all(cls.name == name or name.startswith(cls.name + "_") for name, cls in METHODS.items())
    assert METHODS["memit_seq"] is METHODS["memit"] and METHODS["pmet_seq"] is METHODS["pmet"]


@pytest.mark.parametrize(
    "method,sequential",
    [
        ("memit", False),
        ("memit_seq", True),
        ("alphaedit", True),
        ("pmet", False),
        ("pmet_seq", True),
        ("rect", False),
        ("prune", False),
    ],
)
def test_each_method_keeps_a_key_cache_exactly_as_the_reference_variant_of_its_name(method, sequential):
    from blue_cli.config.overrides import compose_config

    cfg = compose_config([f"method={method}"])
    assert cfg.method.keep_previous_keys is sequential
    assert cfg.method.name == method
    assert ("cov_weight" in cfg.method) is (method != "alphaedit")  # AlphaEdit has no lambda C term


def test_method_sequential_still_works_for_one_release_with_one_warning(caplog):
    """The old key from scripts: read as keep_previous_keys, one warning in the job, none
    in the override check before it (so the user sees it once)."""
    import logging

    from blue_cli.config.overrides import compose_config
    from blue_cli.config.schema import check_run_config

    caplog.set_level(logging.WARNING)
    cfg = compose_config(["method=memit", "method.sequential=true"])
    assert cfg.method.keep_previous_keys is True and cfg.method.sequential is None
    assert not caplog.records
    job = compose_config(["method=memit"])
    job.method.sequential = True
    check_run_config(job)
    assert job.method.keep_previous_keys is True
    assert [r.getMessage() for r in caplog.records] == [
        "method.sequential is deprecated: use method.keep_previous_keys=true"
    ]


def test_a_strategy_can_declare_its_own_config_schema(monkeypatch):
    """register_strategy(name, config=...) stores that schema for /schema/strategy/<name>, and
    the run's checks call its check; the built-ins use the shared StrategyConfig."""
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from blue_cli.config import registry
    from blue_cli.config.schema import StrategyConfig, check_run_config, register_configs

    @dataclass
    class WindowConfig(StrategyConfig):
        name: str = "window"
        width: int = 2

        @classmethod
        def check(cls, node):
            if node.width < 1:
                raise ConfigError(f"strategy.width must be >= 1, got {node.width}")

    registry.load_builtins()
    monkeypatch.setitem(registry.STRATEGIES, "window", strategy_class("spread"))
    monkeypatch.setitem(registry.STRATEGY_SCHEMAS, "window", WindowConfig)
    register_configs()
    stored = ConfigStore.instance().repo["schema"]["strategy"]
    assert OmegaConf.get_type(stored["window.yaml"].node) is WindowConfig
    assert OmegaConf.get_type(stored["blue.yaml"].node) is StrategyConfig
    from blue_cli.config.overrides import compose_config

    cfg = compose_config([])
    cfg.strategy = OmegaConf.structured(WindowConfig(width=0))
    with pytest.raises(ConfigError, match="strategy.width must be >= 1, got 0"):
        check_run_config(cfg)
