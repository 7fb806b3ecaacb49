"""Every `+experiment=...` composes with a tiny model, pins the paper's settings, and sweeps valid values."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from blue_cli.config.overrides import compose_config, validate_overrides
from blue_cli.config.schema import check_setting, conf_dir, group_choices, register_configs
from blue_cli.errors import ConfigError

EXPERIMENTS = group_choices("experiment")


GENERAL = ["sst2", "mrpc", "cola", "rte", "mmlu", "nli"]
MAIN = {
    "model": ["llama3", "gpt-j", "gpt2-xl"],
    "method": ["memit", "alphaedit", "rect", "prune"],
    "strategy": ["spread", "blue"],
    "dataset": ["counterfact", "zsre"],
}
# What the paper reports for each setting (arXiv 2502.03748, NeurIPS 2025): edits, batch size,
# general capability (tasks, every k batches) and the sweep, written out here from its text.
PAPER = {
    "blue_table": (2000, 100, GENERAL, 5, MAIN),  # Table 2
    "blue_llama3_counterfact": (
        2000, 100, GENERAL, 5,
        {**MAIN, "model": ["llama3"], "method": ["memit", "alphaedit"], "dataset": ["counterfact"]},
    ),
    "blue_zsre": (2000, 100, GENERAL, 5, {**MAIN, "dataset": ["zsre"]}),
    "blue_gptj": (2000, 100, GENERAL, 5, {**MAIN, "model": ["gpt-j"]}),
    "blue_batch10k": (10000, 10000, [], None, MAIN),  # Table 6
    "blue_pmet": (2000, 100, GENERAL, 5, {**MAIN, "method": ["pmet_seq"]}),  # Table 9, sequential
    "blue_pmet_batch10k": (10000, 10000, [], None, {**MAIN, "method": ["pmet"]}),  # Table 9, one batch
    "blue_llama2": (2000, 100, GENERAL, 5, {**MAIN, "model": ["llama2-13b"], "method": ["memit", "alphaedit"]}),
    "blue_general": (3000, 100, GENERAL, 5, {**MAIN, "model": ["llama3"]}),  # Fig. 6: every 500 edits
    "blue_efficiency": (300, 1, [], None, MAIN),  # Fig. 12 and Table 8
}  # fmt: skip


def test_every_setting_of_the_paper_is_an_experiment():
    assert set(EXPERIMENTS) - {"long_horizon"} == set(PAPER)  # long_horizon: beyond the paper, tested below


@pytest.mark.parametrize("name", sorted(PAPER))
def test_experiment_pins_the_paper_settings_and_yields_to_the_command_line(name):
    num_edits, batch_size, general, every, sweep = PAPER[name]
    cfg = compose_config([f"+experiment={name}"])
    assert (cfg.num_edits, cfg.batch_size) == (num_edits, batch_size)
    assert list(cfg.eval.general) == general and cfg.eval.general_every == every
    assert _sweeper_params(name) == sweep
    assert cfg.model.name in sweep["model"] and cfg.method.name in sweep["method"]
    # PRUNE as the reference's evaluation script wrote it, which the paper's PRUNE rows ran
    assert compose_config([f"+experiment={name}", "method=prune"]).method.evaluated_weights == "edited_plus_restrained"
    one_batch = batch_size == num_edits
    assert cfg.setting.name == ("batch" if one_batch else "sequential")
    cut = ["num_edits=4"] if one_batch else ["num_edits=4", "batch_size=2"]  # one batch stays one batch
    tiny = compose_config([f"+experiment={name}", "model=tiny-gpt2", *cut])
    assert (tiny.model.name, tiny.num_edits, tiny.batch_size) == ("tiny-gpt2", 4, 4 if one_batch else 2)
    assert list(tiny.eval.general) == general


def test_the_paper_models_and_their_critical_layers():
    """Llama3 is the Instruct model; Table 7's Llama-2-13B edits layers 30-34."""
    expected = {
        "llama3": ("meta-llama/Meta-Llama-3-8B-Instruct", [4, 5, 6, 7, 8]),
        "gpt-j": ("EleutherAI/gpt-j-6B", [3, 4, 5, 6, 7, 8]),
        "gpt2-xl": ("gpt2-xl", [13, 14, 15, 16, 17]),
        "llama2-13b": ("meta-llama/Llama-2-13b-hf", [30, 31, 32, 33, 34]),
    }
    for model, (source, layers) in expected.items():
        cfg = compose_config([f"model={model}"])
        assert (cfg.model.source, list(cfg.model.layers)) == (source, layers), model
        assert max(layers) < cfg.model.shape.n_layers


