"""The paper as Hydra experiments: each one end to end on tiny-gpt2, then `blue report --paper`.

Every experiment's sweep is cut to one job on the command line (command-line values
replace the experiment's ``hydra.sweeper.params`` for the same key); the keys left to
the experiment's sweep must come from it, and the paper's published value for the
matching row must appear beside the measured one.
"""

from __future__ import annotations

import csv
import io

import pytest

from tests.e2e.conftest import run_blue, summary_of

TINY = [
    "model=tiny-gpt2",
    "num_edits=4",
    "batch_size=2",
    "method.target.steps=3",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",
    "eval.perplexity_tokens=0",
    "eval.general_items=5",
    "~hydra.callbacks.sweep_report",
]

# experiment -> (command-line restriction, expected (method, strategy, dataset), paper model, published Eff ± its CI)
# (the published values: the camera-ready's Table 2, blue_cli/assets/paper/blue-neurips2025.json)
CASES = {
    "blue_table": (
        ["method=alphaedit", "strategy=blue", "dataset=counterfact"],
        ("alphaedit", "blue", "counterfact"),
        "llama3",
        (99.93, 0.09),
    ),
    "blue_llama3_counterfact": (
        ["method=memit", "strategy=blue"],
        ("memit", "blue", "counterfact"),
        "llama3",
        (99.57, 0.24),
    ),
    "blue_zsre": (["method=memit", "strategy=spread"], ("memit", "spread", "zsre"), "llama3", (34.62, 0.36)),
    "blue_gptj": (
        ["method=memit", "strategy=blue", "dataset=counterfact"],
        ("memit", "blue", "counterfact"),
        "gpt-j",
        (99.70, 0.30),
    ),
}
PAPER_NAMES = {"llama3": "llama3-8b-instruct", "gpt-j": "gpt-j-6b", "gpt2-xl": "gpt2-xl"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_experiment_runs_end_to_end_and_reports_the_paper(name, tmp_path):
    restrict, (method, strategy, dataset), paper_model, (eff, eff_ci) = CASES[name]
    sweep = tmp_path / "sweep"
    proc = run_blue(["edit", "-m", f"+experiment={name}", *TINY, *restrict, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in sweep.iterdir() if (p / "summary.json").is_file()]
    assert len(jobs) == 1, [p.name for p in sweep.iterdir()]
    summary = summary_of(jobs[0])
    assert (summary["model"], summary["method"], summary["strategy"], summary["dataset"]) == (
        "tiny-gpt2",
        method,
        strategy,
        dataset,
    )
    assert summary["num_edits"] == 4
    # the experiment's general-capability settings reached the run: all six tasks measured
    tasks = {k.split(".")[1] for k in summary if k.startswith("general.")}
    assert tasks == {"sst2", "mrpc", "cola", "rte", "mmlu", "nli"}

    rep = run_blue(["report", str(sweep), "--paper", "--paper-model", paper_model, "--format", "csv"], cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    pre, row = list(csv.DictReader(io.StringIO(rep.stdout)))  # the unedited model's row, then the run's
    assert (pre["method"], pre["strategy"]) == ("pre-edit", "none")
    assert float(pre["Eff x100"]) == pytest.approx(100 * summary["pre_efficacy"])
    assert (row["method"], row["strategy"], row["dataset"], row["paper model"]) == (
        method,
        strategy,
        dataset,
        PAPER_NAMES[paper_model],
    )
    assert row["paper table"] == ("Table 2*" if strategy == "spread" else "Table 2")
    assert float(row["Eff paper"]) == pytest.approx(eff) and float(row["Eff paper ±"]) == pytest.approx(eff_ci)
    assert float(row["Eff x100"]) == pytest.approx(100 * summary["efficacy"])
    assert float(row["Eff diff"]) == pytest.approx(100 * summary["efficacy"] - eff)
    if dataset == "zsre":  # the paper reports no fluency or consistency on ZsRE
        assert not any(column.startswith(("Flu", "Consis")) for column in row)


def test_table_report_prints_the_published_column(tmp_path):
    """The human table: Llama3 MEMIT_BLUE CounterFact Eff 99.57 beside a tiny memit/blue run."""
    run_dir = tmp_path / "run"
    proc = run_blue(
        ["edit", "+experiment=blue_llama3_counterfact", *TINY[:-1], f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(run_dir)
    assert (summary["method"], summary["strategy"], summary["dataset"]) == ("memit", "blue", "counterfact")
    rep = run_blue(
        ["report", str(run_dir), "--paper", "--paper-model", "llama3"],
        cwd=tmp_path,
        env_extra={"COLUMNS": "400"},
    )
    assert rep.returncode == 0, rep.stderr
    (line,) = [l for l in rep.stdout.splitlines() if "tiny-gpt2" in l and " memit " in l]
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells[1:5] == ["tiny-gpt2", "llama3-8b-instruct", "memit", "blue"]
    eff = 100 * summary["efficacy"]
    assert cells[8] == "Table 2" and cells[9].startswith(f"{eff:.2f} ± ")
    assert cells[10:12] == ["99.57 ± 0.24", f"{eff - 99.57:+.2f}"]
    assert "NeurIPS 2025 camera-ready" in rep.stdout and "n/r: not reported" in rep.stdout
    # without the mapping the run matches no paper row: every published cell is n/r
    rep = run_blue(["report", str(run_dir), "--paper", "--format", "json"], cwd=tmp_path)
    assert rep.returncode == 0 and '"Eff paper": "n/r"' in rep.stdout


def test_bad_paper_options_are_one_line(tmp_path):
    for args, needle in (
        (["--paper", "--paper-model", "gpt3"], "unknown --paper-model 'gpt3'"),
        (["--paper-model", "llama3"], "--paper-model needs --paper"),
        (["--paper", "--baseline", "strategy=spread"], "--paper and --baseline do not combine"),
    ):
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "summary.json").write_text(
            '{"model": "tiny-gpt2", "method": "memit", "strategy": "blue", "dataset": "counterfact"}'
        )
        proc = run_blue(["report", str(tmp_path / "run"), *args], cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )


# The other settings of the paper, one job each on tiny-llama (Llama models) or tiny-gpt2 (GPT
# models), cut small (2-3 edits, 2 target steps, general capability only where it is the point)
# but keeping what makes the setting: one batch for the 10,000-edit settings, batch size 1 for
# the efficiency protocol, general capability before and after for Fig. 6.
# experiment -> (one job's overrides, paper model it stands for, extra overrides)
NO_GENERAL = "eval.general=[]"
SMOKE = {
    "blue_batch10k": (["model=tiny-gpt2", "method=rect", "strategy=blue", "dataset=zsre"], "gpt-j", ["num_edits=3"]),
    "blue_pmet": (["model=tiny-gpt2", "strategy=blue", "dataset=counterfact"], "gpt2-xl", ["batch_size=1", NO_GENERAL]),
    "blue_pmet_batch10k": (["model=tiny-llama", "strategy=spread", "dataset=zsre"], "llama3", ["num_edits=3"]),
    "blue_llama2": (
        ["model=tiny-llama", "method=alphaedit", "strategy=blue", "dataset=counterfact"], "llama2-13b",
        ["batch_size=1", NO_GENERAL],
    ),
    "blue_general": (
        ["model=tiny-llama", "method=prune", "strategy=spread", "dataset=counterfact"], "llama3", ["batch_size=1"],
    ),
    "blue_efficiency": (["model=tiny-gpt2", "method=memit", "strategy=blue", "dataset=zsre"], "gpt2-xl", []),
}  # fmt: skip
SMOKE_TINY = [
    "num_edits=2",
    "method.target.steps=2",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",
    "eval.general_items=2",
    "~hydra.callbacks.sweep_report",
]


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_every_paper_setting_runs_on_a_tiny_model(name, tmp_path):
    from omegaconf import OmegaConf

    from blue_cli.config.overrides import compose_config
    from blue_cli.runs import files

    job, paper_model, extra = SMOKE[name]
    experiment = compose_config([f"+experiment={name}"])
    sweep = tmp_path / "sweep"
    proc = run_blue(
        ["edit", "-m", f"+experiment={name}", *SMOKE_TINY, *job, *extra, f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p for p in sweep.iterdir() if (p / "summary.json").is_file()]
    summary = summary_of(run)
    config = OmegaConf.load(run / files.CONFIG)
    expected = dict(o.split("=", 1) for o in job)
    assert summary["model"] == expected["model"]
    assert summary["method"] == expected.get("method", experiment.method.name)
    assert (summary["strategy"], summary["dataset"]) == (expected["strategy"], expected["dataset"])
    edits = 3 if "num_edits=3" in extra else 2
    one_batch = experiment.setting.name == "batch"  # batch_size follows num_edits
    batch_size = 1 if "batch_size=1" in extra else edits if one_batch else experiment.batch_size
    assert config.setting.name == experiment.setting.name
    assert (config.num_edits, config.batch_size) == (edits, batch_size)  # config.yaml holds the values run
    assert "${" not in (run / files.CONFIG).read_text()  # no interpolation left for a reader to resolve
    assert (summary["num_edits"], summary["batch_size"]) == (edits, batch_size)
    rows = files.read_jsonl(run / files.BATCHES)
    assert [r["edits"] for r in rows] == [batch_size] * (edits // batch_size) + (
        [edits % batch_size] if edits % batch_size else []
    )
    # the efficiency protocol's numbers, recomputed from the batches
    assert summary["seconds_per_edit"] == pytest.approx(sum(r["edit_seconds"] for r in rows) / edits)
    assert summary["edit_peak_memory_bytes"] is None  # measured on CUDA only
    tasks = {k.split(".")[1] for k in summary if k.startswith("general.")}
    assert tasks == (set() if NO_GENERAL in extra else set(experiment.eval.general))
    if config.method.name == "prune":
        assert config.method.evaluated_weights == "edited_plus_restrained"
    if config.method.name.startswith("pmet"):
        assert config.method.target.adaptive_nll is True
    # the run read as the paper model it stands for, beside the published numbers (where the
    # shipped table has that model's rows: Llama-2-13B's are not in it)
    if paper_model in PAPER_NAMES:
        rep = run_blue(["report", str(run), "--paper", "--paper-model", paper_model, "--format", "csv"], cwd=tmp_path)
        assert rep.returncode == 0, rep.stderr
        row = list(csv.DictReader(io.StringIO(rep.stdout)))[-1]  # after the unedited model's row
        assert (row["paper model"], row["method"], row["strategy"]) == (
            PAPER_NAMES[paper_model],
            summary["method"],
            summary["strategy"],
        )
        assert float(row["Eff x100"]) == pytest.approx(100 * summary["efficacy"])
