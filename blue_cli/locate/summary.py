"""Traces averaged over facts, by ROME's six token groups, and the layers they suggest editing.

ROME (Meng et al. 2022, Fig. 2 and its average causal effects) averages each fact's
per-token effects into six rows before averaging over facts: the first subject token, the
further (middle) subject tokens, the last subject token, the first token after the subject,
the further tokens, and the last token. Tokens before the subject (a BOS, "The mother tongue
of") belong to none. A group a fact does not have (a one-token subject has no further subject
tokens) is left out of that group's mean, and the count per group says how many facts it holds.

The suggestion (ROME section 2.3, MEMIT section 3.1): the MLP effect at the last subject token
marks where a fact is recalled, so the ``span`` consecutive layers with the largest mean MLP
effect there are the critical layers to edit; BLUE's boundary layers are their first and last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TOKEN_GROUPS = ("first_subject", "further_subject", "last_subject", "first_after", "further", "last")
SUGGESTION_KIND = "mlp"
SUGGESTION_GROUP = "last_subject"


def group_positions(n_tokens: int, start: int, end: int) -> dict[str, list[int]]:
    """The token positions of each group for a prompt of ``n_tokens`` whose subject is ``start .. end - 1``.

    The last subject token is also the first when the subject is one token, and the last token
    is the last subject token when the prompt ends with the subject; the token right after the
    subject is the first subsequent token unless it is the last token (then it is only that).
    """
    last = n_tokens - 1
    return {
        "first_subject": [start],
        "further_subject": list(range(start + 1, end - 1)),
        "last_subject": [end - 1],
        "first_after": [end] if end < last else [],
        "further": list(range(end + 1, last)),
        "last": [last],
    }


def group_effects(effects: torch.Tensor, start: int, end: int) -> dict[str, torch.Tensor | None]:
    """One fact's (T, L) effects as ``{group: (L,) mean over the group's positions}``; None for an empty group."""
    groups = group_positions(effects.shape[0], start, end)
    return {g: effects[pos].mean(dim=0) if pos else None for g, pos in groups.items()}


@dataclass(frozen=True)
class TraceTable:
    """What :func:`average_effects` needs of one fact: ``effects`` {kind: (T, L)} and its subject range."""

    effects: dict[str, torch.Tensor]
    start: int
    end: int


def average_effects(traces: Sequence[TraceTable], kinds: Sequence[str]) -> tuple[dict, dict[str, int]]:
    """``({kind: {group: [L floats] or None}}, {group: facts counted})``: the mean over facts of each
    fact's group mean (float64); None where no fact has the group."""
    sums: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in kinds}
    counts = dict.fromkeys(TOKEN_GROUPS, 0)
    for trace in traces:
        for kind in kinds:
            for group, row in group_effects(trace.effects[kind].double(), trace.start, trace.end).items():
                if row is None:
                    continue
                sums[kind][group] = sums[kind].get(group, 0) + row
                if kind == kinds[0]:
                    counts[group] += 1
    means = {
        kind: {g: (sums[kind][g] / counts[g]).tolist() if counts[g] else None for g in TOKEN_GROUPS} for kind in kinds
    }
    return means, counts


def suggest_window(per_layer: Sequence[float], span: int) -> tuple[int, float]:
    """``(first layer, mean)`` of the ``span`` consecutive layers with the largest summed ``per_layer``;
    the lowest first layer wins a tie."""
    if not 1 <= span <= len(per_layer):
        raise ValueError(f"span {span} must be between 1 and the {len(per_layer)} layers")
    values = torch.tensor(per_layer, dtype=torch.float64)
    sums = values.unfold(0, span, 1).sum(dim=1)  # (L - span + 1,)
    first = int(torch.argmax(sums))  # argmax returns the first maximum
    return first, float(sums[first] / span)


def suggestion(means: dict, span: int) -> dict | None:
    """The suggested critical layers from :func:`average_effects`'s means (None without MLP traces)."""
    per_layer = means.get(SUGGESTION_KIND, {}).get(SUGGESTION_GROUP)
    if per_layer is None:
        return None
    first, mean = suggest_window(per_layer, span)
    layers = list(range(first, first + span))
    return {
        "kind": SUGGESTION_KIND,
        "group": SUGGESTION_GROUP,
        "span": span,
        "layers": layers,
        "boundary_layers": [layers[0], layers[-1]],
        "mean_effect": mean,
        "override": f"model.layers=[{','.join(map(str, layers))}]",
    }