def test_alphaedit_blue_uses_the_papers_alpha_per_model():
    """AlphaEdit+BLUE's L2 (alpha) as the paper's runs retune it; AlphaEdit as published keeps 10."""
    for model, alpha in {"llama3": 1, "gpt-j": 95, "gpt2-xl": 80, "llama2-13b": 10}.items():
        blue = compose_config(["+experiment=blue_table", f"model={model}", "method=alphaedit", "strategy=blue"])
        spread = compose_config(["+experiment=blue_table", f"model={model}", "method=alphaedit", "strategy=spread"])
        assert (blue.method.l2, spread.method.l2) == (alpha, 10), model


# The BLUE repository's one-batch PMET files for GPT-J (hparams/PMET/EleutherAI_gpt-j-6B-
# {mcf,zsre}-batch[-blue].json): v_lr, steps, kl_factor and lambda per (strategy, dataset).
GPTJ_PMET_BATCH = {
    ("spread", "counterfact"): (0.2, 30, 1.0, 6000),
    ("blue", "counterfact"): (0.2, 30, 1.0, 1000),
    ("spread", "zsre"): (0.2, 30, 1.0, 4500),
    ("blue", "zsre"): (0.2, 30, 1.0, 4500),
}
# ... and the sequential files every other PMET job reads (EleutherAI_gpt-j-6B[-blue].json).
GPTJ_PMET_SEQUENTIAL = {"spread": (0.5, 25, 0.0625, 15000), "blue": (0.5, 25, 0.0625, 1000)}


def _pmet_settings(cfg) -> tuple:
    t = cfg.method.target
    return (t.lr, t.steps, t.kl_factor, cfg.method.cov_weight)


def test_each_job_of_the_pmet_batch_sweep_reads_gptj_one_batch_file():
    """blue_pmet_batch10k's jobs get GPT-J's one-batch settings per strategy and dataset; the
    other models and the sequential experiment keep their own; pmet_seq in one batch is pmet."""
    sweep = _sweeper_params("blue_pmet_batch10k")
    assert "gpt-j" in sweep["model"]
    for model in sweep["model"]:
        for strategy in sweep["strategy"]:
            for dataset in sweep["dataset"]:
                job = [f"model={model}", f"strategy={strategy}", f"dataset={dataset}"]
                batch = compose_config(["+experiment=blue_pmet_batch10k", *job])
                sequential = compose_config(["+experiment=blue_pmet", *job, "method=pmet"])
                if model == "gpt-j":
                    assert _pmet_settings(batch) == GPTJ_PMET_BATCH[(strategy, dataset)], job
                    assert _pmet_settings(sequential) == GPTJ_PMET_SEQUENTIAL[strategy], job
                else:
                    assert _pmet_settings(batch) == _pmet_settings(sequential), job
    for strategy, dataset in GPTJ_PMET_BATCH:
        job = ["model=gpt-j", f"strategy={strategy}", f"dataset={dataset}"]
        seq_method = compose_config(["+experiment=blue_pmet_batch10k", *job, "method=pmet_seq"])
        assert _pmet_settings(seq_method) == GPTJ_PMET_BATCH[(strategy, dataset)]
    # the command line still wins over the file
    cfg = compose_config(["+experiment=blue_pmet_batch10k", "model=gpt-j", "method.cov_weight=77"])
    assert cfg.method.cov_weight == 77


