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
from blue_cli.config.schema import StatsConfig, TargetConfig, typed
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.anchoring import NormAnchor
from blue_cli.editing.context import context_templates
from blue_cli.editing.diagnostics import batch_diagnostics, change_fingerprint, observe_before, swapped_weights
from blue_cli.editing.methods.base import EditMethod
from blue_cli.editing.norms import matrix_norms
from blue_cli.editing.statistics.store import CovarianceStore
from blue_cli.editing.strategies.base import EditContext, PhaseTimer, Strategy, no_timer
from blue_cli.errors import DataError, NumericalError
from blue_cli.models.adapter import ModelAdapter

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def target_settings(t: DictConfig) -> TargetConfig:
    """``method.target`` as its typed schema object."""
    return typed(t, TargetConfig)


def stats_settings(cfg: DictConfig) -> StatsConfig:
    """``stats`` as its typed schema object."""
    return typed(cfg.stats, StatsConfig)


@dataclass
class BatchLog:
    """What a finished batch did, enough to replay it (see checkpoint.py): each write's
    layer and residual (on the CPU, in order; none for a skipped batch), and the
    fingerprint of every written matrix's change afterwards."""

    writes: list[tuple[int, torch.Tensor]]
    fingerprint: dict[int, list[float]]


class EditSession:
    """One edit stream: the strategy, the method with its statistics and state, the context
    templates and the model. Built by :func:`build_session` (the one way to build it).

    ``written``: the layers the method writes (the strategy's, unless the caller asked
    for others); ``cov_seconds``: the time spent computing missing statistics.
    """

    def __init__(
        self,
        cfg: DictConfig,
        adapter: ModelAdapter,
        strategy: Strategy,
        method: EditMethod,
        covariances: CovarianceStore,
        ctx: EditContext,
        written: Sequence[int],
        cov_seconds: float = 0.0,
    ):
        self.cfg, self.adapter, self.strategy, self.method, self.covariances, self.ctx = (
            cfg,
            adapter,
            strategy,
            method,
            covariances,
            ctx,
        )
        self.critical = list(cfg.model.layers)
        self.written = list(written)
        self.groups = ctx.groups
        self.cov_seconds = cov_seconds
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
        self.log.append(BatchLog(writes, change_fingerprint(self.adapter, self.originals)))

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
        cuda = adapter.device.type == "cuda"
        if cuda:  # the efficiency protocol's peak memory per edit: this batch's edit alone
            torch.cuda.reset_peak_memory_stats(adapter.device)
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
        if cuda:
            torch.cuda.synchronize(adapter.device)
        edit_seconds = time.perf_counter() - t_edit
        peak = {"edit_peak_memory_bytes": int(torch.cuda.max_memory_allocated(adapter.device))} if cuda else {}
        self._record([(w.layer, w.residual) for w in trace.writes])
        diag = batch_diagnostics(adapter, method, requests, trace, before)
        return {
            "batch": index,
            "edits": len(requests),
            "case_ids": [r.case_id for r in requests],
            "seconds": time.perf_counter() - start,
            "edit_seconds": edit_seconds,
            **peak,
            **diag,
            **self.monitor(trace),
        }

    def evaluated_weights(self) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
        """The written matrices as the method leaves them (PRUNE's restraint), and its diagnostics."""
        current = {l: self.adapter.rewrite_weight(l).detach() for l in self.originals}
        return self.method.evaluated_weights(current, self.originals)

    @contextmanager
    def evaluated_view(self) -> Iterator[None]:
        """The method's evaluated weights in place for an evaluation point (PRUNE); a no-op,
        no copy, for methods whose evaluated weights are the weights as edited."""
        if not self.method.evaluated_weights_differ:
            yield
            return
        with swapped_weights(self.adapter, self.evaluated_weights()[0]):
            yield

    def apply_evaluated_weights(self) -> dict[str, float]:
        """Put the method's evaluated weights in place (after the last batch); returns its diagnostics."""
        final, info = self.evaluated_weights()
        for layer, weight in final.items():
            self.adapter.set_rewrite(layer, weight)
        return info


