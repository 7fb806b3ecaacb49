"""Every `+experiment=...` composes with a tiny model, pins the paper's settings, and sweeps valid values."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from blue_cli.cli.overrides import compose_config, validate_overrides
from blue_cli.config.schema import conf_dir, group_choices, register_configs
from blue_cli.errors import ConfigError

EXPERIMENTS = group_choices("experiment")
# The BLUE paper's tables; long_horizon (a whole-file stream with the collapse monitor) is tested below.
PAPER = [e for e in EXPERIMENTS if e != "long_horizon"]


def test_the_experiments_are_there():
    assert {"blue_table", "blue_llama3_counterfact", "blue_zsre", "blue_gptj"} <= set(EXPERIMENTS)


def _sweeper_params(name: str) -> dict[str, list[str]]:
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    parser = OverridesParser.create()
    out = {}
    for key, value in cfg.hydra.sweeper.params.items():
        (ov,) = parser.parse_overrides([f"{key}={value}"])
        out[key] = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [str(value)]
    return out


@pytest.mark.parametrize("name", PAPER)
def test_experiment_pins_the_paper_settings_and_yields_to_the_command_line(name):
    cfg = compose_config([f"+experiment={name}"])
    assert (cfg.num_edits, cfg.batch_size) == (2000, 100)
    assert list(cfg.eval.general) == ["sst2", "mrpc", "cola", "rte", "mmlu", "nli"] and cfg.eval.general_every == 5
    assert cfg.model.name in ("llama3", "gpt-j", "gpt2-xl")
    tiny = compose_config([f"+experiment={name}", "model=tiny-gpt2", "num_edits=4", "batch_size=2"])
    assert (tiny.model.name, tiny.num_edits, tiny.batch_size) == ("tiny-gpt2", 4, 2)
    assert list(tiny.eval.general) == list(cfg.eval.general)


@pytest.mark.parametrize("name", PAPER)
def test_every_sweep_value_of_an_experiment_composes(name):
    params = _sweeper_params(name)
    assert set(params) == {"model", "method", "strategy", "dataset"}
    for key, values in params.items():
        assert set(values) <= set(group_choices(key)), (key, values)
        validate_overrides([f"+experiment={name}", f"{key}={','.join(values)}"])


def test_the_main_table_sweep_is_the_papers():
    params = _sweeper_params("blue_table")
    assert params == {
        "model": ["llama3", "gpt-j", "gpt2-xl"],
        "method": ["memit", "alphaedit", "rect", "prune"],
        "strategy": ["spread", "blue"],
        "dataset": ["counterfact", "zsre"],
    }
    assert _sweeper_params("blue_zsre")["dataset"] == ["zsre"]
    assert compose_config(["+experiment=blue_zsre"]).dataset.name == "zsre"
    assert compose_config(["+experiment=blue_gptj"]).model.name == "gpt-j"


def test_unknown_experiment_is_one_line_naming_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose_config(["+experiment=blue_tabel"])
    msg = str(err.value)
    assert "\n" not in msg and "unknown experiment 'blue_tabel'" in msg and "blue_table" in msg
    with pytest.raises(ConfigError, match=r"add it with \+experiment="):
        compose_config(["experiment=blue_table"])


def test_long_horizon_edits_the_whole_file_with_the_collapse_monitor_on():
    cfg = compose_config(["+experiment=long_horizon"])
    assert cfg.dataset.allow_fewer and cfg.num_edits >= 20000  # a whole CounterFact (20,877) or more
    assert cfg.eval_every == cfg.eval.perplexity_every == 10 and cfg.batch_size == 100
    assert cfg.eval.wild and not cfg.eval.generation and cfg.eval.max_cases == 2000
    anchored = compose_config(["+experiment=long_horizon", "dataset=zsre", "method.norm_anchor.enabled=true"])
    assert anchored.dataset.name == "zsre" and anchored.method.norm_anchor.enabled and anchored.dataset.allow_fewer
