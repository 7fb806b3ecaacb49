"""RECT (Gu et al. 2024): MEMIT's update, sparsified to the largest relative changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from blue_cli.config.registry import register_method
from blue_cli.editing.methods.memit import Memit, MemitConfig

if TYPE_CHECKING:
    import torch


@dataclass
class RectConfig(MemitConfig):
    """``keep_fraction``: share of entries of each layer's batch update kept, by |Delta / W|
    (as the reference's rule counts it: see :func:`~blue_cli.editing.linalg.keep_top_relative_change`)."""

    name: str = "rect"
    keep_fraction: float = 0.4


@register_method("rect", config=RectConfig)
class Rect(Memit):
    """Keep only the top ``keep_fraction`` entries of |Delta / (W + 1e-8)| per edited matrix
    (default 40%), so the edit disturbs the weights less and general abilities survive
    sequential editing. The count kept is the reference's: every entry at or above the
    k-th smallest score, k = int(numel * 0.6), i.e. numel - floor(0.6 numel) + 1 entries
    plus ties, one or two more than 40%.

    As the reference, every layer of the batch is first solved and written densely
    (later layers see the dense earlier writes); then each layer's whole batch update
    is sparsified against the matrix as the batch found it.
    """

    def revise_batch(
        self, changes: dict[int, torch.Tensor], before: dict[int, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        from blue_cli.editing.linalg import keep_top_relative_change

        fraction = float(self.cfg.keep_fraction)
        return {
            l: keep_top_relative_change(change, before[l].to(change.dtype), fraction) for l, change in changes.items()
        }
