"""The shipped camera-ready numbers of the BLUE paper, Table 4 recomputed, runs beside the paper,
and the LaTeX rendering (hand-made run folders, no model)."""

from __future__ import annotations

import json
import math
import re

import pytest
from omegaconf import OmegaConf

from blue_cli.reporting.compare import load_runs
from blue_cli.reporting.paper import PAPER_FILE, improvement_overall, load_paper, paper_improvements
from blue_cli.reporting.paper_runs import paper_comparison, run_improvements, runs_improvement_comparison
from blue_cli.reporting.paper_tables import paper_sections
from blue_cli.reporting.render import render, to_latex

# Table 4 of the camera-ready: mean relative improvement (%) of BLUE over each baseline.
# The shipped transcription's README states that these 12 cells and the abstract's 35.59%
# are reproduced exactly from its Table 2 (GPT-J PRUNE zsRE excluded, as the paper does).
TABLE4 = {
    ("llama3-8b-instruct", "memit"): 129.61,
    ("llama3-8b-instruct", "prune"): 144.52,
    ("llama3-8b-instruct", "rect"): 27.05,
    ("llama3-8b-instruct", "alphaedit"): 2.50,
    ("gpt-j-6b", "memit"): 6.73,
    ("gpt-j-6b", "prune"): 44.36,
    ("gpt-j-6b", "rect"): 0.58,
    ("gpt-j-6b", "alphaedit"): 0.03,
    ("gpt2-xl", "memit"): 17.02,
    ("gpt2-xl", "prune"): 41.24,
    ("gpt2-xl", "rect"): 9.47,
    ("gpt2-xl", "alphaedit"): 4.00,
}
METRICS = {
    "counterfact": ("efficacy", "generalization", "specificity", "fluency", "consistency"),
    "zsre": ("efficacy", "generalization", "specificity"),
}
PREFIX = {"counterfact": "cf", "zsre": "zsre"}


