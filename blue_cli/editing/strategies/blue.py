"""BLUE (Li et al. 2025, arXiv 2502.03748): write only the boundary critical layers."""

from __future__ import annotations

from blue_cli.config.registry import register_strategy
from blue_cli.editing.strategies.base import BatchTrace, Strategy


@register_strategy("blue")
class BlueStrategy(Strategy):
    """Edit only the first and last critical layers, each with the full residual
    measured there: the BLUE paper argues that splitting it adds error. The last
    layer's target is optimised after the first layer's update, on the current model."""

    def written_layers(self, critical):
        return sorted({critical[0], critical[-1]})

    def write_batch(self, method, ctx, requests, critical):
        trace = BatchTrace()
        for layer in self.written_layers(critical):
            target = self.compute_targets(method, ctx, requests, layer)
            trace.targets.append(target)
            Z = target.z(method.write_point).T
            H = self.current_values(method, ctx, requests, layer)
            trace.writes.append(self.write_layer(method, ctx, requests, layer, Z - H))
        return trace
