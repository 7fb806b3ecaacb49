"""What every locate-then-edit method provides to a strategy.

A method turns a residual at a layer into a weight update and keeps its own
state across batches (covariance, C_prev, projectors). It never knows which
strategy drives it; the strategy reads ``points`` and ``residual_split`` from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blue_cli.data.records import EditRequest
from blue_cli.editing.covariance import CovarianceStore
from blue_cli.editing.targets import TargetResult, TargetSettings, optimise_targets
from blue_cli.models.adapter import ModelAdapter


class EditMethod:
    """Base: MEMIT-style targets on the residual stream, subclass decides the solve.

    points: where target vectors are added; ``write_point`` is the one whose residual
    is written (the rewrite matrix's output adds into it).
    residual_split: how ``spread`` shares a residual over layers ("linear" or "sqrt").
    """

    name = "base"
    points: tuple[str, ...] = ("block",)
    write_point = "block"
    residual_split = "linear"
    uses_covariance = True

    def __init__(self, cfg, adapter: ModelAdapter, stats: CovarianceStore, layers: Sequence[int]):
        self.cfg = cfg
        self.adapter = adapter
        self.stats = stats
        self.layers = list(layers)
        self.settings = TargetSettings(
            lr=cfg.target.lr,
            steps=cfg.target.steps,
            clamp=cfg.target.clamp,
            kl_factor=cfg.target.kl_factor,
            weight_decay=cfg.target.weight_decay,
            early_stop_loss=cfg.target.early_stop_loss,
            reuse_prefix=bool(cfg.target.get("reuse_prefix", True)),
        )
        self.sequential = bool(cfg.get("sequential", True))
        self.batched = bool(cfg.target.get("batched", True))
        self.C_prev = {
            l: torch.zeros(adapter.key_size(l), adapter.key_size(l), dtype=torch.float64, device=adapter.device)
            for l in self.layers
        }

    def prepare(self) -> None:
        """One-off work before the first batch (e.g. projectors); statistics are ready."""

    def compute_targets(
        self, requests: Sequence[EditRequest], templates: Sequence[str], layer: int
    ) -> TargetResult:
        """Target vectors for every request at ``layer``: all at once, or one at a time
        when ``target.batched`` is false (the reference's schedule, kept to measure speed-ups)."""
        if self.batched:
            return optimise_targets(self.adapter, requests, templates, layer, self.settings, self.points)
        singles = [optimise_targets(self.adapter, [r], templates, layer, self.settings, self.points) for r in requests]
        return TargetResult(
            layer=layer,
            points=self.points,
            h_init={p: torch.cat([s.h_init[p] for s in singles]) for p in self.points},
            delta={p: torch.cat([s.delta[p] for s in singles]) for p in self.points},
            steps=[x for s in singles for x in s.steps],
            loss_init=[x for s in singles for x in s.loss_init],
            loss_final=[x for s in singles for x in s.loss_final],
        )

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """The update (d x d_k) that maps keys K (d_k x n) to residuals R (d x n) at ``layer``."""
        raise NotImplementedError

    def record_keys(self, layer: int, K: torch.Tensor) -> None:
        """Sequential editing: remember this batch's keys so later batches preserve them."""
        if self.sequential:
            K64 = K.to(torch.float64)
            self.C_prev[layer] += K64 @ K64.T

    def finish(self, originals: dict[int, torch.Tensor]) -> dict[str, float]:
        """After the last batch; may rewrite the accumulated change. Returns diagnostics."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"C_prev.{l}": c.cpu() for l, c in self.C_prev.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for l in self.layers:
            self.C_prev[l] = state[f"C_prev.{l}"].to(self.adapter.device)
