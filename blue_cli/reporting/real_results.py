"""The paper's protocol on a real model, as a docs page (scripts/real_protocol.py).

Each (dataset, method) pair was run under both strategies on the same records, so the two
runs have the same cases: BLUE's effect on a rate is the mean over cases of the per-case
difference (blue - spread), with its 95% interval (1.96 sd / sqrt(n), the tables' normal
interval); a difference is called a gain or a loss only when its interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from blue_cli.datasets.base import RATES
from blue_cli.reporting.compare import Z95, case_spread
from blue_cli.runs.files import CASES, CONFIG, read_config, read_jsonl, read_summary

PROTOCOL_BEGIN = "<!-- protocol:begin (make real-protocol writes this block) -->"
PROTOCOL_END = "<!-- protocol:end -->"
STRATEGIES = ("spread", "blue")


def paired_difference(cases_a: Sequence[dict], cases_b: Sequence[dict], metric: str) -> tuple[float, float, int]:
    """Mean over shared cases of ``b - a`` on ``metric``, its 95% half-width and the case count."""
    a = {c["case_id"]: float(c[metric]) for c in cases_a if c.get(metric) is not None}
    pairs = [float(c[metric]) - a[c["case_id"]] for c in cases_b if c.get(metric) is not None and c["case_id"] in a]
    n = len(pairs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(pairs) / n
    if n < 2:
        return mean, math.nan, n
    var = sum((d - mean) ** 2 for d in pairs) / (n - 1)
    return mean, Z95 * math.sqrt(var / n), n


def verdict(mean: float, half: float) -> str:
    if math.isnan(half):
        return "not measured"
    if mean - half > 0:
        return "gain"
    if mean + half < 0:
        return "loss"
    return "no difference shown"


def run_record(folder: Path) -> dict:
    """The protocol's view of one run folder."""
    summary, config, cases = read_summary(folder), read_config(folder / CONFIG), read_jsonl(folder / CASES)
    record = {
        "run": folder.name,
        "dataset": summary["dataset"],
        "method": summary["method"],
        "strategy": summary["strategy"],
        "num_edits": summary["num_edits"],
        "batch_size": summary["batch_size"],
        "seconds_per_batch": summary.get("seconds_per_batch"),
        "edit_seconds": summary.get("edit_seconds"),
        "evaluation_seconds": summary.get("evaluation_seconds"),
        "perplexity": summary.get("perplexity"),
        "pre_perplexity": summary.get("pre_perplexity"),
        "write_error": summary.get("write_error"),
        "layers": list(config["model"]["layers"]),
    }
    for rate in RATES:
        record[rate] = summary.get(rate)
        record[f"pre_{rate}"] = summary.get(f"pre_{rate}")
        record[f"{rate}_pm"] = case_spread(cases, rate)
    record["cases"] = [{"case_id": c["case_id"], **{r: c.get(r) for r in RATES}} for c in cases]
    return record


def pair_rows(records: Sequence[dict]) -> list[dict]:
    """One row per (dataset, method) with both strategies: their rates and BLUE's paired effect."""
    by_key: dict[tuple[str, str], dict[str, dict]] = {}
    for rec in records:
        by_key.setdefault((rec["dataset"], rec["method"]), {})[rec["strategy"]] = rec
    rows = []
    for (dataset, method), runs in sorted(by_key.items()):
        if not all(s in runs for s in STRATEGIES):
            continue
        spread, blue = runs["spread"], runs["blue"]
        row = {"dataset": dataset, "method": method, "spread": _strip(spread), "blue": _strip(blue)}
        for rate in RATES:
            mean, half, n = paired_difference(spread["cases"], blue["cases"], rate)
            row[f"{rate}_diff"] = {"mean": mean, "half": half, "n": n, "verdict": verdict(mean, half)}
        rows.append(row)
    return rows


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "cases"}


def _rate(run: dict, rate: str) -> str:
    pm = run.get(f"{rate}_pm")
    return f"{run[rate]:.2f}" + (f" ± {pm:.2f}" if pm is not None else "")


def _diff(d: dict) -> str:
    if math.isnan(d["half"]):
        return "–"
    return f"{d['mean']:+.2f} ± {d['half']:.2f}"


def _ppl(run: dict) -> str:
    if run.get("perplexity") is None:
        return "–"
    return f"{run['perplexity']:.2f}"


def render_protocol(payload: dict) -> str:
    """Per dataset, one line per method: each strategy's rates ± their intervals, BLUE's paired
    effect, perplexity; then a count of gains and losses per rate."""
    rows = payload["rows"]
    lines = [
        f"_From `benchmarks/results/{payload['store']}` ({payload['description']}); rendered by `make real-protocol`._",
    ]
    for dataset in sorted({r["dataset"] for r in rows}):
        part = [r for r in rows if r["dataset"] == dataset]
        first = part[0]["spread"]
        pre = " / ".join(f"{first[f'pre_{rate}']:.2f}" for rate in RATES)
        lines += [
            "",
            f"**{dataset}**: {first['num_edits']} edits in batches of {first['batch_size']}; pre-edit "
            f"efficacy / generalisation / specificity {pre}; perplexity before editing "
            f"{_fmt(first.get('pre_perplexity'))}.",
            "",
            "| method | rate | spread | blue | blue − spread (paired, 95%) |",
            "|---|---|---:|---:|---:|",
        ]
        for row in part:
            for rate in RATES:
                lines.append(
                    f"| {row['method']} | {rate} | {_rate(row['spread'], rate)} | {_rate(row['blue'], rate)} "
                    f"| {_diff(row[f'{rate}_diff'])} |"
                )
            lines.append(f"| {row['method']} | perplexity | {_ppl(row['spread'])} | {_ppl(row['blue'])} | |")
    runs = [row[s] for row in rows for s in STRATEGIES]
    if runs and all(r.get("edit_seconds") is not None and r.get("evaluation_seconds") is not None for r in runs):
        edit = sum(r["edit_seconds"] for r in runs) / 60
        evaluation = sum(r["evaluation_seconds"] for r in runs) / 60
        lines += ["", f"Time, all {len(runs)} runs: {edit:.0f} min editing, {evaluation:.0f} min evaluating."]
    lines += [
        "",
        "What the runs show (a gain or a loss: its 95% interval excludes zero; each with its paired "
        "mean difference and 95% half-width):",
        "",
    ]
    for rate in RATES:
        verdicts = [(r["dataset"], r["method"], r[f"{rate}_diff"]) for r in rows]
        gains = [f"{m} ({d}): {_diff(x)}" for d, m, x in verdicts if x["verdict"] == "gain"]
        losses = [f"{m} ({d}): {_diff(x)}" for d, m, x in verdicts if x["verdict"] == "loss"]
        neither = sum(1 for _, _, x in verdicts if x["verdict"] == "no difference shown")
        lines.append(
            f"- {rate}: BLUE gains in {len(gains)} of {len(verdicts)} pairs"
            + (f" ({', '.join(gains)})" if gains else "")
            + f", loses in {len(losses)}"
            + (f" ({', '.join(losses)})" if losses else "")
            + f", no difference shown in {neither}."
        )
    return "\n".join(lines)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"
