"""Norm-Anchor Scaling (NAS; Liu et al. 2026, arXiv 2602.02543): a config option of every
method and every strategy (``method.norm_anchor.enabled=true``), not a method of its own.

What it does, as the paper's code (SasyaTitech/NAS, ``NAS/compute_z.py`` and
``util/vstar_stats.py``) defines it:

* the solved value vector of a request at a target layer is v* = v0 + delta, where v0 is
  the rewrite matrix's output (the MLP output, point ``mlp.<layer>``) at the subject's
  last token of the bare rewrite prompt and delta the optimised shift of the write point;
* the reference norm of that layer is the mean ||v*|| over ``samples`` requests whose
  targets are optimised on the *original* model with the bare prompt only (no context
  templates), the largest 5% (``1 - keep_quantile``) left out; it is computed once,
  before the first write, and kept in the checkpoint so a resumed run uses the same one;
* every v* of the stream is rescaled to that norm, unless ||v*|| > 2 x reference
  (``skip_factor``), when that request's edit is dropped (v* = v0);
* the target becomes z' = h_init - v0 + v*', so every strategy and every method writes
  the rescaled vector through its own path (editing/norms.py: :func:`anchor_values`).

Differs from reference: the reference samples its 1000 requests from the whole of
multi_counterfact with seed 0, whatever the edited dataset; blue samples them, with
the run's seed, from the run's own requests (the stream being edited), so it needs no
other file and works for zsRE; the reference's own target optimisation for the
statistics uses its MEMIT settings, blue the run's ``method.target`` settings.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch

from blue_cli.config.schema import TargetConfig
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.keys import values_at_subject
from blue_cli.editing.norms import anchor_values, trimmed_mean
from blue_cli.editing.targets import TargetResult, optimise_targets

log = logging.getLogger(__name__)

VALUE_POINT = "mlp"  # the rewrite matrix's output: what a value vector is


class NormAnchor:
    """The reference norms of one stream and the rescaling of its targets."""

    def __init__(self, cfg, seed: int, pool: Sequence[EditRequest] | None = None):
        self.samples = int(cfg.samples)
        self.keep_quantile = float(cfg.keep_quantile)
        self.skip_factor = float(cfg.skip_factor)
        self.seed = seed
        self.pool = list(pool) if pool is not None else None
        self.reference: dict[int, float] = {}

    def ready(self, layers: Sequence[int]) -> bool:
        return all(l in self.reference for l in layers)

    def ensure(
        self,
        adapter,
        requests: Sequence[EditRequest],
        layers: Sequence[int],
        points: Sequence[str],
        write_point: str,
        settings: TargetConfig,
        chunk: int,
    ) -> None:
        """Compute the missing reference norms on the model as it is now (the caller makes
        sure that is the original model: before the first write of the stream)."""
        missing = [l for l in layers if l not in self.reference]
        if not missing:
            return
        pool = self.pool or list(requests)
        sample = random.Random(self.seed).sample(pool, min(self.samples, len(pool)))
        for layer in missing:
            norms = []
            for start in range(0, len(sample), max(1, chunk)):
                part = sample[start : start + max(1, chunk)]
                result = optimise_targets(adapter, part, ["{}"], layer, settings, points)
                norms.append(_value_vector_norms(adapter, part, layer, result.delta[write_point]))
            self.reference[layer] = trimmed_mean(torch.cat(norms), self.keep_quantile)
            log.info("norm anchor of layer %d: %.6g (from %d requests)", layer, self.reference[layer], len(sample))

    def apply(self, adapter, requests: Sequence[EditRequest], result: TargetResult, write_point: str) -> None:
        """Rescale ``result``'s value vectors at its write point in place; sets its
        ``value_norms`` (the v* written) and ``anchor_skipped`` (edits dropped)."""
        v0 = values_at_subject(adapter, requests, result.layer, VALUE_POINT).T
        delta = result.delta[write_point]
        new_delta, skipped = anchor_values(v0, delta.to(v0.device), self.reference[result.layer], self.skip_factor)
        result.delta[write_point] = new_delta.to(delta.device)
        result.value_norms = (v0 + new_delta).norm(dim=1).tolist()
        result.anchor_skipped = int(skipped.sum())


def value_norms(adapter, requests: Sequence[EditRequest], result: TargetResult, write_point: str) -> list[float]:
    """||v0 + delta|| per request: the value vectors a target asks the rewrite matrix to produce."""
    return _value_vector_norms(adapter, requests, result.layer, result.delta[write_point]).tolist()


def _value_vector_norms(adapter, requests: Sequence[EditRequest], layer: int, delta: torch.Tensor) -> torch.Tensor:
    """||v*|| = ||v0 + delta|| per request, v0 the rewrite matrix's output at the subject on the model now."""
    v0 = values_at_subject(adapter, requests, layer, VALUE_POINT).T
    return (v0 + delta.to(v0.device)).norm(dim=1)
