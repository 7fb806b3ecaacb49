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
from blue_cli.editing.context import context_templates
from blue_cli.editing.diagnostics import batch_diagnostics, observe_before, swapped_weights
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
    """

    def __init__(self, cfg: DictConfig, adapter: ModelAdapter, progress=None, compute_stats: bool = True):
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
        self.method = method_class(cfg.method.name)(cfg.method, self.written, num_edits=cfg.num_edits)
        self.method.prepare(self.stats, adapter.device)
        seed_everything(cfg.seed)
        c = cfg.context
        self.groups = context_templates(
            adapter, n_prefixes=c.n_prefixes, n_tokens=c.n_tokens, top_k=c.top_k, seed=cfg.seed
        )
        t = cfg.method.target
        self.ctx = EditContext(
            adapter,
            self.groups,
            target_settings(t),
            batched=t.batched,
            chunk=t.chunk,
            memory_budget_gb=t.memory_budget_gb,
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

    def _edit(self, requests: Sequence[EditRequest], index: int) -> dict:
        adapter, method = self.adapter, self.method
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
