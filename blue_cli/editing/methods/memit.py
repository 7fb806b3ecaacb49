"""MEMIT: Delta = R K^T (lambda C + C_prev + K K^T)^{-1} per layer (Meng et al. 2023)."""

from __future__ import annotations

import torch

from blue_cli.editing.linalg import memit_update
from blue_cli.editing.methods.base import EditMethod
from blue_cli.registry import register_method


@register_method("memit")
class Memit(EditMethod):
    """Least-squares write of the residual onto the keys, regularised by the key covariance.

    ``cov_weight`` is the reference's ``mom2_update_weight`` (lambda); ``sequential``
    adds C_prev (the keys of earlier batches), as MEMIT_seq and BLUE do.
    """

    def __init__(self, cfg, adapter, stats, layers):
        super().__init__(cfg, adapter, stats, layers)
        self._C: dict[int, torch.Tensor] = {}

    def covariance(self, layer: int) -> torch.Tensor:
        """C on the compute device, float64, kept resident across batches."""
        if layer not in self._C:
            self._C[layer] = self.stats.get(layer).to(self.adapter.device, torch.float64)
        return self._C[layer]

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        C_prev = self.C_prev[layer] if self.sequential else None
        return memit_update(K, R, self.covariance(layer), self.cfg.cov_weight, C_prev)
