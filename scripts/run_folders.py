"""One ``blue edit`` run folder per setting, for the scripts that sweep the real model
(tune_real.py, real_protocol.py, long_horizon_curves.py): a folder that finished with the same
config is reused, so an interrupted sweep resumes; one with another config is refused, never
mixed in.

"The same config": blue's own resume key, or, for a folder written before the config schema
gained or lost a key, the same value at every key both configs have (a key added to the schema
defaults to what runs did before it; a removed one no longer exists to differ). Only these
scripts reuse on that rule: ``blue resume`` still needs the exact key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def same_on_shared_keys(stored, wanted) -> bool:
    """Whether two plain configs agree at every key path both hold (lists compared whole)."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return all(same_on_shared_keys(stored[k], wanted[k]) for k in stored.keys() & wanted.keys())
    return stored == wanted


def finished_with(folder: Path, overrides: list[str]) -> bool | None:
    """None when ``folder`` holds no finished run; else whether its config is what
    ``overrides`` compose to (spelling a default makes no difference)."""
    from omegaconf import OmegaConf

    from blue_cli.config.overrides import compose_config
    from blue_cli.runs.checkpoint import read_metadata
    from blue_cli.runs.files import CONFIG, read_config
    from blue_cli.runs.runner import resume_key

    if not (folder / "summary.json").is_file():
        return None
    wanted = compose_config(overrides)
    meta = read_metadata(folder) or {}
    if meta.get("config_key") == resume_key(wanted):
        return True
    stored = OmegaConf.to_container(read_config(folder / CONFIG), resolve=True)
    plain = OmegaConf.to_container(wanted, resolve=True)
    for config in (stored, plain):
        config.pop("resume", None)
    return same_on_shared_keys(stored, plain)


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
