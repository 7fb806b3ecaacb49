"""One edit stream on a loaded model: the strategy, the method with its statistics and
state, the context templates, and the batch-by-batch edit with its diagnostics.

The runner (run folders, checkpoints, evaluation points) and the Python API
(``blue_cli.edit``) both edit through this class: one code path.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from blue_cli.config.registry import method_class, strategy_class
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.anchoring import NormAnchor
from blue_cli.editing.context import context_templates
from blue_cli.editing.diagnostics import batch_diagnostics, observe_before, swapped_weights
from blue_cli.editing.norms import matrix_norms
from blue_cli.editing.statistics.store import CovarianceStore, StatsSettings
from blue_cli.editing.strategies.base import EditContext
from blue_cli.editing.targets import TargetSettings
from blue_cli.errors import DataError, NumericalError
from blue_cli.models.adapter import ModelAdapter
from blue_cli.runs.checkpoint import fingerprint

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def target_settings(t: DictConfig) -> TargetSettings:
    return TargetSettings(
        lr=t.lr,
        steps=t.steps,
        clamp=t.clamp,
        kl_factor=t.kl_factor,
        weight_decay=t.weight_decay,
        early_stop_loss=t.early_stop_loss,
        reuse_prefix=t.reuse_prefix,
    )


def stats_settings(cfg: DictConfig) -> StatsSettings:
    s = cfg.stats
    return StatsSettings(
        corpus=s.corpus, samples=s.samples, max_length=s.max_length, batch_tokens=s.batch_tokens, precision=s.precision
    )


@dataclass
class BatchLog:
    """What a finished batch did, enough to replay it (see checkpoint.py): each write's
    layer and residual (on the CPU, in order; none for a skipped batch), and the
    fingerprint of every written matrix's change afterwards."""

    writes: list[tuple[int, torch.Tensor]]
    fingerprint: dict[int, list[float]]


