"""Which run folders the real-model scripts reuse (scripts/run_folders.py)."""

from __future__ import annotations

import json

from omegaconf import OmegaConf
from run_folders import finished_with, same_on_shared_keys

from blue_cli.config.overrides import compose_config


def test_configs_agree_when_every_shared_key_has_the_same_value():
    old = {"method": {"cov_weight": 1500.0, "target": {"lr": 0.5}}, "model_hparams": {"prune_log_base": 2.7}}
    new = {"method": {"cov_weight": 1500.0, "target": {"lr": 0.5, "new_knob": 1}}, "per_method": {}}
    assert same_on_shared_keys(old, new)
    assert not same_on_shared_keys(old, {**new, "method": {"cov_weight": 150.0, "target": {"lr": 0.5}}})
    assert not same_on_shared_keys({"layers": [3, 4]}, {"layers": [3, 4, 5]})


def _finished(folder, cfg):
    folder.mkdir()
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    (folder / "summary.json").write_text(json.dumps({"num_edits": 1}), encoding="utf-8")


def test_a_finished_folder_of_an_older_schema_is_reused_only_for_the_same_values(tmp_path):
    """A folder written before ``per_method`` existed (its config lacks the key) and with a key
    the schema no longer has: reused for the same overrides, refused for another lambda."""
    overrides = ["model=tiny-gpt2", "method=memit", "num_edits=4"]
    cfg = OmegaConf.to_container(compose_config(overrides), resolve=True)
    del cfg["per_method"]
    cfg["model_hparams"]["prune_log_base"] = 2.718281828459045
    _finished(tmp_path / "run", OmegaConf.create(cfg))
    assert finished_with(tmp_path / "run", overrides) is True
    assert finished_with(tmp_path / "run", [*overrides, "method.cov_weight=7"]) is False
    assert finished_with(tmp_path / "none", overrides) is None
