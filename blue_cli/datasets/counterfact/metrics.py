"""CounterFact metrics: efficacy, generalisation, specificity (Meng et al. 2022).

Per case, as the reference computes them from mean per-token NLLs:
efficacy = mean over rewrite prompts of [NLL(true) > NLL(new)], generalisation the
same over paraphrases, specificity = mean over neighbourhood prompts of
[NLL(true) < NLL(new)]; each ``*_gap`` is the mean of exp(-NLL(new)) - exp(-NLL(true))
(sign flipped for specificity), the reference's "magnitude".

``cases.jsonl`` shows, for the rewrite prompt, the quantity efficacy compares: the
per-token mean log-probability of each target (``rewrite_mean_logprob_new`` /
``_true``, = -NLL). The summed log-probabilities (``rewrite_logprob_sum_new`` /
``_true``) are kept under names that say so: a longer target has a lower sum, so a
case can win on means (efficacy 1) and lose on sums, and the two must not be confused.
The summary's ``target_logprob_gain`` is a difference of the sums.
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
    """One dict per case: the three rates, their gaps, and the rewrite prompt's per-token mean and
    summed log P of both targets (module docstring)."""
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
        for which in ("new", "true"):
            score = grouped[(i, "efficacy", which)][0]
            case[f"rewrite_mean_logprob_{which}"] = -score.nll
            case[f"rewrite_logprob_sum_{which}"] = score.logprob
        cases.append(case)
    return cases
