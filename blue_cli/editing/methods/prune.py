"""PRUNE (Ma et al. 2025): restrain the accumulated change's large singular values."""

from __future__ import annotations

import torch

from blue_cli.editing.linalg import compress_singular_values
from blue_cli.editing.methods.memit import Memit
from blue_cli.registry import register_method


@register_method("prune")
class Prune(Memit):
    """MEMIT sequential editing; after the last batch the accumulated change of each
    edited matrix has its singular values above sigma_max(W0) log-compressed, which
    bounds how far sequential edits can perturb the matrix's condition."""

    def finish(self, originals: dict[int, torch.Tensor]) -> dict[str, float]:
        info: dict[str, float] = {}
        for layer, W0 in originals.items():
            W0_64 = W0.to(torch.float64)
            change = self.adapter.rewrite_weight(layer).detach().to(torch.float64) - W0_64
            bound = float(torch.linalg.svdvals(W0_64).max())
            restrained = compress_singular_values(change, bound, float(self.cfg.log_base))
            self.adapter.set_rewrite(layer, W0_64 + restrained)
            info[f"prune_bound.{layer}"] = bound
            info[f"prune_max_sv_before.{layer}"] = float(torch.linalg.svdvals(change).max())
            info[f"prune_max_sv_after.{layer}"] = float(torch.linalg.svdvals(restrained).max())
        return info