def test_the_batch_setting_is_one_batch_of_num_edits():
    cfg = compose_config(["setting=batch", "num_edits=7"])
    assert (cfg.setting.name, cfg.num_edits, cfg.batch_size) == ("batch", 7, 7)
    assert compose_config(["num_edits=7"]).setting.name == "sequential"
    for overrides in (["setting=batch", "num_edits=7", "batch_size=3"], ["+experiment=blue_table", "setting=batch"]):
        with pytest.raises(ConfigError) as err:
            compose_config(overrides)
        msg = str(err.value)
        assert "\n" not in msg and "setting=batch" in msg and "batch_size=" in msg and "setting=sequential" in msg
    with pytest.raises(ConfigError, match=r"unknown setting 'bach' \(choose: batch, sequential\)"):
        compose_config(["setting=bach"])
    # a run folder's config.yaml from before settings existed (blue analyze --run reads it) ran sequentially
    check_setting(OmegaConf.create({"num_edits": 7, "batch_size": 3}))
    with pytest.raises(ConfigError):
        check_setting(OmegaConf.create({"num_edits": 7, "batch_size": 3, "setting": {"name": "batch"}}))


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


def test_every_sweep_value_of_an_experiment_composes():
    """Each (key, value) an experiment sweeps composes with the first experiment that sweeps it
    (the experiments share most values; composing each once keeps this test quick)."""
    seen: set[tuple[str, str]] = set()
    for name in PAPER:
        params = _sweeper_params(name)
        assert set(params) == {"model", "method", "strategy", "dataset"}
        for key, values in params.items():
            assert set(values) <= set(group_choices(key)), (key, values)
            new = [v for v in values if (key, v) not in seen]
            if new:
                validate_overrides([f"+experiment={name}", f"{key}={','.join(new)}"])
                seen.update((key, v) for v in new)
    assert ("model", "llama2-13b") in seen and ("method", "pmet") in seen and ("method", "pmet_seq") in seen


def test_unknown_experiment_is_one_line_naming_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose_config(["+experiment=blue_tabel"])
    msg = str(err.value)
    assert "\n" not in msg and "unknown experiment 'blue_tabel'" in msg and "blue_table" in msg
    with pytest.raises(ConfigError, match=r"add it with \+experiment="):
        compose_config(["experiment=blue_table"])


@pytest.mark.parametrize("name", sorted(PAPER))
def test_blue_plan_plans_every_experiment(name, tmp_path):
    """``blue plan +experiment=X`` plans the experiment's own run: its batch, method and the
    BLUE boundary layers of its model (no download)."""
    import json

    from tests.conftest import invoke_blue

    cfg = compose_config([f"+experiment={name}"])
    result = invoke_blue(["plan", f"+experiment={name}", "--json"], tmp_path)
    assert result.code == 0, result.stderr
    facts = json.loads(result.stdout)["facts"]
    assert (facts["batch_size"], facts["method"], facts["strategy"]) == (cfg.batch_size, cfg.method.name, "blue")
    assert facts["written_layers"] == [cfg.model.layers[0], cfg.model.layers[-1]]
    assert facts["d"] == cfg.model.shape.hidden_size and facts["d_k"] == cfg.model.shape.intermediate_size


def test_long_horizon_edits_the_whole_file_with_the_collapse_monitor_on():
    cfg = compose_config(["+experiment=long_horizon"])
    assert cfg.dataset.allow_fewer and cfg.num_edits >= 20000  # a whole CounterFact (20,877) or more
    assert cfg.eval_every == cfg.eval.perplexity_every == 10 and cfg.batch_size == 100
    assert cfg.eval.wild and not cfg.eval.generation and cfg.eval.max_cases == 2000
    anchored = compose_config(["+experiment=long_horizon", "dataset=zsre", "method.norm_anchor.enabled=true"])
    assert anchored.dataset.name == "zsre" and anchored.method.norm_anchor.enabled and anchored.dataset.allow_fewer
