"""CounterFact metrics: efficacy, generalisation, specificity (Meng et al. 2022).

Per case, as the reference computes them from mean per-token NLLs:
efficacy = mean over rewrite prompts of [NLL(true) > NLL(new)], generalisation the
same over paraphrases, specificity = mean over neighbourhood prompts of
[NLL(true) < NLL(new)]; each ``*_gap`` is the mean of exp(-NLL(new)) - exp(-NLL(true))
(sign flipped for specificity), the reference's "magnitude".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from blue_cli.datasets.base import RATES
from blue_cli.datasets.records import EditRequest
from blue_cli.evaluation.scoring import TargetScore, score_targets
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import fill


def rewrite_prompt(req: EditRequest) -> str:
    return fill(req.prompt, req.subject)


def _prompt_sets(req: EditRequest) -> dict[str, list[str]]:
    return {
        "efficacy": [rewrite_prompt(req)],
        "generalization": list(req.paraphrase_prompts),
        "specificity": list(req.neighborhood_prompts),
    }


def _case_metrics(new: list[TargetScore], true: list[TargetScore], kind: str) -> tuple[float, float]:
    if not new:
        return float("nan"), float("nan")
    sign = -1.0 if kind == "specificity" else 1.0
    hits = [(t.nll < n.nll) if kind == "specificity" else (t.nll > n.nll) for n, t in zip(new, true)]
    gaps = [sign * (math.exp(-n.nll) - math.exp(-t.nll)) for n, t in zip(new, true)]
    return sum(hits) / len(hits), sum(gaps) / len(gaps)


def evaluate_counterfact(
    adapter: ModelAdapter, requests: Sequence[EditRequest], progress: Callable[[int, int], None] | None = None
) -> list[dict]:
    """One dict per case: the three rates, their gaps, and log P(target_new | rewrite prompt)."""
    prompts, targets, owners = [], [], []
    for i, req in enumerate(requests):
        for kind, plist in _prompt_sets(req).items():
            for p in plist:
                for which, target in (("new", req.target_new), ("true", req.target_true)):
                    prompts.append(p)
                    targets.append(target)
                    owners.append((i, kind, which))
    scores: list[TargetScore] = []
    step = 256
    for start in range(0, len(prompts), step):
        scores += score_targets(adapter, prompts[start : start + step], targets[start : start + step])
        if progress:
            progress(min(start + step, len(prompts)), len(prompts))
    grouped: dict[tuple[int, str, str], list[TargetScore]] = {}
    for owner, score in zip(owners, scores):
        grouped.setdefault(owner, []).append(score)
    cases = []
    for i, req in enumerate(requests):
        case: dict = {"case_id": req.case_id}
        for kind in RATES:
            new, true = grouped.get((i, kind, "new"), []), grouped.get((i, kind, "true"), [])
            case[kind], case[f"{kind}_gap"] = _case_metrics(new, true, kind)
        case["rewrite_logprob_new"] = grouped[(i, "efficacy", "new")][0].logprob
        case["rewrite_logprob_true"] = grouped[(i, "efficacy", "true")][0].logprob
        cases.append(case)
    return cases
