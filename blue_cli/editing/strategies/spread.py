"""The baseline: one target at the last critical layer, its residual spread over all."""

from __future__ import annotations

from blue_cli.config.registry import register_strategy
from blue_cli.editing.strategies.base import BatchTrace, Strategy


@register_strategy("spread")
class SpreadStrategy(Strategy):
    """MEMIT's schedule: z at the last critical layer, computed once per batch; layer i
    of L (in order, keys recomputed on the current weights) takes its share of the
    residual still left at the last layer (R / (L - i), or the method's own rule)."""

    def written_layers(self, critical):
        return list(critical)

    def target_layers(self, critical):
        return [critical[-1]]

    def write_batch(self, method, ctx, requests, critical):
        from blue_cli.editing.linalg import split_residual

        trace = BatchTrace()
        z_layer = critical[-1]
        target = self.compute_targets(method, ctx, requests, z_layer)
        trace.targets.append(target)
        Z = target.z(method.write_point).T
        for i, layer in enumerate(critical):
            H = self.current_values(method, ctx, requests, z_layer)
            R = split_residual(Z - H, len(critical) - i, method.residual_split)
            trace.writes.append(self.write_layer(method, ctx, requests, layer, R))
        return trace
