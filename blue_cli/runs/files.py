"""The run folder's files: every write goes through a temp file and a rename."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blue_cli.cache import write_json_atomic, write_text_atomic

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


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
