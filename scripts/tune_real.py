#!/usr/bin/env python
"""Tune the real model's hyper-parameters from run folders (``make tune-smollm2``).

    python scripts/tune_real.py [--out outputs/tune-smollm2] [--model smollm2-135m]

One knob at a time around the schema's defaults, memit_seq + blue on a tuning slice of the
bundled CounterFact records (``dataset.offset=200``, disjoint from the first records that
evaluation runs use): target lr, steps and clamp, the covariance weight lambda; then
AlphaEdit's null-space threshold with the values kept so far; then one run with everything
kept (the grid's folder when that is the same setting). Each setting is one ``blue edit``
run folder under ``--out`` (a folder that finished with the same config is not rerun, so an
interrupted tuning resumes; scripts/run_folders.py). The rule that keeps a
value is ``blue_cli/reporting/tuning.py``'s; the rows and the kept values are stored in
benchmarks/results/tuning-<model>.json and rendered into docs/real-models.md's tuning block.
The kept values go into conf/hparams/model/<model>.yaml by hand (a test checks they match).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_folders import run_folder

from blue_cli.cache import write_text_atomic
from blue_cli.reporting.readme_results import rewrite_block
from blue_cli.reporting.tuning import (
    TUNING_BEGIN,
    TUNING_END,
    collect_row,
    keep,
    render_tuning,
)

ROOT = Path(__file__).resolve().parent.parent
# knob -> values, the schema default first
TARGET_GRID = {
    "method.target.lr": [0.5, 0.1, 1.0],
    "method.target.steps": [20, 25],
    "method.target.clamp": [0.75, 1.5],
    "model_hparams.cov_weight": [15000, 1500, 150, 150000],
}
ALPHAEDIT_GRID = {"method.nullspace_threshold": [0.02, 0.005]}


def base_overrides(model: str, edits: int, offset: int) -> list[str]:
    return [
        f"model={model}",
        "strategy=blue",
        f"num_edits={edits}",
        f"batch_size={edits}",
        f"dataset.offset={offset}",
        "eval.generation=false",
        "eval.wild=false",  # greedy generation in the wild: most of a run's time, and not a tuning criterion
        "device=cpu",
    ]


def run(out: Path, name: str, overrides: list[str]) -> dict:
    """One run folder (reused when it finished with the same overrides); returns its row."""
    return collect_row(run_folder(out / name, overrides, "tuning run"), name)


def run_name(method: str, setting: dict) -> str:
    """The folder of a setting: the knobs away from their defaults (so each default runs once)."""
    defaults = {k: v[0] for k, v in {**TARGET_GRID, **ALPHAEDIT_GRID}.items()}
    changed = [f"{k.split('.')[-1]}_{v}" for k, v in sorted(setting.items()) if v != defaults.get(k)]
    return f"{method}-" + ("-".join(changed) or "default")


def tune_grid(out: Path, base: list[str], method: str, grid: dict, fixed: dict) -> tuple[list[dict], dict]:
    """Each knob's values with the others at ``fixed``; returns the rows and the value kept per knob."""
    rows, kept = [], {}
    for knob, values in grid.items():
        knob_rows = []
        for value in values:
            setting = {**fixed, knob: value}
            name = run_name(method, setting)
            row = run(out, name, [*base, f"method={method}", *(f"{k}={v}" for k, v in setting.items())])
            knob_rows.append({**row, "knob": knob, "value": value, "method": method})
        kept[knob] = keep(knob_rows)
        rows += knob_rows
    return rows, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "tune-smollm2")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--offset", type=int, default=200)
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "real-models.md")
    args = parser.parse_args()
    base = base_overrides(args.model, args.edits, args.offset)
    # every knob spelled out, so a setting composes the same whatever the model's hparams file holds
    defaults = {knob: values[0] for knob, values in TARGET_GRID.items()}
    rows, kept = tune_grid(args.out, base, "memit_seq", TARGET_GRID, defaults)
    more, kept_alpha = tune_grid(args.out, base, "alphaedit", ALPHAEDIT_GRID, kept)
    rows += more
    kept.update(kept_alpha)
    final = []
    for method in ("memit_seq", "alphaedit"):
        settings = {k: v for k, v in kept.items() if method == "alphaedit" or k not in ALPHAEDIT_GRID}
        overrides = [*base, f"method={method}", *(f"{k}={v}" for k, v in settings.items())]
        row = run(args.out, run_name(method, settings), overrides)
        final.append({**row, "method": method, "knob": "kept", "value": None})
    payload = {
        "model": args.model,
        "records": f"bundled CounterFact {args.offset}..{args.offset + args.edits - 1}",
        "base": base,
        "rows": rows,
        "kept": kept,
        "kept_rows": final,
    }
    store = ROOT / "benchmarks" / "results" / f"tuning-{args.model}.json"
    write_text_atomic(store, json.dumps(payload, indent=1) + "\n")
    rewrite_block(args.page, render_tuning(payload), TUNING_BEGIN, TUNING_END)
    print(f"kept: {kept}\n-> {store} and {args.page}")


if __name__ == "__main__":
    main()