class EditSession:
    """Built from a composed config and a loaded model; ``progress`` tracks the statistics.

    ``compute_stats=False`` refuses to compute missing statistics (replaying a finished
    run for export or analysis must use the run's own, not hours of new ones).
    ``pool``: the stream's requests, from which Norm-Anchor Scaling samples its reference
    (``method.norm_anchor``; default: the first batch's requests).
    """

    def __init__(
        self,
        cfg: DictConfig,
        adapter: ModelAdapter,
        progress=None,
        compute_stats: bool = True,
        pool: Sequence[EditRequest] | None = None,
    ):
        self.cfg, self.adapter = cfg, adapter
        self.strategy = strategy_class(cfg.strategy.name)(cfg.strategy)
        self.critical = list(cfg.model.layers)
        self.written = self.strategy.written_layers(self.critical)
        self.stats = CovarianceStore(adapter, stats_settings(cfg))
        t0 = time.perf_counter()
        missing = self.stats.missing(self.written)
        if missing and not compute_stats:
            raise DataError(
                f"no cached statistics for layers {missing} of '{adapter.name}' under '{self.stats.root}' "
                "(replaying a run needs the run's statistics: run blue stats with the run's config there)"
            )
        if missing:
            if progress is None:
                self.stats.ensure(self.written)
            else:
                with progress.track("covariance statistics", 1) as update:
                    self.stats.ensure(self.written, progress=update)
        self.cov_seconds = time.perf_counter() - t0
        adapter.keep_rewrite_float32(self.written)
        self.method = method_class(cfg.method.name)(cfg.method, self.written)
        self.method.prepare(self.stats, adapter.device)
        seed_everything(cfg.seed)
        c = cfg.context
        self.groups = context_templates(
            adapter, n_prefixes=c.n_prefixes, n_tokens=c.n_tokens, top_k=c.top_k, seed=cfg.seed
        )
        t = cfg.method.target
        anchor = cfg.method.get("norm_anchor")
        self.ctx = EditContext(
            adapter,
            self.groups,
            target_settings(t),
            batched=t.batched,
            chunk=t.chunk,
            memory_budget_gb=t.memory_budget_gb,
            norm_anchor=NormAnchor(anchor, cfg.seed, pool) if anchor is not None and anchor.enabled else None,
        )
        self.originals = {l: adapter.rewrite_weight(l).detach().clone() for l in self.written}
        self.log: list[BatchLog] = []

    def edit_batch(self, requests: Sequence[EditRequest], index: int) -> dict:
        """Edit one batch; returns its row (timings and diagnostics). A non-finite value
        leaves the weights as before the batch and raises, or with ``on_nan=skip`` gives
        a row marked ``skipped``."""
        try:
            return self._edit(requests, index)
        except NumericalError as exc:
            if self.cfg.get("on_nan", "stop") != "skip":
                raise
            log.warning("skipped: %s", exc)
            self._record([])
            return {"batch": index, "edits": 0, "case_ids": [r.case_id for r in requests], "skipped": str(exc)}

    def replay_batch(self, requests: Sequence[EditRequest], writes: Sequence[tuple[int, torch.Tensor]]) -> None:
        """Redo a finished batch from its recorded residuals (resume, export, analysis):
        the strategy's write path without target optimisation or diagnostics."""
        if writes:
            self.strategy.edit_batch(self.method, self.ctx, requests, self.critical, replay=writes)
        self._record(list(writes))

    def _record(self, writes: list[tuple[int, torch.Tensor]]) -> None:
        self.log.append(BatchLog(writes, fingerprint(self.adapter, self.originals)))

    @property
    def norm_reference(self) -> dict[int, float]:
        """Norm-Anchor Scaling's reference norm per target layer ({} without anchoring, or before batch 0)."""
        return dict(self.ctx.norm_anchor.reference) if self.ctx.norm_anchor is not None else {}

    def restore_norm_reference(self, reference: dict[int, float]) -> None:
        """A resumed run's reference norms, computed on the original model by the run itself."""
        if self.ctx.norm_anchor is not None:
            self.ctx.norm_anchor.reference = {int(l): float(v) for l, v in reference.items()}

    def monitor(self, trace) -> dict:
        """Collapse monitoring after a batch (docs/long-horizon.md): per written layer ||W||_F,
        ||W - W0||_F and sigma_max(W - W0) (power-iteration estimate); per target layer the mean
        and largest norm of the value vectors v* the batch wrote; edits Norm-Anchor Scaling dropped."""
        norms = {l: matrix_norms(self.adapter.rewrite_weight(l), W0) for l, W0 in self.originals.items()}
        row = {
            "weight_norm": {str(l): n["weight"] for l, n in norms.items()},
            "change_norm": {str(l): n["change"] for l, n in norms.items()},
            "change_spectral_norm": {str(l): n["change_spectral"] for l, n in norms.items()},
            "value_norm_mean": {str(t.layer): sum(t.value_norms) / len(t.value_norms) for t in trace.targets},
            "value_norm_max": {str(t.layer): max(t.value_norms) for t in trace.targets},
        }
        if self.ctx.norm_anchor is not None:
            row["anchor_skipped"] = sum(t.anchor_skipped for t in trace.targets)
        return row

    def _edit(self, requests: Sequence[EditRequest], index: int) -> dict:
        adapter, method = self.adapter, self.method
        anchor = self.ctx.norm_anchor
        if anchor is not None and self.log and not anchor.ready(self.strategy.target_layers(self.critical)):
            raise DataError(
                "method.norm_anchor is on but this stream's reference norms are unknown after "
                f"{len(self.log)} batches (they are measured on the original model before the first one)"
            )
        start = time.perf_counter()
        before = observe_before(adapter, method, requests, self.written, self.critical[-1])
        t_edit = time.perf_counter()
        try:
            trace = self.strategy.edit_batch(method, self.ctx, requests, self.critical, before=before.weights)
        except NumericalError as exc:
            for layer, weight in before.weights.items():
                adapter.set_rewrite(layer, weight)
            ids = [r.case_id for r in requests]
            raise NumericalError(
                f"batch {index} (case_ids {ids[0]}..{ids[-1]}): {exc}; the weights are as before this batch"
            ) from None
        edit_seconds = time.perf_counter() - t_edit
        self._record([(w.layer, w.residual) for w in trace.writes])
        diag = batch_diagnostics(adapter, method, requests, trace, before)
        return {
            "batch": index,
            "edits": len(requests),
            "case_ids": [r.case_id for r in requests],
            "seconds": time.perf_counter() - start,
            "edit_seconds": edit_seconds,
            **diag,
            **self.monitor(trace),
        }

    def final_weights(self) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
        """The written matrices as the method leaves them (PRUNE's restraint), and its diagnostics."""
        current = {l: self.adapter.rewrite_weight(l).detach() for l in self.originals}
        return self.method.final_weights(current, self.originals)

    @contextmanager
    def final_view(self) -> Iterator[None]:
        """The method's final view in place for an evaluation point (PRUNE); a no-op,
        no copy, for methods whose final view is the weights as edited."""
        if not self.method.final_view:
            yield
            return
        with swapped_weights(self.adapter, self.final_weights()[0]):
            yield

    def apply_final_weights(self) -> dict[str, float]:
        """Put the method's final view in place (after the last batch); returns its diagnostics."""
        final, info = self.final_weights()
        for layer, weight in final.items():
            self.adapter.set_rewrite(layer, weight)
        return info
