"""`blue report` on a real 2-run sweep, the sweep callback's files, and `blue export`."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from tests.e2e.conftest import run_blue, summary_of

SWEEP_ARGS = [
    "edit",
    "-m",
    "strategy=spread,blue",
    "model=tiny-gpt2",
    "num_edits=4",
    "batch_size=2",
    "method.target.steps=3",
    "stats.samples=40",
    "eval_every=1",
    "eval.generation=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """spread vs blue on tiny-gpt2, evaluated after every batch; {strategy: job folder} plus the sweep folder."""
    root = tmp_path_factory.mktemp("report-sweep")
    folder = root / "sweep"
    proc = run_blue([*SWEEP_ARGS, f"hydra.sweep.dir={folder}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {summary_of(p)["strategy"]: p for p in folder.iterdir() if (p / "summary.json").is_file()}
    assert set(jobs) == {"spread", "blue"}
    return folder, jobs


def _assert_figures(folder, names) -> None:
    """The report's figures/ holds each named figure as a readable PNG and a vector PDF, and nothing else."""
    from matplotlib.image import imread

    figures = folder / "figures"
    assert sorted(p.name for p in figures.iterdir()) == sorted(f"{n}.{s}" for n in names for s in ("pdf", "png"))
    assert not list(folder.glob("*.png"))  # no loose files beside the report
    for pdf in figures.glob("*.pdf"):
        assert pdf.read_bytes().startswith(b"%PDF")
    for png in figures.glob("*.png"):
        image = imread(png)
        assert image.shape[0] >= 300 and image.shape[1] >= 500 and image.std() > 0.01, (png.name, image.shape)


def test_the_sweep_leaves_its_report_and_plots(sweep):
    folder, jobs = sweep
    md = (folder / "report.md").read_text()
    rows = list(csv.DictReader(io.StringIO((folder / "report.csv").read_text())))
    assert {r["strategy"] for r in rows} == {"spread", "blue"}
    assert {r["run"] for r in rows} == {p.name for p in jobs.values()}
    for row in rows:
        assert float(row["target_logprob_gain"]) == pytest.approx(
            summary_of(folder / row["run"])["target_logprob_gain"]
        )
    assert "average relative change vs strategy=spread" in md and jobs["blue"].name in md
    rows = [json.loads(line) for line in (jobs["blue"] / "evals.jsonl").read_text().splitlines()]
    assert rows[0]["edits"] == 0 and set(rows[0]) == {"batches", "edits", "perplexity"}  # the base model's
    evals = rows[1:]
    assert [e["edits"] for e in evals] == [2, 4]
    _assert_figures(folder, ["editing"])
    assert {"wild_efficacy_em", "wild_specificity_f1", "perplexity"} <= set(evals[-1])


