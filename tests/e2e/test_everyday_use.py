"""Everyday use (issue 16): help never runs a job, messages print literally, a failure is one
line (and one on the run folder), Ctrl-C says how to resume, ``blue resume`` continues a
run in its folder, an evaluation point lost to a kill is redone, resume=false never mixes
two runs' files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from blue_cli.config.schema import GROUPS, group_choices
from tests.e2e.conftest import blue_exe, run_blue, summary_of

TINY = [
    "model=tiny-gpt2",
    "num_edits=8",
    "batch_size=2",
    "method.target.steps=3",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",  # the evaluation in the wild has tests of its own
    "eval_every=2",
]
COMMANDS = ("edit", "resume", "list", "stats", "plan", "report", "export", "analyze", "locate")


def lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """TINY run through without interruption: what every resumed run must equal."""
    root = tmp_path_factory.mktemp("reference")
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def assert_same_run_files(a: Path, b: Path) -> None:
    """The per-case files and the evaluation curve are equal; the summary equal but for timings."""
    for name in ("cases.jsonl", "cases_pre.jsonl", "evals.jsonl"):
        assert (a / name).read_text() == (b / name).read_text(), name
    sa, sb = ({k: v for k, v in summary_of(d).items() if "seconds" not in k} for d in (a, b))
    assert sa == sb


# -- commands and messages ------------------------------------------------------------------


def test_every_command_is_listed():
    from blue_cli.cli.commands import app

    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    assert set(COMMANDS) <= names


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_anywhere_prints_help_and_does_nothing(tmp_path, monkeypatch, command, flag):
    """With model=gpt2-xl and the flag last: no hub lookup, no statistics pass, no folder."""
    import blue_cli.cli.commands
    import blue_cli.models.source

    def no_work(*args, **kwargs):
        raise AssertionError("a --help run did work")

    monkeypatch.setattr(blue_cli.cli.commands, "collect_stats", no_work)
    monkeypatch.setattr(blue_cli.cli.commands, "run_hydra", no_work)
    monkeypatch.setattr(blue_cli.models.source, "check_model_available", no_work)
    args = [command, "model=gpt2-xl", flag] if command not in ("resume", "report", "export") else [command, flag]
    proc = run_blue(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: blue " + command), proc.stdout[:200]
    assert list(tmp_path.iterdir()) == []


def test_edit_help_shows_the_public_groups_only():
    proc = run_blue(["edit", "--help"], cwd=Path.cwd())
    for group in GROUPS:
        assert all(choice in proc.stdout for choice in group_choices(group)), group
    assert "hparams" not in proc.stdout and "schema" not in proc.stdout
    assert "[group=choice ...] [key=value ...]" in proc.stdout


def test_top_level_help_keeps_its_brackets(tmp_path):
    proc = run_blue(["--help"], cwd=tmp_path)
    assert "Usage: blue [OPTIONS] COMMAND [ARGS]..." in proc.stdout
    assert "resume" in proc.stdout


def test_an_error_naming_an_extra_prints_its_brackets(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    proc = run_blue(["edit", "model=tiny-gpt2", "logger=wandb"], cwd=tmp_path)
    assert proc.returncode == 2
    assert lines(proc) == [
        'error: logger=wandb needs the wandb extra: pip install "blue-editing[wandb]" '
        '(from a checkout: pip install -e ".[wandb]")'
    ]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["dataset.path=/nonexistent/cf.json"], "CounterFact file not found: /nonexistent/cf.json"),
        (["dataset.path={bad_json}"], "is not valid JSON"),
        (["num_edits=301"], "num_edits=301 but dataset 'counterfact' has only 300 records"),
        (["device=cuda"], "device 'cuda' asked for but CUDA is not available"),
    ],
)
def test_a_runtime_error_is_one_red_line_and_one_line_on_the_folder(tmp_path, args, needle):
    import torch

    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so device=cuda is not an error here")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{]")
    run_dir = tmp_path / "run"
    args = [a.format(bad_json=bad_json) for a in args]
    proc = run_blue(["edit", *TINY, *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 2
    out = lines(proc)
    assert len(out) == 2 and out[0].startswith("error: ") and needle in out[0], out
    assert out[1] == f"run folder {run_dir} removed (no batch was saved)"
    assert not run_dir.exists()


def test_an_unreachable_hub_is_one_line_after_one_probe(tmp_path, monkeypatch):
    """A sweep over a hub model that is not cached, the hub refusing connections: one probe,
    one line naming BLUE_OFFLINE=1, no run folder (not a minute of retry warnings)."""
    import socket

    import huggingface_hub.constants as hub_constants

    made: list = []
    real = socket.create_connection
    monkeypatch.setattr(
        socket, "create_connection", lambda address, *a, **k: made.append(address) or real(address, *a, **k)
    )
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        proc = run_blue(["edit", "-m", "model=gpt2-xl", "strategy=spread,blue"], cwd=tmp_path)
    assert proc.returncode == 2
    assert lines(proc) == [
        f"error: model 'gpt2-xl' is not in the local Hugging Face cache and the hub at {endpoint} cannot be "
        "reached (connection refused); download it on a connected machine or set model.source to a local folder, "
        "and set BLUE_OFFLINE=1 to skip the hub"
    ]
    assert len(made) == 1
    assert not (tmp_path / "outputs").exists()


def test_plan_says_when_it_plans_the_run_defaults(tmp_path):
    proc = run_blue(["plan", "model=llama3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: planning the run defaults num_edits=40 batch_size=10" in proc.stdout
    sized = run_blue(["plan", "model=llama3", "num_edits=2000", "batch_size=100"], cwd=tmp_path)
    assert "planning the run defaults" not in sized.stdout


def test_report_of_one_run_is_the_same_with_or_without_format_table(reference, tmp_path):
    plain = run_blue(["report", str(reference)], cwd=tmp_path)
    table = run_blue(["report", str(reference), "--format", "table"], cwd=tmp_path)
    assert plain.returncode == table.returncode == 0
    assert plain.stdout == table.stdout


def test_json_report_keeps_numbers_numbers(reference, tmp_path):
    proc = run_blue(["report", str(reference), "--format", "json"], cwd=tmp_path)
    [row] = json.loads(proc.stdout)["runs"]
    assert row["edits"] == 8 and row["batch"] == 2 and isinstance(row["efficacy"], float)


# -- interrupts and resume ------------------------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    import select

    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        select.select([], [], [], 0.05)


def test_ctrl_c_says_what_is_saved_and_blue_resume_finishes_the_run(reference, tmp_path):
    """A real SIGINT, sent while the run is held at its second saved batch."""
    run_dir, release = tmp_path / "run", tmp_path / "release"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", BLUE_FAULT=f"batch@2:hold={release}")
    proc = subprocess.Popen(
        blue_exe() + ["edit", *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        # A shell without job control starts background jobs (`make test &`, nohup) with SIGINT
        # ignored, and the child would inherit that and never see the Ctrl-C: give it the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(Path(f"{release}.held"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert [line for line in err.splitlines() if line.startswith("interrupted")] == [
        f"interrupted: 2 of 4 batches saved in {run_dir}; continue with: blue resume {run_dir}"
    ]
    assert "interrupted (Ctrl-C)" in (run_dir / "blue.log").read_text()
    resumed = run_blue(["resume", str(run_dir)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run_files(reference, run_dir)


def test_ctrl_c_before_the_first_batch_removes_the_folder(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("BLUE_FAULT", "target@2:interrupt")
    proc = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 130
    assert f"interrupted before the first batch was saved: run folder {run_dir} removed" in proc.stderr
    assert not run_dir.exists()


def test_a_new_run_points_at_an_unfinished_run_of_the_same_config(tmp_path, monkeypatch):
    outputs = tmp_path / "outputs" / "2026-12-01"
    monkeypatch.setenv("BLUE_FAULT", "batch@1:interrupt")
    first = run_blue(["edit", *TINY, f"hydra.run.dir={outputs / 'first'}"], cwd=tmp_path)
    assert first.returncode == 130
    monkeypatch.setenv("BLUE_FAULT", "target@1:interrupt")  # stop the second as soon as it has announced itself
    second = run_blue(["edit", *TINY, f"hydra.run.dir={outputs / 'second'}"], cwd=tmp_path)
    assert (
        f"note: {outputs / 'first'} holds an unfinished run of this config (1 of 4 batches saved); "
        f"continue it with: blue resume {outputs / 'first'}"
    ) in second.stdout
    other = run_blue(["edit", *TINY, "seed=1", f"hydra.run.dir={outputs / 'third'}"], cwd=tmp_path)
    assert "unfinished run" not in other.stdout  # another config: not offered


def test_resume_refuses_what_is_not_a_run_folder(tmp_path):
    proc = run_blue(["resume", str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert lines(proc) == [f"error: '{tmp_path}' has no .hydra/overrides.yaml: not a run folder of blue edit"]


def test_a_kill_during_an_evaluation_point_loses_no_row(reference, tmp_path):
    """Killed (SIGKILL) inside the evaluation point after batch 2, which comes after that
    batch's checkpoint: the resume redoes the point while replaying, and every file equals
    the uninterrupted run's."""
    run_dir = tmp_path / "run"
    # The first evaluation pass is the unedited model's (its held-out perplexity); the second is after batch 2.
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", BLUE_FAULT="eval@2")
    proc = subprocess.run(
        blue_exe() + ["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [json.loads(line)["batches"] for line in (run_dir / "evals.jsonl").read_text().splitlines()] == [0]
    resumed = run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run_files(reference, run_dir)


def test_a_changed_pre_edit_file_is_evaluated_again_on_resume(reference, tmp_path, monkeypatch):
    """Same row count, one number changed: the resume does not trust it."""
    import shutil

    run_dir = tmp_path / "run"
    monkeypatch.setenv("BLUE_FAULT", "batch@2:interrupt")
    assert run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 130
    monkeypatch.delenv("BLUE_FAULT")
    pre = run_dir / "cases_pre.jsonl"
    rows = [json.loads(line) for line in pre.read_text().splitlines()]
    rows[0]["efficacy"] = 1.0 - rows[0]["efficacy"]
    pre.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_blue(["edit", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path).returncode == 0
    assert_same_run_files(reference, run_dir)
    shutil.rmtree(run_dir)


def test_resume_false_sets_the_old_run_aside_even_when_the_new_start_fails(reference, tmp_path):
    """The new start fails once it has written its config (a layer the model lacks): the
    old run's summary, cases and checkpoint are not left beside the new config."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    proc = run_blue(["edit", *TINY, "resume=false", "model.layers=[1,2,99]", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 2 and "model.layers [99] out of range" in proc.stderr
    [aside] = run_dir.glob("previous-*")
    assert (aside / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoint.safetensors").exists()
    report = run_blue(["report", str(run_dir)], cwd=tmp_path)
    assert report.returncode == 2 and "no summary.json" in report.stderr
