"""Run the installed ``blue`` command in a subprocess, from a scratch folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def blue_exe() -> list[str]:
    exe = shutil.which("blue")
    return [exe] if exe else [sys.executable, "-m", "blue_cli.cli"]


def run_blue(
    args: list[str], cwd: Path, timeout: int = 900, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "COLUMNS": "120"})
    env.update(env_extra or {})
    return subprocess.run(blue_exe() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


METHODS = ("memit", "memit_seq", "alphaedit", "pmet", "rect", "prune")


@pytest.fixture(scope="session")
def sweep_runs(tmp_path_factory):
    """One -m sweep over the methods x strategies on tiny-gpt2 (40 edits, batches of 10)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "sweep"
    proc = run_blue(
        [
            "edit",
            "-m",
            f"method={','.join(METHODS)}",
            "strategy=spread,blue",
            "model=tiny-gpt2",
            "num_edits=40",
            "batch_size=10",
            "eval.generation=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=root,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        (summary_of(p)["method"], summary_of(p)["strategy"]): p
        for p in sweep.iterdir()
        if (p / "summary.json").exists()
    }


@pytest.fixture(scope="session")
def edit_runs(tmp_path_factory, sweep_runs):
    """The four acceptance runs of issue 2 (MEMIT_seq, as then): {(model, strategy): run_dir}.

    tiny-gpt2's come from the sweep."""
    root = tmp_path_factory.mktemp("edit-runs")
    runs = {("tiny-gpt2", s): sweep_runs[("memit_seq", s)] for s in ("spread", "blue")}
    for model in ("tiny-llama",):
        for strategy in ("spread", "blue"):
            run_dir = root / f"{model}-{strategy}"
            proc = run_blue(
                [
                    "edit",
                    f"model={model}",
                    "method=memit_seq",
                    f"strategy={strategy}",
                    "num_edits=40",
                    "batch_size=10",
                    "eval.generation=false",
                    f"hydra.run.dir={run_dir}",
                ],
                cwd=root,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[(model, strategy)] = run_dir
    return runs
