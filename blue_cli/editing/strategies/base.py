"""What a strategy decides: which critical layers are written, where targets are
taken, and how the residual is shared. It drives any method through the method's
interface and never branches on which method it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from blue_cli.data.records import EditRequest
from blue_cli.editing.keys import collect_keys, values_at_subject
from blue_cli.editing.methods.base import EditMethod
from blue_cli.editing.targets import TargetResult


@dataclass
class LayerWrite:
    """One closed-form write: layer, norms of residual and update, relative fit on its keys."""

    layer: int
    residual_norm: float
    update_norm: float
    key_fit_error: float


@dataclass
class BatchTrace:
    """What a strategy did to one batch; ``final`` is the target at the last critical layer."""

    targets: list[TargetResult] = field(default_factory=list)
    writes: list[LayerWrite] = field(default_factory=list)

    @property
    def final(self) -> TargetResult:
        return self.targets[-1]


class Strategy:
    """Base class; subclasses implement :meth:`written_layers` and :meth:`edit_batch`."""

    name = "base"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def written_layers(self, critical: Sequence[int]) -> list[int]:
        raise NotImplementedError

    def edit_batch(
        self,
        method: EditMethod,
        requests: Sequence[EditRequest],
        groups: Sequence[Sequence[str]],
        critical: Sequence[int],
    ) -> BatchTrace:
        raise NotImplementedError

    @staticmethod
    def write_layer(
        method: EditMethod,
        requests: Sequence[EditRequest],
        groups: Sequence[Sequence[str]],
        layer: int,
        residual: torch.Tensor,
    ) -> LayerWrite:
        """Solve for the update that maps this layer's current keys to ``residual`` and apply it."""
        K = collect_keys(method.adapter, requests, groups, [layer])[layer]
        delta = method.solve(layer, K, residual)
        method.adapter.add_to_rewrite(layer, delta)
        fit = delta @ K.to(delta.dtype) - residual.to(delta.dtype)
        return LayerWrite(
            layer=layer,
            residual_norm=float(residual.norm()),
            update_norm=float(delta.norm()),
            key_fit_error=float(fit.norm() / residual.norm().clamp_min(1e-12)),
        )

    @staticmethod
    def current_values(method: EditMethod, requests: Sequence[EditRequest], layer: int) -> torch.Tensor:
        """H: the write point's value at ``layer`` on the current weights (d x n)."""
        return values_at_subject(method.adapter, requests, layer, method.write_point)

    @staticmethod
    def remember_keys(
        method: EditMethod, requests: Sequence[EditRequest], groups: Sequence[Sequence[str]], layers: Sequence[int]
    ) -> None:
        """After the batch: keys on the edited model, one pass for all written layers, into C_prev."""
        for layer, K in collect_keys(method.adapter, requests, groups, layers).items():
            method.record_keys(layer, K)


def flat_templates(groups: Sequence[Sequence[str]]) -> list[str]:
    return [t for group in groups for t in group]
