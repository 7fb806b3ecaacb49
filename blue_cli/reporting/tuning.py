"""Hyper-parameter tuning on a real model, read from run folders (scripts/tune_real.py).

One knob is varied at a time; a row is one run folder. The rule that keeps a value is
here so that a test can apply it independently: a setting is admissible when it keeps
specificity within ``SPECIFICITY_DROP`` of the pre-edit rate and perplexity within
``PERPLEXITY_RISE`` of the pre-edit one; its score is the mean of post-edit efficacy and
generalisation; a value other than the default is kept only when admissible and when it
beats the default's score by at least ``MARGIN`` (on ten edits, one case of efficacy moves
the score by 0.05), or when the default is not admissible.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from blue_cli.runs.files import BATCHES, read_jsonl, read_summary

TUNING_BEGIN = "<!-- tuning:begin (make tune-smollm2 writes this block) -->"
TUNING_END = "<!-- tuning:end -->"
SPECIFICITY_DROP = 0.05
PERPLEXITY_RISE = 0.10
MARGIN = 0.10
SUMMARY_KEYS = (
    "efficacy",
    "generalization",
    "specificity",
    "pre_efficacy",
    "pre_generalization",
    "pre_specificity",
    "perplexity",
    "pre_perplexity",
    "write_error",
    "z_logprob_gain",
    "edit_logprob_gain",
    "seconds_per_batch",
)


def collect_row(folder: Path, name: str) -> dict:
    """A run folder's tuning row: its summary's rates and the mean target steps per written layer."""
    summary = read_summary(folder)
    steps = [s for batch in read_jsonl(folder / BATCHES) for s in batch.get("target_steps") or []]
    row = {k: summary.get(k) for k in SUMMARY_KEYS}
    row["target_steps_mean"] = sum(steps) / len(steps) if steps else None
    row["run"] = name
    return row


def admissible(row: dict) -> bool:
    spe_ok = row["specificity"] >= row["pre_specificity"] - SPECIFICITY_DROP
    ppl = row.get("perplexity"), row.get("pre_perplexity")
    ppl_ok = None in ppl or ppl[0] <= ppl[1] * (1 + PERPLEXITY_RISE)
    return spe_ok and ppl_ok


def score(row: dict) -> float:
    return (row["efficacy"] + row["generalization"]) / 2


def keep(rows: Sequence[dict]):
    """The value kept among one knob's rows (the first row holds the default value)."""
    default = rows[0]
    candidates = [r for r in rows if admissible(r)]
    if not candidates:
        return default["value"]
    best = max(candidates, key=score)
    if admissible(default) and score(best) < score(default) + MARGIN:
        return default["value"]
    return best["value"]


def _fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_tuning(payload: dict) -> str:
    """The tuning block: one line per run, the kept value marked, then the kept runs."""
    lines = [
        f"_From `benchmarks/results/tuning-{payload['model']}.json` ({payload['records']}, one batch, "
        "memit_seq + blue unless the method says otherwise; rendered by `make tune-smollm2`)._",
        "",
        "| method | knob | value | eff | gen | spe (pre) | ppl (pre) | write error | z gain → written gain (nats) "
        "| target steps | kept |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    kept = payload["kept"]
    for row in [*payload["rows"], *payload["kept_rows"]]:
        is_kept = row["knob"] == "kept" or kept.get(row["knob"]) == row["value"]
        value = "all kept" if row["knob"] == "kept" else row["value"]
        lines.append(
            f"| {row['method']} | {row['knob']} | {value} | {_fmt(row['efficacy'], 2)} | "
            f"{_fmt(row['generalization'], 2)} | {_fmt(row['specificity'], 2)} ({_fmt(row['pre_specificity'], 2)}) | "
            f"{_fmt(row['perplexity'], 2)} ({_fmt(row['pre_perplexity'], 2)}) | {_fmt(row['write_error'])} | "
            f"{_fmt(row['z_logprob_gain'], 2)} → {_fmt(row['edit_logprob_gain'], 2)} | "
            f"{_fmt(row['target_steps_mean'], 1)} | {'✓' if is_kept else ''} |"
        )
    pre = payload["rows"][0]
    lines += [
        "",
        "Kept: " + ", ".join(f"`{k}={v}`" for k, v in kept.items()) + ". Pre-edit efficacy / generalisation: "
        f"{_fmt(pre['pre_efficacy'], 2)} / {_fmt(pre['pre_generalization'], 2)}.",
    ]
    return "\n".join(lines)
