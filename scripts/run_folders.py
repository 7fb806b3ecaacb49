"""One ``blue edit`` run folder per setting, for the scripts that sweep the real model
(tune_real.py, real_protocol.py): a folder that finished with the same overrides is reused,
so an interrupted sweep resumes; one with other overrides is refused, never mixed in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def finished_with(folder: Path, overrides: list[str]) -> bool | None:
    """None when ``folder`` holds no finished run; else whether its config is what
    ``overrides`` compose to (blue's own resume key, so spelling a default makes no difference)."""
    from blue_cli.config.overrides import compose_config
    from blue_cli.runs.checkpoint import read_metadata
    from blue_cli.runs.runner import resume_key

    if not (folder / "summary.json").is_file():
        return None
    meta = read_metadata(folder) or {}
    return meta.get("config_key") == resume_key(compose_config(overrides))


def run_folder(folder: Path, overrides: list[str], label: str = "run") -> Path:
    """``blue edit overrides`` into ``folder`` unless it already finished with them."""
    done = finished_with(folder, overrides)
    if done is False:
        wanted = " ".join(overrides)
        raise SystemExit(f"{folder} holds a run of another config than {wanted}: remove it or choose --out")
    if done is None:
        print(f"{label} {folder.name}: blue edit {' '.join(overrides)}", flush=True)
        command = [sys.executable, "-m", "blue_cli.cli", "edit", *overrides, f"hydra.run.dir={folder}"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return folder
