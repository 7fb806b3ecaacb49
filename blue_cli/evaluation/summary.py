"""Per-case metric dicts -> run-level means."""

from __future__ import annotations

import math
from collections.abc import Sequence

# The rates every dataset reports (datasets/base.py RATES). A case may have no value for one
# (a CounterFact record without paraphrases has no generalization): the summary counts those.
RATES = ("efficacy", "generalization", "specificity")


def summarise(cases: Sequence[dict], prefix: str = "") -> dict[str, float]:
    """Means over cases of every numeric key; NaN and missing values (a case without
    paraphrases, or one whose generations were not sampled) are skipped, and so are keys
    that hold texts or lists (the answers of the evaluation in the wild); a mean is over
    the cases that have the value (NaN, written as null, when none has it). For each rate
    some cases lack, ``<rate>_cases_without`` says how many."""
    keys: list[str] = []
    for case in cases:
        keys += [k for k in case if k != "case_id" and k not in keys]
    out: dict[str, float] = {}
    for key in keys:
        vals = [c.get(key) for c in cases]
        if all(isinstance(v, (str, list, dict)) for v in vals if v is not None) and any(v is not None for v in vals):
            continue  # texts (a generated answer), not a metric
        vals = [v for v in vals if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))]
        out[prefix + key] = sum(vals) / len(vals) if vals else float("nan")
        if key in RATES and len(vals) < len(cases):
            out[f"{prefix}{key}_cases_without"] = len(cases) - len(vals)
    return out
