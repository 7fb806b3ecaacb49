"""PMET (Li et al. 2024): attention and FFN target vectors optimised jointly, FFN written."""

from __future__ import annotations

from dataclasses import dataclass

from blue_cli.config.registry import register_method
from blue_cli.editing.methods.memit import Memit, MemitConfig


@dataclass
class PmetConfig(MemitConfig):
    """``pmet`` has no key cache; ``pmet_seq`` keeps C_prev, as the reference's PMET_seq."""

    name: str = "pmet"


@register_method("pmet", config=PmetConfig, variants=("pmet_seq",))
class Pmet(Memit):
    """Targets: one vector on the attention output and one on the FFN output of the
    target layer, one Adam over both, each clamped and decayed relative to its own
    module's output norm. Only the FFN output matrix is written (as the shipped PMET
    configs do), with MEMIT's closed form; ``spread`` shares the FFN residual by
    1/sqrt(layers left), as the PMET paper does.

    Differs from reference: PMET's adaptive NLL factor (x0.1 once the target is the
    argmax everywhere) and its KL-based stop are not applied; the early stop is the
    shared loss threshold.
    """

    points = ("attn", "mlp")
    write_point = "mlp"
    residual_split = "sqrt"
