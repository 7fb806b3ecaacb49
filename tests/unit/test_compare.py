"""Comparison reports and plots on hand-made run folders (no model needed)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from omegaconf import OmegaConf

from blue_cli.reporting.compare import (
    ReportError,
    compare,
    default_baseline,
    differing_keys,
    expand_run_dirs,
    flatten,
    load_runs,
    relative_change,
)
from blue_cli.reporting.render import render, to_csv, wrap_header

# (model, strategy) -> (efficacy, generalization, specificity, target_logprob_gain)
RATES = {
    ("m-a", "spread"): (0.5, 0.4, 0.8, 1.0),
    ("m-a", "blue"): (0.75, 0.5, 0.6, 3.0),
    ("m-b", "spread"): (0.2, 0.0, 0.5, 2.0),
    ("m-b", "blue"): (0.1, 0.3, 0.55, 1.0),
}


def make_run(folder, model, strategy, rates, steps=3, evals=None, layers=None):
    folder.mkdir(parents=True)
    cfg = {
        "model": {"name": model, "source": model, "layers": layers or ([1, 2] if model == "m-a" else [3, 4])},
        "method": {"name": "memit", "target": {"steps": steps, "lr": 0.5}},
        "strategy": {"name": strategy, **({"share": "equal"} if strategy == "spread" else {})},
        "dataset": {"name": "counterfact"},
        "num_edits": 4,
        "batch_size": 2,
        "seed": 0,
    }
    OmegaConf.save(OmegaConf.create(cfg), folder / "config.yaml")
    eff, gen, spe, gain = rates
    summary = {
        "efficacy": eff,
        "generalization": gen,
        "specificity": spe,
        "target_logprob_gain": gain,
        "model": model,
        "method": "memit",
        "strategy": strategy,
        "dataset": "counterfact",
        "num_edits": 4,
        "batch_size": 2,
        "written_layers": [1],
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = evals or []
    (folder / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture()
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, ((model, strategy), rates) in enumerate(RATES.items()):
        make_run(root / f"{i}_{model}_memit_{strategy}_counterfact", model, strategy, rates)
    (root / "multirun.yaml").write_text("{}\n")
    return root


def test_flatten_nests_with_dots_and_keeps_lists():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}) == {
        "a.b": 1,
        "a.c.d": None,
        "e": [1, 2],
        "f": {},
    }


def test_sweep_folder_expands_to_its_jobs_in_job_order(tmp_path):
    for i in (10, 2, 0):
        make_run(tmp_path / "sw" / f"{i}_x", "m-a", "blue", (0.1, 0.1, 0.1, 0.1))
    single = make_run(tmp_path / "single", "m-a", "blue", (0.1, 0.1, 0.1, 0.1))
    found = expand_run_dirs([tmp_path / "sw", single])
    assert [p.name for p in found] == ["0_x", "2_x", "10_x", "single"]


@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_a_folder_without_runs_is_a_one_line_error(tmp_path, bad):
    if bad == "empty":
        (tmp_path / bad).mkdir()
    with pytest.raises(ReportError, match=bad) as info:
        expand_run_dirs([tmp_path / bad])
    assert "\n" not in str(info.value)


def test_differing_keys_skip_shown_columns_and_what_they_explain(tmp_path):
    # steps differs between two runs alike on every shown column: it must be shown.
    # model.layers follows model and strategy.share follows strategy: hidden.
    make_run(tmp_path / "a", "m-a", "spread", RATES[("m-a", "spread")], steps=3)
    make_run(tmp_path / "b", "m-a", "spread", RATES[("m-a", "spread")], steps=5)
    make_run(tmp_path / "c", "m-b", "blue", RATES[("m-b", "blue")], steps=5)
    runs = load_runs([tmp_path / n for n in "abc"])
    assert differing_keys(runs) == ["method.target.steps"]
    table = compare(runs)
    assert table.columns[:8] == [
        "run",
        "model",
        "method",
        "strategy",
        "dataset",
        "edits",
        "batch",
        "method.target.steps",
    ]
    assert [r["method.target.steps"] for r in table.rows] == ["3", "5", "5"]


def test_relative_change_against_the_matching_baseline(sweep):
    table = compare(load_runs([sweep]), "strategy=spread")
    by_run = {(r["model"], r["strategy"]): r for r in table.rows}
    # Computed by hand: m-a blue vs m-a spread, m-b blue vs m-b spread (never across models).
    expected = {
        ("m-a", "efficacy"): 50.0,
        ("m-a", "generalization"): 25.0,
        ("m-a", "specificity"): -25.0,
        ("m-a", "target_logprob_gain"): 200.0,
        ("m-b", "efficacy"): -50.0,
        ("m-b", "generalization"): None,
        ("m-b", "specificity"): 10.0,
        ("m-b", "target_logprob_gain"): -50.0,
    }
    for (model, metric), value in expected.items():
        got = by_run[(model, "blue")][f"{metric} vs spread (%)"]
        assert got == pytest.approx(value) if value is not None else got is None, (model, metric, got)
        assert by_run[(model, "spread")][f"{metric} vs spread (%)"] is None
    known = [v for v in expected.values() if v is not None]
    assert table.average_change == pytest.approx(sum(known) / len(known))
    assert table.changes_counted == 7
    assert table.baseline == "strategy=spread"


def test_relative_change_is_undefined_on_a_zero_or_missing_base():
    assert relative_change(0.3, 0.0) is None
    assert relative_change(None, 0.5) is None
    assert relative_change(0.3, -0.6) == pytest.approx(150.0)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("method=memit", "does not vary.*choose: model, strategy"),
        ("strategy=rome", "matches no run.*choose: blue, spread"),
        ("strategy", "KEY=VALUE"),
    ],
)
def test_bad_baselines_are_one_line_errors(sweep, spec, match):
    with pytest.raises(ReportError, match=match) as info:
        compare(load_runs([sweep]), spec)
    assert "\n" not in str(info.value)


def test_default_baseline_only_for_spread_comparisons(sweep, tmp_path):
    assert default_baseline(load_runs([sweep])) == "strategy=spread"
    make_run(tmp_path / "one", "m-a", "blue", RATES[("m-a", "blue")])
    assert default_baseline(load_runs([tmp_path / "one"])) is None


def test_csv_keeps_full_precision_and_parses(sweep):
    text = to_csv(compare(load_runs([sweep]), "model=m-a"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4
    b_blue = next(r for r in rows if r["model"] == "m-b" and r["strategy"] == "blue")
    assert float(b_blue["efficacy vs m-a (%)"]) == pytest.approx(100 * (0.1 - 0.75) / 0.75)
    assert rows[0]["efficacy vs m-a (%)"] == ""


def test_markdown_and_json_hold_every_run(sweep):
    table = compare(load_runs([sweep]), "strategy=spread")
    md = render(table, "md").splitlines()
    assert md[0].startswith("| run | model |") and len([line for line in md if line.startswith("| ")]) == 5
    assert md[-1].startswith("average relative change vs strategy=spread:")
    payload = json.loads(render(table, "json"))
    assert [r["strategy"] for r in payload["runs"]] == ["spread", "blue", "spread", "blue"]
    assert payload["average_relative_change"] == pytest.approx(table.average_change)


@pytest.mark.parametrize("width", [50, 80, 200])
def test_terminal_table_fits_and_never_cuts_a_number(sweep, width):
    table = compare(load_runs([sweep]), "strategy=spread")
    text = render(table, "table", width=width)
    assert max(len(line) for line in text.splitlines() if not line.startswith("average")) <= width
    for row in table.rows:
        for col in table.columns[7:]:
            value = row[col]
            if value is not None:
                shown = f"{value:+.2f}" if col.endswith("(%)") else f"{value:.4f}"
                assert shown in text, (col, shown)
    # Hydra job folder names are shortened to what the other columns do not say.
    assert "0_m-a_memit" not in text and "│ 0 " in text


def test_wrap_header_breaks_at_separators():
    assert wrap_header("target_logprob_gain vs spread (%)") == "target_\nlogprob_\ngain vs\nspread (%)"
    assert wrap_header("efficacy") == "efficacy"


# ----------------------------------------------------------------------------- plots


def _curve_runs(tmp_path):
    evals_a = [
        {"batches": 1, "edits": 2, "efficacy": 0.5, "general.sst2.accuracy": 0.6},
        {"batches": 2, "edits": 4, "efficacy": 0.25, "general.sst2.accuracy": 0.55},
    ]
    evals_b = [
        {"batches": 1, "edits": 3, "efficacy": 1.0},
        {"batches": 2, "edits": 6, "efficacy": 0.75},
        {"batches": 3, "edits": 9, "efficacy": 0.5},
    ]
    a = make_run(tmp_path / "0_m-a_memit_spread_counterfact", "m-a", "spread", RATES[("m-a", "spread")], evals=evals_a)
    b = make_run(tmp_path / "1_m-a_memit_blue_counterfact", "m-a", "blue", RATES[("m-a", "blue")], evals=evals_b)
    return load_runs([a, b]), evals_a, evals_b


def test_curve_figure_plots_each_run_against_its_edits(tmp_path):
    from blue_cli.reporting.plots import curve_figure, curve_metrics

    runs, evals_a, evals_b = _curve_runs(tmp_path)
    assert curve_metrics(runs) == ["efficacy", "general.sst2.accuracy"]
    ax = curve_figure(runs, "efficacy").axes[0]
    spread, blue = ax.lines
    assert list(spread.get_xdata()) == [r["edits"] for r in evals_a]
    assert list(spread.get_ydata()) == [r["efficacy"] for r in evals_a]
    assert list(blue.get_xdata()) == [r["edits"] for r in evals_b]
    assert list(blue.get_ydata()) == [1.0, 0.75, 0.5]
    assert (spread.get_linestyle(), blue.get_linestyle()) == ("--", "-")
    assert ax.get_xlabel() == "number of edits" and ax.get_ylabel() == "efficacy"
    assert "m-a" in ax.get_title() and "counterfact" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["spread", "blue"]
    general = curve_figure(runs, "general.sst2.accuracy").axes[0]
    assert len(general.lines) == 1 and list(general.lines[0].get_ydata()) == [0.6, 0.55]


def test_bar_figure_heights_are_the_summary_values(tmp_path):
    from blue_cli.reporting.plots import bar_figure

    runs, _, _ = _curve_runs(tmp_path)
    fig = bar_figure(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["efficacy", "generalization", "specificity", "target_logprob_gain"]
    for j, ax in enumerate(fig.axes):
        assert [p.get_height() for p in ax.patches] == [RATES[("m-a", s)][j] for s in ("spread", "blue")]
    assert "m-a" in fig.get_suptitle()


def test_write_plots_gives_readable_pngs(tmp_path):
    from matplotlib.image import imread

    from blue_cli.reporting.plots import write_plots

    runs, _, _ = _curve_runs(tmp_path)
    written = write_plots(runs, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["bars_headline.png", "curve_efficacy.png", "general_sst2_accuracy.png"]
    for path in written:
        image = imread(path)
        assert image.shape[0] >= 300 and image.shape[1] >= 500, (path, image.shape)
        assert image.std() > 0.01  # not a blank canvas
    assert not list((tmp_path / "plots").glob(".*.tmp"))