def test_csv_report_with_baseline_holds_the_relative_change(sweep, tmp_path):
    folder, jobs = sweep
    proc = run_blue(["report", "--format", "csv", str(folder), "--baseline", "strategy=spread"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["strategy"]: r for r in csv.DictReader(io.StringIO(proc.stdout))}
    assert set(rows) == {"spread", "blue"}
    spread, blue = summary_of(jobs["spread"]), summary_of(jobs["blue"])
    changes = []
    for metric in ("efficacy", "generalization", "specificity", "target_logprob_gain"):
        column = f"{metric} vs spread (%)"
        assert rows["spread"][column] == ""
        if spread[metric] == 0:
            assert rows["blue"][column] == ""
            continue
        expected = 100 * (blue[metric] - spread[metric]) / abs(spread[metric])
        assert float(rows["blue"][column]) == pytest.approx(expected, abs=1e-9)
        changes.append(expected)
    assert spread["target_logprob_gain"] != blue["target_logprob_gain"]  # the check above is not 0 == 0
    assert f"{sum(changes) / len(changes):+.2f}%" in proc.stderr


def test_markdown_report_to_a_file_with_plots_beside_it(sweep, tmp_path):
    _, jobs = sweep
    out = tmp_path / "reports" / "cmp.md"
    proc = run_blue(
        ["report", str(jobs["spread"]), str(jobs["blue"]), "--format", "md", "--out", str(out)], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| run | model | method | strategy |") and len(lines) == 6
    assert " ± " in lines[2] and lines[5].startswith("- ±: 95% interval of the mean over the run's cases")
    _assert_figures(out.parent, ["editing"])


def test_table_report_of_the_sweep_fits_80_columns(sweep, tmp_path):
    folder, _ = sweep
    proc = run_blue(["report", str(folder), "--baseline", "strategy=spread"], cwd=tmp_path, env_extra={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines() if not line.startswith("average")) <= 80
    assert "efficacy" in proc.stdout and "average relative change vs strategy=spread" in proc.stdout


def test_one_run_reprints_its_tables(sweep, tmp_path):
    _, jobs = sweep
    proc = run_blue(["report", str(jobs["blue"])], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "efficacy" in proc.stdout and "write_error" in proc.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["report", "{tmp}/nowhere"], "does not exist"),
        (["report", "{sweep}", "--format", "xml"], "unknown --format 'xml'"),
        (["report", "{sweep}", "--baseline", "method=memit"], "does not vary"),
        (["export", "{blue}", "--out", "{tmp}/x", "--dtype", "int8"], "unknown --dtype 'int8'"),
    ],
)
def test_bad_arguments_are_one_line_errors(sweep, tmp_path, args, message):
    folder, jobs = sweep
    args = [a.format(tmp=tmp_path, sweep=folder, blue=jobs["blue"]) for a in args]
    proc = run_blue(args, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _rewrite_scores(model_dir, run_dir):
    """log P(target_new | rewrite prompt) of the run's cases, computed on the exported model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blue_cli.datasets.counterfact.records import load_counterfact
    from blue_cli.evaluation.scoring import score_targets
    from blue_cli.models.adapter import ModelAdapter

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    adapter = ModelAdapter(model, AutoTokenizer.from_pretrained(model_dir))
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    records = {r.case_id: r for r in load_counterfact("bundled", limit=len(cases))}
    scores = score_targets(
        adapter,
        [records[c["case_id"]].rewrite_prompt for c in cases],
        [records[c["case_id"]].target_new for c in cases],
    )
    return model, cases, [s.logprob for s in scores]


def test_export_reproduces_the_runs_post_edit_logprobs(sweep, tmp_path):
    _, jobs = sweep
    run_dir, out = jobs["blue"], tmp_path / "edited"
    proc = run_blue(["export", str(run_dir), "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    model, cases, logprobs = _rewrite_scores(out, run_dir)
    assert next(model.parameters()).dtype.is_floating_point
    for case, logprob in zip(cases, logprobs):
        assert logprob == pytest.approx(case["rewrite_logprob_sum_new"], abs=1e-5), case["case_id"]
    # ... and these are the edited model's numbers, not the base model's.
    assert max(abs(c["pre_rewrite_logprob_sum_new"] - lp) for c, lp in zip(cases, logprobs)) > 1e-3
    again = run_blue(["export", str(run_dir), "--out", str(out)], cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_bfloat16_export_loads_in_bfloat16(sweep, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    _, jobs = sweep
    out = tmp_path / "bf16"
    proc = run_blue(["export", str(jobs["spread"]), "--out", str(out), "--dtype", "bfloat16"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_an_unfinished_run_is_refused(sweep, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, jobs = sweep
    run_dir = tmp_path / "unfinished"
    shutil.copytree(jobs["blue"], run_dir)
    ckpt = run_dir / "checkpoint.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(ckpt), metadata={**meta, "finished": "false", "batches_done": "1"})
    proc = run_blue(["export", str(run_dir), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 2 and "not finished (1 batches saved)" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_paper_alone_prints_the_published_tables_and_recomputes_table4(tmp_path):
    proc = run_blue(["report", "--paper", "--format", "md"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for title in ("Table 2, sequential", "Table 6, batch", "Table 9, sequential", "Table 9, batch", "Table 7"):
        assert f"**BLUE paper {title}" in proc.stdout
    assert "| 99.57 ± 0.24 |" in proc.stdout and "overall: +35.59%" in proc.stdout
    assert proc.stdout.count("AlphaEdit (arXiv 2410.02355) Table 1") == 1
    tex = run_blue(["report", "--paper", "--format", "latex"], cwd=tmp_path).stdout
    tables = tex.count("\\begin{table}")
    assert tables == proc.stdout.count("**") // 2 and tex.count("\\bottomrule") == tables
    assert "overall: +35.59\\%" in tex


def test_paper_beside_a_sweep_gives_table4_of_the_runs(sweep, tmp_path):
    folder, jobs = sweep
    proc = run_blue(["report", str(folder), "--paper", "--paper-model", "gpt2-xl", "--format", "json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert [r["method"] for r in payload["runs"]] == ["pre-edit", "memit", "memit"]
    (table4,) = payload["tables"]
    spread, blue = summary_of(jobs["spread"]), summary_of(jobs["blue"])
    rates = ("efficacy", "generalization", "specificity")
    if any(spread[m] == 0 for m in rates):  # a zero baseline leaves the dataset out, as the paper does
        expected = None
    else:
        expected = sum(100 * (blue[m] - spread[m]) / spread[m] for m in rates) / len(rates)
    (row,) = table4["runs"]
    assert row["model"] == "GPT2-XL" and row["MEMIT paper (%)"] == pytest.approx(17.02, abs=0.005)
    assert row["MEMIT (%)"] == (pytest.approx(expected) if expected is not None else None)
    zero = ", ".join(m for m in rates if spread[m] == 0)
    assert (f"GPT2-XL memit: left out counterfact (baseline {zero} = 0)" in table4["notes"]) == bool(zero)
