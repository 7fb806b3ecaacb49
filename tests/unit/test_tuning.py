"""The tuning rule and its record (blue_cli/reporting/tuning.py, scripts/tune_real.py): which
value of a knob is kept, and that the docs and the model's hparams file show what the stored
tuning kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from blue_cli.reporting.readme_results import current_block
from blue_cli.reporting.tuning import TUNING_BEGIN, TUNING_END, collect_row, keep, render_tuning

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "benchmarks" / "results" / "tuning-smollm2-135m.json"


def _row(value, eff, gen, spe=0.70, pre_spe=0.72, ppl=20.0, pre_ppl=20.0):
    return {
        "value": value,
        "efficacy": eff,
        "generalization": gen,
        "specificity": spe,
        "pre_specificity": pre_spe,
        "perplexity": ppl,
        "pre_perplexity": pre_ppl,
    }


def test_a_value_is_kept_only_when_it_beats_the_default_by_the_margin():
    default = _row(0.5, 0.6, 0.4)  # score 0.5
    assert keep([default, _row(0.1, 0.6, 0.5)]) == 0.5  # +0.05: under the margin
    assert keep([default, _row(0.1, 0.7, 0.5), _row(1.0, 0.8, 0.6)]) == 1.0  # +0.1 and +0.2: the best
    assert keep([default, _row(1.0, 0.8, 0.6, spe=0.60)]) == 0.5  # specificity fell 0.12 below pre-edit
    assert keep([default, _row(1.0, 0.8, 0.6, ppl=22.5)]) == 0.5  # perplexity rose 12.5%
    assert keep([default, _row(1.0, 0.8, 0.6, ppl=21.9)]) == 1.0  # 9.5%: within 10%


def test_an_inadmissible_default_gives_way_to_the_best_admissible_value():
    default = _row(0.5, 1.0, 1.0, spe=0.50)
    assert keep([default, _row(0.1, 0.3, 0.2), _row(1.0, 0.4, 0.2)]) == 1.0
    assert keep([default, _row(0.1, 0.3, 0.2, spe=0.1)]) == 0.5  # nothing admissible: the default stays


def test_a_run_folders_row_reads_its_summary_and_target_steps(tmp_path):
    summary = {"efficacy": 0.9, "generalization": 0.7, "specificity": 0.6, "pre_specificity": 0.65}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    batches = [{"target_steps": [10.0, 20.0]}, {"target_steps": [5.0, 25.0]}]
    (tmp_path / "batches.jsonl").write_text("\n".join(json.dumps(b) for b in batches) + "\n")
    row = collect_row(tmp_path, "run-a")
    assert row["efficacy"] == 0.9 and row["perplexity"] is None and row["run"] == "run-a"
    assert row["target_steps_mean"] == pytest.approx(15.0)


def _stored() -> dict:
    if not STORE.is_file():
        pytest.skip("no stored tuning (make tune-smollm2 writes it)")
    return json.loads(STORE.read_text(encoding="utf-8"))


def test_the_docs_tuning_block_is_the_rendering_of_the_stored_tuning():
    payload = _stored()
    page = (ROOT / "docs" / "real-models.md").read_text(encoding="utf-8")
    assert current_block(page, TUNING_BEGIN, TUNING_END) == render_tuning(payload)
    for knob in payload["kept"]:  # the kept values follow from the stored rows by the rule
        rows = [r for r in payload["rows"] if r["knob"] == knob]
        assert payload["kept"][knob] == keep(rows)


def test_the_composed_model_config_holds_the_kept_values():
    """``model=smollm2-135m`` (its hparams files) composes to what the stored tuning kept."""
    from blue_cli.config.overrides import compose_config

    payload = _stored()
    for method in ("memit_seq", "alphaedit"):
        cfg = compose_config([f"model={payload['model']}", f"method={method}"])
        for knob, value in payload["kept"].items():
            if OmegaConf.select(cfg, knob) is not None or method == "alphaedit":
                assert OmegaConf.select(cfg, knob) == value, (method, knob)