def open_statistics(cfg: DictConfig, adapter: ModelAdapter, remake_args: Sequence[str] = ()) -> CovarianceStore:
    """The covariance statistics of ``cfg.stats`` for ``adapter`` (``blue stats`` fills it)."""
    return CovarianceStore(adapter, stats_settings(cfg), remake_args=remake_args)


def ensure_statistics(
    covariances: CovarianceStore, layers: Sequence[int], progress=None, compute: bool = True
) -> float:
    """Compute the missing statistics of ``layers``; returns the seconds it took.

    ``compute=False`` refuses (replaying a finished run for export or analysis must use
    the run's own statistics, not hours of new ones).
    """
    t0 = time.perf_counter()
    missing = covariances.missing(layers)
    if missing and not compute:
        raise DataError(
            f"no cached statistics for layers {missing} of '{covariances.adapter.name}' under '{covariances.root}' "
            "(replaying a run needs the run's statistics: run blue stats with the run's config there)"
        )
    if missing:
        if progress is None:
            covariances.ensure(layers)
        else:
            with progress.track("covariance statistics", 1) as update:
                covariances.ensure(layers, progress=update)
    return time.perf_counter() - t0


def build_session(
    cfg: DictConfig,
    adapter: ModelAdapter,
    *,
    progress=None,
    compute_stats: bool = True,
    layers: Sequence[int] | None = None,
    covariances: CovarianceStore | None = None,
    previous: EditSession | None = None,
    timer: PhaseTimer | None = None,
    pool: Sequence[EditRequest] | None = None,
) -> EditSession:
    """The one way to build an edit stream from a composed config and a loaded model.

    ``layers``: the layers the method writes (default: the strategy's written layers;
    ``blue analyze`` asks for every critical layer). ``covariances``: a statistics source other
    than the config's cache (a benchmark's measured C). ``previous``: continue from that
    session's state (its statistics, context templates and the keys of its batches, C_prev),
    as an analysis of a replayed run does. ``timer``: a phase timer the strategy reports
    its phases to (keys, targets, solves, writes); benchmarks pass one. ``pool``: the stream's
    requests, from which Norm-Anchor Scaling samples its reference (``method.norm_anchor``;
    default: the first batch's requests).
    """
    strategy = strategy_class(cfg.strategy.name)(cfg.strategy)
    written = list(layers) if layers is not None else strategy.written_layers(list(cfg.model.layers))
    if covariances is None:
        covariances = previous.covariances if previous is not None else open_statistics(cfg, adapter)
    cov_seconds = ensure_statistics(covariances, written, progress, compute_stats)
    adapter.keep_rewrite_float32(written)
    method = method_class(cfg.method.name)(cfg.method, written, num_edits=cfg.num_edits)
    method.prepare(covariances, adapter.device)
    if previous is not None:
        method.adopt_state(previous.method)  # the run's C_prev (or recorded keys), by replay
        groups = [list(g) for g in previous.groups]
    else:
        seed_everything(cfg.seed)
        c = cfg.context
        groups = context_templates(adapter, n_prefixes=c.n_prefixes, n_tokens=c.n_tokens, top_k=c.top_k, seed=cfg.seed)
    t = cfg.method.target
    anchor = cfg.method.get("norm_anchor")
    ctx = EditContext(
        adapter,
        groups,
        target_settings(t),
        batched=t.batched,
        chunk=t.chunk,
        memory_budget_gb=t.memory_budget_gb,
        timer=timer or no_timer,
        norm_anchor=NormAnchor(anchor, cfg.seed, pool) if anchor is not None and anchor.enabled else None,
    )
    return EditSession(cfg, adapter, strategy, method, covariances, ctx, written, cov_seconds)
