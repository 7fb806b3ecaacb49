"""Run ``blue`` commands: in this process (most tests), or as the installed command in a
new Python where the process itself is what is tested (kills, start-up environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import built_once, invoke_blue


def blue_exe() -> list[str]:
    exe = shutil.which("blue")
    return [exe] if exe else [sys.executable, "-m", "blue_cli.cli"]


def run_blue(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``blue ARGS`` in this process (tests/conftest.py: invoke_blue), as a CompletedProcess."""
    env = {"COLUMNS": "120", **(env_extra or {})}
    result = invoke_blue(args, cwd, env=env)
    return subprocess.CompletedProcess(["blue", *args], result.code, result.stdout, result.stderr)


def run_blue_process(
    args: list[str], cwd: Path, timeout: int = 900, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    """The installed ``blue`` command in a new process."""
    env = dict(os.environ)
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "COLUMNS": "120"})
    env.update(env_extra or {})
    return subprocess.run(blue_exe() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# The methods whose 40-edit quality floors are checked; every other registered method
# gets a smaller run (10 edits in 2 batches) that still shows what it adds.
QUALITY_METHODS = ("memit", "memit_seq", "alphaedit")
STRATEGIES = ("spread", "blue")


def other_methods() -> tuple[str, ...]:
    """Every method in the registry (its YAMLs) that is not a quality method."""
    from blue_cli.config.schema import group_choices

    return tuple(m for m in group_choices("method") if m not in QUALITY_METHODS)


def sweep(root: Path, *overrides: str) -> dict[tuple[str, str], Path]:
    """One in-process ``blue edit -m`` sweep into ``root/sweep``: {(method, strategy): job folder}."""
    folder = root / "sweep"
    proc = run_blue(
        [
            "edit",
            "-m",
            *overrides,
            "eval.generation=false",
            "eval.wild=false",  # the floors are teacher-forced; the wild evaluation has tests of its own
            "eval.perplexity_tokens=0",  # and so has held-out perplexity
            "~hydra.callbacks.sweep_report",
            f"hydra.sweep.dir={folder}",
        ],
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in folder.iterdir() if (p / "summary.json").exists()]
    return {(summary_of(p)["method"], summary_of(p)["strategy"]): p for p in jobs}


def shared_sweep(tmp_path_factory, name: str, split: str, values: list[str], *overrides: str):
    """:func:`sweep` over ``split=values`` (and ``overrides``) as one sweep per value, each run once
    per test run by whichever worker asks first (tests/conftest.py: built_once), so two workers
    share the jobs: {(method, strategy): job folder}."""

    def build(value: str):
        def run(root: Path) -> list[list[str]]:
            return [[m, s, str(job)] for (m, s), job in sweep(root, f"{split}={value}", *overrides).items()]

        return run

    built = built_once(tmp_path_factory, {f"{name}-{value}": build(value) for value in values})
    return {(m, s): Path(job) for jobs in built.values() for m, s, job in jobs}


@pytest.fixture(scope="session")
def sweep_runs(tmp_path_factory):
    """The quality methods x strategies on tiny-gpt2, 40 edits in batches of 10 (a -m sweep per method)."""
    return shared_sweep(
        tmp_path_factory, "sweep", "method", list(QUALITY_METHODS), f"strategy={','.join(STRATEGIES)}",
        "model=tiny-gpt2", "num_edits=40", "batch_size=10",
    )  # fmt: skip


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory):
    """Every other method x strategies on tiny-gpt2, 10 edits in batches of 5."""
    return shared_sweep(
        tmp_path_factory, "small-sweep", "method", list(other_methods()), f"strategy={','.join(STRATEGIES)}",
        "model=tiny-gpt2", "num_edits=10", "batch_size=5",
    )  # fmt: skip


@pytest.fixture(scope="session")
def edit_runs(tmp_path_factory, sweep_runs):
    """The four acceptance runs of issue 2 (MEMIT_seq, as then): {(model, strategy): run_dir}.

    tiny-gpt2's come from the sweep; tiny-llama's from a sweep of their own."""
    runs = {("tiny-gpt2", s): sweep_runs[("memit_seq", s)] for s in STRATEGIES}
    llama = shared_sweep(
        tmp_path_factory, "llama-sweep", "strategy", list(STRATEGIES), "model=tiny-llama", "method=memit_seq",
        "num_edits=40", "batch_size=10",
    )  # fmt: skip
    runs.update({("tiny-llama", s): llama[("memit_seq", s)] for s in STRATEGIES})
    return runs