@pytest.fixture(scope="module")
def raw():
    return json.loads(PAPER_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def paper():
    return load_paper()


def test_the_shipped_file_is_the_camera_ready_with_its_source_and_caveats(raw, paper):
    assert "openreview.net" in raw["source"] and "camera-ready" in raw["source"]
    assert (PAPER_FILE.parent / "README.md").is_file()
    assert not (PAPER_FILE.parent / "blue_table.json").exists()  # the third-party transcription is gone
    counts = {}
    for row in paper.rows:
        counts[(row.table, row.setting)] = counts.get((row.table, row.setting), 0) + 1
    assert counts == {
        ("Table 2", "sequential"): 27,
        ("Table 6", "batch"): 27,
        ("Table 9", "sequential"): 9,
        ("Table 9", "batch"): 9,
        ("Table 7", "sequential"): 4,
    }
    # every published value keeps the paper's ± beside it, read from the file as written
    for row, src in zip(paper.rows, raw["rows"]):
        for dataset, metrics in METRICS.items():
            for metric in metrics:
                key = f"{PREFIX[dataset]}_{metric}"
                assert row.values[(dataset, metric)] == (src[key], src[f"{key}_ci"])
    copied = {(r.model, r.method) for r in paper.rows if r.copied_from_alphaedit}
    assert {m for _, m in copied} == {"pre-edit", "memit", "prune", "rect", "alphaedit"}
    assert all(r.table == "Table 2" and r.strategy != "blue" for r in paper.rows if r.copied_from_alphaedit)


def test_table4_recomputed_from_the_shipped_table_gives_the_published_cells_and_35_59(raw, paper):
    cells = paper_improvements(paper)
    assert {(c.model, c.method): round(c.mean, 2) for c in cells} == TABLE4
    assert round(improvement_overall(cells), 2) == 35.59
    # the same statistic, computed here straight from the file's Table 2
    rows = {(r["model"], r["method"], r["strategy"]): r for r in raw["rows"] if r["table"] == "Table 2"}
    for (model, method), _ in TABLE4.items():
        base, blue = rows[(model, method, "spread")], rows[(model, method, "blue")]
        keys = [f"{PREFIX[d]}_{m}" for d, ms in METRICS.items() for m in ms]
        if (model, method) == ("gpt-j-6b", "prune"):
            keys = [k for k in keys if k.startswith("cf_")]
        expected = sum(100 * (blue[k] - base[k]) / base[k] for k in keys) / len(keys)
        (cell,) = [c for c in cells if (c.model, c.method) == (model, method)]
        assert cell.mean == pytest.approx(expected, abs=1e-12)
    # the one exclusion is the paper's: GPT-J PRUNE on zsRE, whose baseline specificity is 0
    assert [(c.model, c.method, c.excluded) for c in cells if c.excluded] == [
        ("gpt-j-6b", "prune", ["zsre (baseline specificity = 0)"])
    ]


def test_paper_sections_print_every_table_with_its_interval_and_the_alphaedit_caveat_once(paper):
    sections = paper_sections(paper)
    titles = [s.title for s in sections]
    assert titles[:5] == [
        "BLUE paper Table 2, sequential",
        "BLUE paper Table 6, batch",
        "BLUE paper Table 9, sequential",
        "BLUE paper Table 9, batch",
        "BLUE paper Table 7, sequential",
    ]
    assert any("Fig. 12" in t for t in titles) and any(t.startswith("BLUE paper Table 1,") for t in titles)
    text = render(sections, "md")
    assert "| 99.57 ± 0.24 |" in text  # Llama3 MEMIT+BLUE CounterFact efficacy and its ±
    assert text.count("AlphaEdit (arXiv 2410.02355) Table 1") == 1  # said once, under Table 2
    (table2,) = [s for s in sections if s.title == "BLUE paper Table 2, sequential"]
    assert sum("AlphaEdit" in n for n in table2.notes) == 1
    assert sum(r["method"].endswith("*") for r in table2.rows) == 15  # 3 models x (pre-edit + 4 baselines)
    assert "overall: +35.59%" in text


def make_run(folder, model, method, strategy, dataset, summary, cases, edits=4, batch=2):
    folder.mkdir(parents=True)
    cfg = {
        "model": {"name": model, "source": model},
        "method": {"name": method},
        "strategy": {"name": strategy},
        "dataset": {"name": dataset},
        "num_edits": edits,
        "batch_size": batch,
    }
    OmegaConf.save(OmegaConf.create(cfg), folder / "config.yaml")
    meta = {"model": model, "method": method, "strategy": strategy, "dataset": dataset}
    (folder / "summary.json").write_text(json.dumps({**summary, **meta, "num_edits": edits, "batch_size": batch}))
    (folder / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    return folder


CASES = [
    {"efficacy": 1.0, "generalization": 0.5, "specificity": 0.2, "pre_efficacy": 0.0, "pre_specificity": 0.6},
    {"efficacy": 0.0, "generalization": 1.0, "specificity": 0.4, "pre_efficacy": 0.0, "pre_specificity": 0.8},
    {"efficacy": 1.0, "generalization": 0.0, "specificity": 0.6, "pre_efficacy": 1.0, "pre_specificity": 1.0},
    {"efficacy": 1.0, "generalization": 0.5, "specificity": 0.8, "pre_efficacy": 0.0, "pre_specificity": 0.6},
]


def _mean(values):
    return sum(values) / len(values)


def _ci95(values):
    mean = _mean(values)
    return 1.96 * math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _summary(cases):
    out = {m: _mean([c[m] for c in cases]) for m in ("efficacy", "generalization", "specificity")}
    out |= {"pre_efficacy": _mean([c["pre_efficacy"] for c in cases])}
    return out | {"pre_specificity": _mean([c["pre_specificity"] for c in cases])}


def test_a_run_beside_the_paper_is_x100_with_its_case_interval_and_the_published_one(tmp_path, paper):
    run = make_run(tmp_path / "a", "llama3", "memit", "spread", "zsre", _summary(CASES), CASES)
    comparison = paper_comparison(load_runs([run]), paper)
    pre, row = comparison.rows
    published = paper.find("llama3-8b-instruct", "memit", "spread", "sequential").values
    assert (row["paper model"], row["paper table"]) == ("llama3-8b-instruct", "Table 2*")
    for metric, short in (("efficacy", "Eff"), ("generalization", "Gen"), ("specificity", "Spe")):
        values = [c[metric] for c in CASES]
        assert row[f"{short} x100"] == pytest.approx(100 * _mean(values))
        assert row[f"{short} x100 ±"] == pytest.approx(100 * _ci95(values))
        assert (row[f"{short} paper"], row[f"{short} paper ±"]) == published[("zsre", metric)]
        assert row[f"{short} diff"] == pytest.approx(100 * _mean(values) - published[("zsre", metric)][0])
    assert not any(c.startswith(("Flu", "Consis")) for c in comparison.columns)  # zsRE has neither
    # the unedited model's row: the run's pre-edit values against the paper's pre-edited row
    assert (pre["method"], pre["strategy"], pre["edits"]) == ("pre-edit", "none", 0)
    assert pre["Spe x100"] == pytest.approx(100 * _mean([c["pre_specificity"] for c in CASES]))
    assert pre["Spe x100 ±"] == pytest.approx(100 * _ci95([c["pre_specificity"] for c in CASES]))
    assert (
        pre["Spe paper"]
        == paper.find("llama3-8b-instruct", "pre-edit", "none", "sequential").values[("zsre", "specificity")][0]
    )
    notes = "\n".join(comparison.notes)
    assert notes.count("AlphaEdit (arXiv 2410.02355) Table 1") == 1
    assert "differ from the paper's sizes" in notes  # 4 edits in batches of 2 are not the paper's setting


def test_runs_find_their_table_by_setting_and_method(tmp_path, paper):
    one_batch = make_run(tmp_path / "b", "gpt-j", "memit", "blue", "counterfact", _summary(CASES), CASES, 4, 4)
    pmet = make_run(tmp_path / "p", "tiny", "pmet", "blue", "counterfact", _summary(CASES), CASES)
    comparison = paper_comparison(load_runs([one_batch]), paper)
    row = comparison.rows[-1]
    assert row["paper table"] == "Table 6"
    assert row["Eff paper"] == paper.find("gpt-j-6b", "memit", "blue", "batch").values[("counterfact", "efficacy")][0]
    assert not any("AlphaEdit (arXiv" in n for n in comparison.notes)  # no copied row used, no caveat
    row = paper_comparison(load_runs([pmet]), paper, paper_model="gpt2-xl").rows[-1]
    assert (row["paper table"], row["Eff paper"]) == ("Table 9", 95.3)


def test_table4_from_runs_pairs_blue_with_spread_over_both_datasets(tmp_path, paper):
    rates = {
        ("spread", "counterfact"): {"efficacy": 0.5, "generalization": 0.4, "specificity": 0.8, "fluency": 6.0},
        ("blue", "counterfact"): {"efficacy": 0.75, "generalization": 0.5, "specificity": 0.6, "fluency": 6.3},
        ("spread", "zsre"): {"efficacy": 0.2, "generalization": 0.25, "specificity": 0.3},
        ("blue", "zsre"): {"efficacy": 0.3, "generalization": 0.2, "specificity": 0.3},
    }
    folders = [
        make_run(tmp_path / f"{s}_{d}", "gpt2-xl", "memit", s, d, values, CASES) for (s, d), values in rates.items()
    ]
    ((key, cell),) = run_improvements(load_runs(folders))
    assert key == ("gpt2-xl", "memit", "sequential", 4, 2)
    changes = [
        100 * (rates[("blue", d)][m] - rates[("spread", d)][m]) / rates[("spread", d)][m]
        for d in ("counterfact", "zsre")
        for m in rates[("spread", d)]
    ]
    assert len(cell.changes) == 7 and cell.mean == pytest.approx(_mean(changes))
    table = runs_improvement_comparison(load_runs(folders), paper)
    assert table.rows[0]["MEMIT (%)"] == pytest.approx(_mean(changes))
    assert table.rows[0]["MEMIT paper (%)"] == pytest.approx(17.02, abs=0.005)  # GPT2-XL MEMIT in Table 4
    # a zero baseline leaves its dataset out of the cell (the paper's GPT-J PRUNE zsRE rule)
    zero = {**rates[("spread", "zsre")], "specificity": 0.0}
    (tmp_path / "spread_zsre" / "summary.json").write_text(
        json.dumps({**zero, "model": "gpt2-xl", "method": "memit", "strategy": "spread", "dataset": "zsre"}).replace(
            "}", ', "num_edits": 4, "batch_size": 2}'
        )
    )
    ((_, cell),) = run_improvements(load_runs(folders))
    assert set(cell.changes) == {("counterfact", m) for m in rates[("spread", "counterfact")]}
    assert cell.excluded == ["zsre (baseline specificity = 0)"]


def test_latex_is_a_booktabs_table_with_values_and_their_interval(tmp_path, paper):
    run = make_run(tmp_path / "run_a_b", "llama3", "memit", "blue", "counterfact", _summary(CASES), CASES)
    comparison = paper_comparison(load_runs([run]), paper)
    tex = to_latex(comparison)
    lines = tex.splitlines()
    assert lines.index("\\toprule") < lines.index("\\midrule") < lines.index("\\bottomrule")
    body = lines[lines.index("\\midrule") + 1 : lines.index("\\bottomrule")]
    assert len(body) == len(comparison.rows)
    columns = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1))
    for line in body:
        assert line.endswith("\\\\") and line.count(" & ") == columns - 1
    assert "blue\\_cli/assets/paper" in tex and "_" not in tex.replace("\\_", "")  # underscores escaped
    assert "99.57{\\scriptsize$\\pm$0.24}" in tex  # the published value with the paper's ±
    eff = 100 * _mean([c["efficacy"] for c in CASES])
    assert f"{eff:.2f}{{\\scriptsize$\\pm${100 * _ci95([c['efficacy'] for c in CASES]):.2f}}}" in tex
    assert "\\multicolumn{2}{c}{Eff}" in tex and "\\cmidrule(lr)" in tex  # measured | paper under each metric
    assert " diff" not in tex.split("\\caption")[0]  # the two values say it; CSV and JSON keep the column
    assert "model: llama3" in tex  # a column with one value is said once, in the caption
    assert "\\caption{" in tex and "95\\% interval" in tex


def test_the_paper_file_ships_in_the_wheel():
    """hatch packs every file under blue_cli/ (no exclude): the paper file must live there."""
    from blue_cli import ASSETS_DIR

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    pyproject = tomllib.loads((ASSETS_DIR.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["blue_cli"] and "exclude" not in wheel
    assert PAPER_FILE.is_relative_to(ASSETS_DIR.parents[0]) and PAPER_FILE.is_file()


def test_the_latex_compiles(tmp_path, paper):
    """Every table of ``blue report --paper --format latex`` in one document, through pdflatex."""
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    body = render(paper_sections(paper), "latex")
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
        + body
        + "\\end{document}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 10_000
