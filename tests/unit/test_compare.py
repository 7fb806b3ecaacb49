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


def _with_summary(folder, **extra):
    path = folder / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    return folder


def _curve_runs(tmp_path):
    evals_a = [
        {"batches": 0, "edits": 0, "general.sst2.accuracy": 0.7, "general.sst2.mcc": -0.2, "general.sst2.n": 5},
        {"batches": 1, "edits": 2, "efficacy": 0.5, "general.sst2.accuracy": 0.6, "general.sst2.mcc": 0.1},
        {"batches": 2, "edits": 4, "efficacy": 0.25, "general.sst2.accuracy": 0.55, "general.sst2.mcc": 0.0},
    ]
    # mmlu: no answer parsed at any point (null scores; an old run's 0 with unparsed == n)
    for row in evals_a:
        row.update({"general.mmlu.accuracy": None, "general.mmlu.unparsed": 5, "general.mmlu.n": 5})
    evals_a[-1]["general.mmlu.accuracy"] = 0.0
    evals_b = [
        {"batches": 1, "edits": 3, "efficacy": 1.0},
        {"batches": 2, "edits": 6, "efficacy": 0.75},
        {"batches": 3, "edits": 9, "efficacy": 0.5},
    ]
    a = make_run(tmp_path / "0_m-a_memit_spread_counterfact", "m-a", "spread", RATES[("m-a", "spread")], evals=evals_a)
    b = make_run(tmp_path / "1_m-a_memit_blue_counterfact", "m-a", "blue", RATES[("m-a", "blue")], evals=evals_b)
    _with_summary(a, pre_efficacy=0.125, pre_specificity=0.9)
    _with_summary(b, pre_efficacy=0.0, num_edits=9)
    return load_runs([a, b]), evals_a, evals_b


def test_editing_curves_start_unedited_in_percent_with_ticks_at_the_batch_ends(tmp_path):
    from blue_cli.reporting.plots import editing_figure

    runs, evals_a, evals_b = _curve_runs(tmp_path)
    fig, notes = editing_figure(runs)
    by_label = {ax.get_ylabel(): ax for ax in fig.axes if ax.axison}
    ax = by_label["efficacy (%)"]
    spread, blue = ax.lines
    assert list(spread.get_xdata()) == [0, 2, 4] and list(blue.get_xdata()) == [0, 3, 6, 9]
    assert list(spread.get_ydata()) == pytest.approx([12.5, 50.0, 25.0])  # pre-edit first, x100
    assert list(blue.get_ydata()) == pytest.approx([0.0, 100.0, 75.0, 50.0])
    assert (spread.get_linestyle(), blue.get_linestyle()) == ("--", "-")
    assert spread.get_color() != blue.get_color()
    assert ax.get_ylim() == (-2.0, 102.0)  # rates on a fixed axis
    assert list(ax.get_xticks()) == [0, 2, 3, 4, 6, 9]  # the edit counts where evaluations fell
    # without evals rows a metric is its pre-edit value (where recorded) and the final summary
    spread, blue = by_label["specificity (%)"].lines
    assert list(spread.get_xdata()) == [0, 4] and list(spread.get_ydata()) == pytest.approx([90.0, 80.0])
    assert list(blue.get_xdata()) == [9] and list(blue.get_ydata()) == pytest.approx([60.0])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["memit + spread (edits 4)", "memit + blue (edits 9)"]  # what differs, not folder names
    fig, _ = editing_figure(runs[:1])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["memit + spread"]  # a single run
    assert "m-a" in fig.get_suptitle()
    left_out = {n.split()[2].rstrip(":") for n in notes}
    assert "fluency" in left_out and "efficacy" not in left_out and "wild_efficacy_em" in left_out


def test_runs_that_share_method_and_strategy_are_told_apart_by_the_setting_that_differs(tmp_path):
    from blue_cli.reporting.plots import run_labels

    plain = make_run(tmp_path / "plain", "m-a", "blue", RATES[("m-a", "blue")])
    anchored = make_run(tmp_path / "anchored", "m-a", "blue", RATES[("m-a", "blue")])
    many = make_run(tmp_path / "many", "m-a", "blue", RATES[("m-a", "blue")])
    for folder, changes in (
        (anchored, {"method.norm_anchor.enabled": True}),
        (many, {"method.norm_anchor.enabled": True, "seed": 1, "method.target.lr": 0.1}),
    ):
        cfg = OmegaConf.load(folder / "config.yaml")
        for key, value in changes.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        OmegaConf.save(cfg, folder / "config.yaml")
    labels = run_labels(load_runs([plain, anchored]))
    assert labels == [
        "memit + blue (method.norm_anchor.enabled=None)",
        "memit + blue (method.norm_anchor.enabled=True)",
    ]
    # three settings differ: the legend names the folders instead of a long list
    assert run_labels(load_runs([plain, many])) == ["memit + blue [plain]", "memit + blue [many]"]


