"""PMET (Li et al. 2024): attention and FFN target vectors optimised jointly, FFN written."""

from __future__ import annotations

from dataclasses import dataclass, field

from blue_cli.config.registry import register_method
from blue_cli.config.schema import TargetConfig
from blue_cli.editing.methods.memit import Memit, MemitConfig


@dataclass
class PmetConfig(MemitConfig):
    """``pmet`` has no key cache; ``pmet_seq`` keeps C_prev, as the reference's PMET_seq.
    ``target.adaptive_nll`` (default true): PMET's adaptive NLL factor and KL-based stop."""

    name: str = "pmet"
    target: TargetConfig = field(default_factory=lambda: TargetConfig(adaptive_nll=True))


@register_method("pmet", config=PmetConfig, variants=("pmet_seq",))
class Pmet(Memit):
    """Targets: one vector on the attention output and one on the FFN output of the
    target layer, one Adam over both, each clamped and decayed relative to its own
    module's output norm. Only the FFN output matrix is written (as the shipped PMET
    configs do), with MEMIT's closed form; ``spread`` shares the FFN residual by
    1/sqrt(layers left), as the PMET paper does.

    As the reference's PMET (``method.target.adaptive_nll``, on by default): while the
    target is the argmax at every scored position, the next step weighs the NLL by 0.1,
    and the request stops once KL(p_now || p_init) < 0.01; ``adaptive_nll=false`` keeps
    only the shared loss threshold, as MEMIT's targets.
    """

    points = ("attn", "mlp")
    write_point = "mlp"
    residual_split = "sqrt"
