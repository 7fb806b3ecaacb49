"""The command line: errors, config printing, listing, sweeps, determinism, resume.

Commands run in this process (tests/e2e/conftest.py: run_blue); only what depends on
the process itself (its start-up environment, the installed entry point) starts a
new one (run_blue_process).
"""

import json

import pytest

from blue_cli.config.schema import group_choices
from tests.e2e.conftest import run_blue, run_blue_process, summary_of

SMALL = [
    "model=tiny-gpt2",
    "num_edits=6",
    "batch_size=2",
    "method.target.steps=5",
    "stats.samples=40",
    "eval.generation=false",  # fluency and consistency have tests of their own
    "eval.wild=false",
]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["method=memitt"], f"unknown method 'memitt' (choose: {', '.join(group_choices('method'))})"),
        (["strategy=bleu"], f"unknown strategy 'bleu' (choose: {', '.join(group_choices('strategy'))})"),
        (["model=gpt5"], "unknown model 'gpt5' (choose:"),
        (["nonsense=1"], "unknown config key 'nonsense' (valid keys: model, dataset"),
        (["method.target.lrr=1"], "unknown config key 'method.target.lrr'"),
        (["num_edits=many"], "bad value in 'num_edits=many'"),
        (["batch_size=0"], "batch_size must be >= 1, got 0"),
        (["method.target.steps=0"], "method.target.steps must be >= 1, got 0"),
        (["method.cov_weight=-1"], "method.cov_weight must be positive and finite, got -1.0"),
        (["eval.general_every=0"], "eval.general_every must be >= 1 or null, got 0"),
        (["-m", "strategy=spread,bleu"], "unknown strategy 'bleu'"),
    ],
)
def test_bad_input_is_one_line_without_traceback_or_files(tmp_path, args, needle):
    proc = run_blue(["edit", *args], cwd=tmp_path)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len([l for l in proc.stderr.splitlines() if l.strip()]) == 1, proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_missing_dataset_file_is_one_line(tmp_path):
    proc = run_blue(
        ["edit", *SMALL, "dataset.path=/nonexistent/cf.json", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "/nonexistent/cf.json" in proc.stderr and "Traceback" not in proc.stderr


def test_cfg_job_prints_config_without_running(tmp_path):
    proc = run_blue(["edit", "--cfg", "job", "model=llama3", "strategy=spread"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in proc.stdout
    assert "lr: 0.1" in proc.stdout and "steps: 25" in proc.stdout  # llama3's published settings
    assert not (tmp_path / "outputs").exists()


def test_list_shows_every_group(tmp_path):
    proc = run_blue(["list"], cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("model", "dataset", "method", "strategy", "experiment"):
        assert all(choice in proc.stdout for choice in group_choices(group)), group
    assert "+experiment" in proc.stdout


def test_multirun_makes_one_folder_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_blue(
        ["edit", "-m", "method=memit", "strategy=spread,blue", *SMALL, f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(runs) == 2
    assert {summary_of(r)["strategy"] for r in runs} == {"spread", "blue"}
    assert all("tiny-gpt2_memit" in r.name for r in runs)
    table = run_blue(["report", str(sweep)], cwd=tmp_path)
    assert table.returncode == 0 and "spread" in table.stdout and "blue" in table.stdout
    missing = run_blue(["report", str(tmp_path / "nothing")], cwd=tmp_path)
    assert missing.returncode != 0 and "no summary.json" in missing.stderr


def test_default_run_folder_is_timestamped_and_named(tmp_path):
    proc = run_blue(["edit", *SMALL, "num_edits=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1
    assert runs[0].name.endswith("_tiny-gpt2_memit_blue_counterfact")
    assert (runs[0] / "summary.json").exists()


KILLABLE = ["edit", *SMALL, "num_edits=8"]  # four batches: a Ctrl-C can land between them


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The same config and seed run twice, in two folders."""
    root = tmp_path_factory.mktemp("twice")
    for d in (root / "a", root / "b"):
        proc = run_blue([*KILLABLE, f"hydra.run.dir={d}"], cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "a", root / "b"


def test_same_config_and_seed_give_identical_numbers(twice):
    sa, sb = summary_of(twice[0]), summary_of(twice[1])
    for key in ("efficacy", "generalization", "specificity", "target_logprob_gain", "write_error", "edit_logprob_gain"):
        assert sa[key] == sb[key], key


def test_interrupted_run_resumes_to_the_same_result(tmp_path, twice, monkeypatch):
    """A Ctrl-C right after the second batch is saved (the fault point, not a timed signal):
    exit 130, two batches kept, no temp files; rerunning the command finishes the run with
    the numbers of the uninterrupted one."""
    from safetensors import safe_open

    killed = tmp_path / "killed"
    monkeypatch.setenv("BLUE_FAULT", "batch@2:interrupt")
    proc = run_blue([*KILLABLE, f"hydra.run.dir={killed}"], cwd=tmp_path)
    monkeypatch.delenv("BLUE_FAULT")
    assert proc.returncode == 130, proc.stderr[-3000:]
    with safe_open(str(killed / "checkpoint.safetensors"), framework="pt") as f:
        assert int(f.metadata()["batches_done"]) == 2
    assert not (killed / "summary.json").exists()
    assert not list(killed.glob(".*.tmp"))
    resumed = run_blue([*KILLABLE, f"hydra.run.dir={killed}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    sa, sb = summary_of(twice[0]), summary_of(killed)
    for key in ("efficacy", "generalization", "specificity", "target_logprob_gain"):
        assert sa[key] == pytest.approx(sb[key], abs=1e-9), key


def test_offline_hub_model_is_one_line(tmp_path):
    """A new process: the hub client reads HF_HUB_OFFLINE when first imported."""
    proc = run_blue_process(
        ["edit", "model=gpt2-xl", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env_extra={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode != 0
    assert "model 'gpt2-xl' is not in the local Hugging Face cache" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_installed_cli_runs_from_outside_the_repo(tmp_path):
    """The installed command finds conf/ wherever it is started."""
    proc = run_blue_process(["edit", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0 and "tiny-gpt2" in proc.stdout


def test_eval_every_writes_intermediate_evaluations(tmp_path):
    run = tmp_path / "run"
    proc = run_blue(["edit", *SMALL, "eval_every=1", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]
    base, rows = rows[0], rows[1:]
    assert base["batches"] == 0 and "perplexity" in base  # the unedited model's held-out perplexity
    assert [r["batches"] for r in rows] == [1, 2, 3]
    assert [r["edits"] for r in rows] == [2, 4, 6]
    assert all("first_batch.efficacy" in r for r in rows)


def test_stats_command_precomputes_and_caches(tmp_path):
    env = {"BLUE_CACHE": str(tmp_path / "cache")}
    proc = run_blue(["stats", "model=tiny-llama", "strategy=spread", "stats.samples=20"], cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted((tmp_path / "cache" / "stats").rglob("layer*_mom2_20.safetensors"))
    assert [f.name.split("_")[0] for f in files] == ["layer1", "layer2", "layer3"]
    assert all(str(f) in proc.stdout.replace("\n", "") for f in files)
