"""PRUNE (Ma et al. 2025): restrain the accumulated change's large singular values."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blue_cli.config.registry import register_method
from blue_cli.editing.methods.memit import Memit, MemitConfig
from blue_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class PruneConfig(MemitConfig):
    """``log_base``: base of the log that restrains singular values (e in PRUNE's code; per
    model in ``hparams/model_method/<model>_prune.yaml``). ``evaluated_weights``: the evaluated
    weights, ``restrained`` (W0 + F(Delta), the PRUNE paper) or ``edited_plus_restrained``
    (W0 + Delta + F(Delta), the reference's evaluation script, which the BLUE paper's PRUNE
    rows ran; the paper experiments set it through ``per_method.prune``)."""

    name: str = "prune"
    log_base: float = 2.718281828459045
    evaluated_weights: str = "restrained"

    EVALUATED_WEIGHTS = ("restrained", "edited_plus_restrained")

    @classmethod
    def check(cls, node) -> None:
        """``log_base`` above 1 and finite (the restraint divides by log(log_base), which is 0 at
        1 and negative below); ``evaluated_weights`` one of :attr:`EVALUATED_WEIGHTS`; MEMIT's checks.
        Checked with the overrides, so a bad base stops the run before its first batch."""
        base = node.get("log_base", math.e)
        if not 1 < base < math.inf:
            raise ConfigError(f"method.log_base must be above 1 and finite (e.g. 1.2, or e = 2.718...), got {base}")
        if node.get("evaluated_weights", "restrained") not in cls.EVALUATED_WEIGHTS:
            choices = ", ".join(cls.EVALUATED_WEIGHTS)
            raise ConfigError(f"unknown method.evaluated_weights '{node.evaluated_weights}' (choose: {choices})")
        super().check(node)


@register_method("prune", config=PruneConfig)
class Prune(Memit):
    """MEMIT editing; the accumulated change of each edited matrix has its singular
    values above sigma_max(W0) log-compressed, which bounds how far sequential edits
    can perturb the matrix's condition. The restraint is a view of the edited weights:
    editing goes on from the unrestrained ones, and every evaluation point, the final
    checkpoint and exports see the restrained ones.

    ``evaluated_weights=restrained`` gives W0 + F(Delta), as the PRUNE paper defines it.
    Differs from the PRUNE paper, as the reference (``evaluated_weights=edited_plus_restrained``):
    its evaluation script adds the restrained change to the already edited weights,
    W0 + Delta + F(Delta); the BLUE paper's PRUNE and PRUNE+BLUE rows came from that code.
    """

    evaluated_weights_differ = True

    def evaluated_weights(self, current, originals):
        import torch

        from blue_cli.editing.linalg import compress_singular_values

        keep_edit = self.cfg.get("evaluated_weights", "restrained") == "edited_plus_restrained"
        weights: dict[int, torch.Tensor] = {}
        info: dict[str, float] = {}
        for layer, W0 in originals.items():
            W0_64 = W0.to(torch.float64)
            change = current[layer].to(torch.float64) - W0_64
            bound = float(torch.linalg.svdvals(W0_64).max())
            restrained = compress_singular_values(change, bound, float(self.cfg.log_base))
            weights[layer] = W0_64 + change + restrained if keep_edit else W0_64 + restrained
            info[f"prune_bound.{layer}"] = bound
            info[f"prune_max_sv_before.{layer}"] = float(torch.linalg.svdvals(change).max())
            info[f"prune_max_sv_after.{layer}"] = float(torch.linalg.svdvals(restrained).max())
        return weights, info
