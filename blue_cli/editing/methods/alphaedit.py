"""AlphaEdit (Fang et al. 2025): project the update onto the null space of preserved keys."""

from __future__ import annotations

import torch

from blue_cli.editing.linalg import alphaedit_update, nullspace_projector
from blue_cli.editing.methods.base import EditMethod
from blue_cli.registry import register_method


@register_method("alphaedit")
class AlphaEdit(EditMethod):
    """Delta^T = solve(P (K K^T + C_prev) + l2 I, P K R^T), P = U0 U0^T over the
    eigenvectors of C with eigenvalue < ``nullspace_threshold``.

    There is no lambda*C term: P already removes the directions of the preserved
    keys. P is computed once per model and layer, cached beside the statistics,
    and kept on the compute device.
    """

    def prepare(self) -> None:
        threshold = float(self.cfg.nullspace_threshold)
        self.P = {
            l: self.stats.cached_tensor(l, f"nullspace_{threshold:g}", lambda C: nullspace_projector(C, threshold).float())
            .to(self.adapter.device, torch.float64)
            for l in self.layers
        }

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        C_prev = self.C_prev[layer] if self.sequential else None
        return alphaedit_update(K, R, self.P[layer], self.cfg.l2, C_prev)
