"""Per-batch diagnostics: how well the written weights delivered the asked-for state.

The BLUE paper's residual-error analysis: the target z at the last critical layer
is what the edit asks for; the weights deliver h_after. Kept apart from the runner,
which only sequences the loop, and from the strategies, which only write.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from blue_cli.datasets.records import EditRequest
from blue_cli.editing.keys import values_at_subject
from blue_cli.editing.methods.base import EditMethod
from blue_cli.editing.strategies.base import BatchTrace
from blue_cli.evaluation.scoring import score_targets
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import subject_last_index


@contextmanager
def restored_weights(adapter: ModelAdapter, layers: Iterable[int]) -> Iterator[None]:
    """The rewrite matrices of ``layers`` as they are now, put back when the block ends
    (the block may write them); one copy of each."""
    saved = {l: adapter.rewrite_weight(l).detach().clone() for l in layers}
    try:
        yield
    finally:
        for l, w in saved.items():
            adapter.set_rewrite(l, w)


@contextmanager
def swapped_weights(adapter: ModelAdapter, weights: dict[int, torch.Tensor]) -> Iterator[None]:
    """Temporarily put other rewrite matrices in place (e.g. the pre-batch ones)."""
    with restored_weights(adapter, weights):
        for l, w in weights.items():
            adapter.set_rewrite(l, w)
        yield


def new_target_logprobs(adapter: ModelAdapter, requests: Sequence[EditRequest]) -> torch.Tensor:
    """log P(target_new | rewrite prompt) per request (nats, float64)."""
    scores = score_targets(
        adapter, [r.rewrite_prompt for r in requests], [r.target_new for r in requests], chunk=len(requests)
    )
    return torch.tensor([s.logprob for s in scores], dtype=torch.float64)


@dataclass
class BeforeBatch:
    """The model as a batch found it: written matrices, write-point values (d x n), log-probs."""

    weights: dict[int, torch.Tensor]
    values: torch.Tensor
    logprobs: torch.Tensor


@torch.no_grad()
def observe_before(
    adapter: ModelAdapter, method: EditMethod, requests: Sequence[EditRequest], written: Sequence[int], last_layer: int
) -> BeforeBatch:
    return BeforeBatch(
        weights={l: adapter.rewrite_weight(l).detach().clone() for l in written},
        values=values_at_subject(adapter, requests, last_layer, method.write_point),
        logprobs=new_target_logprobs(adapter, requests),
    )


@torch.no_grad()
def batch_diagnostics(
    adapter: ModelAdapter, method: EditMethod, requests: Sequence[EditRequest], trace: BatchTrace, before: BeforeBatch
) -> dict[str, float | list[float]]:
    """write_error: ||z - h_after|| / ||z - h_before|| at the last critical layer's write point,
    averaged over requests (0 = the edited weights produce exactly the asked-for state).
    z_logprob_gain: mean gain in log P(target_new | rewrite prompt) if the pre-batch model's
    state at that point were replaced by z; edit_logprob_gain: the gain the edited model gives.
    target_steps: mean optimisation steps per target (one entry per optimised layer);
    key_fit_error: per written layer, ||Delta K - R|| / ||R||.
    """
    final = trace.final
    point = f"{method.write_point}.{final.layer}"
    z = final.z(method.write_point).T  # (d x n)
    h_after = values_at_subject(adapter, requests, final.layer, method.write_point)
    asked = (z - before.values).norm(dim=0)
    write_error = ((z - h_after).norm(dim=0) / asked.clamp_min(1e-12)).mean()
    lp_after = new_target_logprobs(adapter, requests)
    positions = [subject_last_index(adapter.tok, r.prompt, r.subject) for r in requests]
    with (
        swapped_weights(adapter, before.weights),
        adapter.inject(point, (z - before.values).T, list(range(len(requests))), positions),
    ):
        lp_target = new_target_logprobs(adapter, requests)
    return {
        "write_error": float(write_error),
        "z_logprob_gain": float((lp_target - before.logprobs).mean()),
        "edit_logprob_gain": float((lp_after - before.logprobs).mean()),
        "target_steps": [float(sum(t.steps) / len(t.steps)) for t in trace.targets],
        "key_fit_error": [w.key_fit_error for w in trace.writes],
    }


def change_fingerprint(adapter, originals: dict[int, torch.Tensor]) -> dict[int, list[float]]:
    """Per written layer: [||W - W0||_F, sum(W - W0)] in float64, to check a replay."""
    out = {}
    for layer, W0 in originals.items():
        W = adapter.rewrite_weight(layer).detach()
        change = (W - W0.to(W.device)).double()
        out[layer] = [float(change.norm()), float(change.sum())]
    return out
