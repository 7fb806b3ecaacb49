"""RECT (Gu et al. 2024): MEMIT's update, sparsified to the largest relative changes."""

from __future__ import annotations

import torch

from blue_cli.editing.linalg import keep_top_relative_change
from blue_cli.editing.methods.memit import Memit
from blue_cli.registry import register_method


@register_method("rect")
class Rect(Memit):
    """Keep only the top ``keep_fraction`` entries of |Delta| / |W| per edited matrix
    (default 40%), so the edit disturbs the weights less and general abilities survive
    sequential editing."""

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        delta = super().solve(layer, K, R)
        weight = self.adapter.rewrite_weight(layer).detach().to(delta.dtype)
        return keep_top_relative_change(delta, weight, float(self.cfg.keep_fraction))