def test_a_sweep_of_seven_methods_under_two_strategies_draws_fourteen_distinct_lines(tmp_path):
    """tab20's pairs: a hue per method, a dark and a light shade for its strategies, and the line
    style too; with ten colours cycling, memit and rect (7 methods apart) had drawn the same line."""
    from blue_cli.reporting.plots import editing_figure

    methods = ("memit", "memit_seq", "alphaedit", "pmet", "pmet_seq", "rect", "prune")
    folders = []
    for m in methods:
        for s in ("spread", "blue"):
            folder = make_run(tmp_path / f"{m}_{s}", "m-a", s, RATES[("m-a", s)])
            _with_summary(folder, method=m)
            folders.append(folder)
    fig, _ = editing_figure(load_runs(folders))
    (eff,) = [ax for ax in fig.axes if ax.get_ylabel() == "efficacy (%)"]
    looks = [(line.get_color(), line.get_linestyle()) for line in eff.lines]
    assert len(looks) == 14 and len(set(looks)) == 14
    colours = {line.get_color() for line in eff.lines}
    assert len(colours) == 14  # the colour alone tells every run apart
    by_label = dict(zip([t.get_text() for t in fig.legends[0].get_texts()], fig.legends[0].get_lines()))
    assert by_label["memit + spread"].get_linestyle() == "--" and by_label["memit + blue"].get_linestyle() == "-"


def test_counterfact_and_zsre_side_by_side_and_log_probabilities_in_nats(tmp_path):
    from blue_cli.reporting.plots import editing_figure

    cf = make_run(tmp_path / "cf", "m-a", "blue", RATES[("m-a", "blue")])
    zs = make_run(tmp_path / "zs", "m-a", "blue", RATES[("m-a", "spread")])
    _with_summary(zs, dataset="zsre")
    _with_summary(cf, rewrite_mean_logprob_new=-2.5, pre_rewrite_mean_logprob_new=-6.0)
    fig, _ = editing_figure(load_runs([cf, zs]))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["CounterFact", "zsRE"]
    (logprob,) = [ax for ax in fig.axes if "nats" in ax.get_ylabel()]
    assert list(logprob.lines[0].get_ydata()) == [-6.0, -2.5]
    assert any("not measured on zsRE" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_several_models_get_a_column_each_per_dataset(tmp_path):
    from blue_cli.reporting.plots import editing_figure

    folders = [make_run(tmp_path / f"{m}_{s}", m, s, RATES[(m, s)]) for m in ("m-a", "m-b") for s in ("spread", "blue")]
    _with_summary(folders[0], dataset="zsre")
    fig, _ = editing_figure(load_runs(folders))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["CounterFact · m-a", "CounterFact · m-b", "zsRE · m-a"]
    (eff,) = [ax for ax in fig.axes if ax.get_title() == "CounterFact · m-b"]
    assert sorted(line.get_ydata()[-1] for line in eff.lines) == pytest.approx([10.0, 20.0])  # m-b's own runs
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["memit + blue", "memit + spread"]


def test_general_capability_has_its_own_figure_and_unparsed_tasks_are_left_out(tmp_path):
    from blue_cli.reporting.plots import general_figure

    runs, evals_a, _ = _curve_runs(tmp_path)
    fig, notes = general_figure(runs)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ["sst2", "sst2"]  # accuracy and mcc; mmlu parsed nothing
    accuracy, mcc = [ax for ax in fig.axes if ax.axison]
    assert list(accuracy.lines[0].get_xdata()) == [0, 2, 4]
    assert list(accuracy.lines[0].get_ydata()) == [r["general.sst2.accuracy"] for r in evals_a]
    assert accuracy.get_ylim() == (-0.02, 1.02) and mcc.get_ylim() == (-1.02, 1.02)
    assert len(notes) == 1 and "mmlu" in notes[0] and "not 0" in notes[0]


def test_write_figures_gives_one_png_and_one_vector_pdf_per_figure(tmp_path):
    from matplotlib.image import imread

    from blue_cli.reporting.plots import write_figures

    runs, _, _ = _curve_runs(tmp_path)
    written, _ = write_figures(runs, tmp_path / "report")
    assert sorted(p.name for p in written) == ["editing.pdf", "editing.png", "general.pdf", "general.png"]
    assert {p.parent for p in written} == {tmp_path / "report" / "figures"}
    for path in written:
        if path.suffix == ".png":
            image = imread(path)
            assert image.shape[0] >= 300 and image.shape[1] >= 500 and image.std() > 0.01, (path, image.shape)
        else:
            data = path.read_bytes()
            assert data.startswith(b"%PDF") and b"/Subtype /Image" not in data  # drawn as vectors
    assert not list((tmp_path / "report" / "figures").glob(".*.tmp"))
