"""The run folder's files: every write goes through a temp file and a rename; every read
of a damaged one (not JSON, not YAML, cut short) is one line naming it and what to do."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blue_cli.cache import write_json_atomic, write_text_atomic
from blue_cli.errors import DamagedFileError

SUMMARY = "summary.json"
BATCHES = "batches.jsonl"
CASES = "cases.jsonl"
PRE_CASES = "cases_pre.jsonl"
EVALS = "evals.jsonl"
RUN_INFO = "run_info.json"
CONFIG = "config.yaml"


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every file parses with a strict reader."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(run_dir: Path, name: str, payload: Any) -> Path:
    path = Path(run_dir) / name
    write_json_atomic(path, _clean(payload))
    return path


def write_jsonl(run_dir: Path, name: str, rows: Sequence[dict]) -> Path:
    """Rewrite the whole JSON-lines file atomically (rows are few: one per batch or case)."""
    path = Path(run_dir) / name
    text = "".join(json.dumps(_clean(row), sort_keys=False) + "\n" for row in rows)
    write_text_atomic(path, text)
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (a resume checks that a run file is the one the run wrote)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def damaged(path: Path, reason: str) -> DamagedFileError:
    """The one-line error for a run file that does not parse: which, why, and how to get it back.

    A resume rewrites every run file from the checkpoint; evals.jsonl it reads first,
    and redoes the evaluation points it lacks while replaying."""
    path = Path(path)
    run = path.parent
    if path.name == EVALS:
        advice = f"remove it, and blue resume {run} evaluates its points again"
    else:
        advice = f"blue resume {run} writes it again"
    return DamagedFileError(f"run file '{path}' is damaged ({reason}): {advice}")


# Keys older versions of blue wrote, and their names now: runs, checkpoints and reports
# read either for one release (a run resumed after the upgrade keeps its numbers).
RENAMED_KEYS = {"target_gain": "z_logprob_gain", "edit_gain": "edit_logprob_gain"}


def current_names(row: dict) -> dict:
    """``row`` with the keys of :data:`RENAMED_KEYS` under their current names."""
    if not any(old in row for old in RENAMED_KEYS):
        return row
    return {RENAMED_KEYS.get(k, k) if RENAMED_KEYS.get(k, k) not in row else k: v for k, v in row.items()}


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines run file ([] when there is none); damaged: DamagedFileError."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise damaged(path, f"line {n} is not JSON: {_reason(exc)}") from None
        if not isinstance(row, dict):
            raise damaged(path, f"line {n} is not a JSON object")
        rows.append(current_names(row))
    return rows


def read_summary(run_dir: Path) -> dict:
    """summary.json of a run folder; damaged: DamagedFileError."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(_read_text(path))
    except ValueError as exc:
        raise damaged(path, f"not JSON: {_reason(exc)}") from None
    if not isinstance(summary, dict):
        raise damaged(path, "not a JSON object")
    return current_names(summary)


def read_config(path: Path):
    """A run's config.yaml as a DictConfig; damaged (not YAML, not a mapping): DamagedFileError."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(path)
    _read_text(path)  # UTF-8 text (else OmegaConf raises a decode error of its own)
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml's and omegaconf's parse errors share no base class
        raise damaged(path, f"not YAML: {_reason(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise damaged(path, "not a mapping of settings")
    return cfg


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise damaged(path, "not UTF-8 text") from None


def _reason(exc: Exception) -> str:
    """The first line of a parser's message: the what and where, without its excerpt."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(exc).__name__
