"""What each strategy asks each layer to write, checked against values computed here.

A recording method wraps a real one and, at every solve, measures the model as it is
at that moment, so a strategy that splits wrongly, reuses a stale target or forgets
to recompute the residual fails these tests.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import blue_cli.editing.targets as targets_module
from blue_cli.config.registry import method_class, strategy_class
from blue_cli.config.schema import StatsConfig, TargetConfig
from blue_cli.editing.context import context_templates
from blue_cli.editing.keys import collect_keys, values_at_subject
from blue_cli.editing.statistics.store import CovarianceStore
from blue_cli.editing.strategies.base import EditContext

CRITICAL = [1, 2, 3]
SETTINGS = TargetConfig(lr=0.5, steps=5, clamp=4.0)


def _cfg(name: str, sequential: bool) -> OmegaConf:
    return OmegaConf.create({"name": name, "cov_weight": 100.0, "keep_previous_keys": sequential, "target": {}})


def _setup(fresh_tiny, name="memit", sequential=False, layers=CRITICAL, solver=None):
    adapter = fresh_tiny("tiny-gpt2")
    stats = CovarianceStore(adapter, StatsConfig(samples=40, max_length=64))
    cfg = _cfg(name, sequential)
    if solver is not None:
        cfg.solver = solver
    method = method_class(name)(cfg, layers)
    method.prepare(stats, adapter.device)
    ctx = EditContext(adapter, context_templates(adapter, n_prefixes=1, seed=0), SETTINGS)
    return adapter, method, ctx


class Recorder:
    """Wraps ``method.solve``: records (layer, R, H at the target layer now, weights now)."""

    def __init__(self, method, adapter, requests, h_layer=None, zero=False):
        self.calls = []
        self.real = method.solve
        self.adapter, self.requests, self.h_layer, self.zero = adapter, requests, h_layer, zero
        method.solve = self.solve

    def solve(self, layer, K, R):
        h = values_at_subject(self.adapter, self.requests, self.h_layer if self.h_layer is not None else layer)
        self.calls.append({"layer": layer, "R": R.clone(), "H": h, "K": K.clone()})
        delta = self.real(layer, K, R)
        return torch.zeros_like(delta) if self.zero else delta


def test_spread_asks_layer_i_for_the_residual_left_over_the_layers_left(fresh_tiny, requests10):
    adapter, method, ctx = _setup(fresh_tiny)
    reqs = requests10[:3]
    rec = Recorder(method, adapter, reqs, h_layer=CRITICAL[-1])
    trace = strategy_class("spread")().edit_batch(method, ctx, reqs, CRITICAL)
    Z = trace.final.z("block").T
    assert [c["layer"] for c in rec.calls] == CRITICAL
    assert len(trace.targets) == 1 and trace.final.layer == CRITICAL[-1]
    for i, call in enumerate(rec.calls):
        expected = (Z - call["H"]) / (len(CRITICAL) - i)  # H measured on the model as it is now
        assert torch.allclose(call["R"], expected, atol=1e-5), i
    # the first layer's write moved the last layer's state: later residuals are recomputed
    assert not torch.allclose(rec.calls[0]["H"], rec.calls[-1]["H"], atol=1e-4)


def test_spread_shares_by_the_methods_rule(fresh_tiny, requests10):
    """With writes that change nothing, layer i gets R0 / (L - i) (MEMIT) or R0 / sqrt(L - i) (PMET)."""
    for name, share in (("memit", lambda left: left), ("pmet", lambda left: left**0.5)):
        adapter, method, ctx = _setup(fresh_tiny, name=name)
        reqs = requests10[:2]
        rec = Recorder(method, adapter, reqs, zero=True)
        trace = strategy_class("spread")().edit_batch(method, ctx, reqs, CRITICAL)
        R0 = trace.final.z(method.write_point).T - values_at_subject(adapter, reqs, CRITICAL[-1], method.write_point)
        for i, call in enumerate(rec.calls):
            assert torch.allclose(call["R"], R0 / share(len(CRITICAL) - i), atol=1e-5), (name, i)


def test_blue_optimises_each_boundary_target_on_the_model_as_it_is_then(fresh_tiny, requests10, monkeypatch):
    adapter, method, ctx = _setup(fresh_tiny, layers=[1, 3])
    reqs = requests10[:3]
    first, last = CRITICAL[0], CRITICAL[-1]
    W_first0 = adapter.rewrite_weight(first).detach().clone()
    seen = []
    real = targets_module.optimise_targets

    def spy(adapter_, requests, templates, layer, settings, points):
        seen.append((layer, adapter.rewrite_weight(first).detach().clone()))
        return real(adapter_, requests, templates, layer, settings, points)

    monkeypatch.setattr(targets_module, "optimise_targets", spy)  # read when the strategy calls it
    rec = Recorder(method, adapter, reqs)
    trace = strategy_class("blue")().edit_batch(method, ctx, reqs, CRITICAL)
    assert [layer for layer, _ in seen] == [first, last]
    assert torch.equal(seen[0][1], W_first0)  # the first target: on the unedited model
    assert not torch.equal(seen[1][1], W_first0)  # the second: after the first layer's write
    assert [c["layer"] for c in rec.calls] == [first, last]
    for target, call in zip(trace.targets, rec.calls):
        # the full residual at that layer, not a share; z - h there is exactly the optimised delta
        assert target.layer == call["layer"]
        assert torch.allclose(call["R"], target.delta["block"].T, atol=1e-5)
        assert torch.allclose(call["R"], target.z("block").T - call["H"], atol=1e-5)


def _c_prev(method, layer):
    """C_prev as the method holds it: a matrix (direct solver) or the updated solver's recorded
    keys V_h (U_h = V_h = K for MEMIT; 6 keys, fewer than d_k / 8: none refactorised yet)."""
    if method.solver == "direct":
        return method.previous_keys(layer)
    system = method.systems[layer]
    assert method.refactorisations[layer] == 0 and system.U is None
    return system.V @ system.V.T


@pytest.mark.parametrize("solver", ["direct", "updated"])
def test_c_prev_is_the_sum_of_earlier_batches_keys_on_the_edited_model(fresh_tiny, requests10, solver):
    adapter, method, ctx = _setup(fresh_tiny, name="memit_seq", sequential=True, layers=[1, 3], solver=solver)
    assert method.solver == solver
    strategy = strategy_class("blue")()
    expected = {l: torch.zeros(adapter.key_size(l), adapter.key_size(l), dtype=torch.float64) for l in (1, 3)}
    rec = Recorder(method, adapter, requests10[:2])
    for b, batch in enumerate((requests10[:2], requests10[2:4], requests10[4:6])):
        if b == 2:
            # the third batch's solves see exactly the first two batches' keys
            for layer in (1, 3):
                assert torch.allclose(_c_prev(method, layer), expected[layer], rtol=1e-6, atol=1e-6)
        rec.requests = batch
        strategy.edit_batch(method, ctx, batch, CRITICAL)
        for layer, K in collect_keys(adapter, batch, ctx.groups, [1, 3]).items():
            K64 = K.double()
            expected[layer] += K64 @ K64.T
    for layer in (1, 3):
        assert torch.allclose(_c_prev(method, layer), expected[layer], rtol=1e-6, atol=1e-6)
        assert float(expected[layer].norm()) > 0


def test_plain_memit_keeps_no_key_cache(fresh_tiny, requests10):
    adapter, method, ctx = _setup(fresh_tiny, name="memit", sequential=False, layers=[1, 3])
    strategy_class("blue")().edit_batch(method, ctx, requests10[:2], CRITICAL)
    assert method.previous_keys(1) is None and method.C_prev == {}


@pytest.mark.parametrize("strategy", ["spread", "blue"])
def test_rect_sparsifies_each_layers_batch_update_after_the_dense_writes(fresh_tiny, requests10, strategy):
    """RECT as the reference: every layer solved and written densely, then each layer's
    batch update keeps its top entries by |Delta / (W before the batch + 1e-8)|, as many as the
    reference's k-th-value threshold keeps."""
    written = strategy_class(strategy)().written_layers(CRITICAL)

    def run(fraction):
        adapter, method, ctx = _setup(fresh_tiny, name="rect", layers=written)
        method.cfg = OmegaConf.merge(method.cfg, {"keep_fraction": fraction})
        before = {l: adapter.rewrite_weight(l).detach().clone() for l in written}
        strategy_class(strategy)().edit_batch(method, ctx, requests10[:3], CRITICAL)
        return before, {l: adapter.rewrite_weight(l).detach() - before[l] for l in written}

    before, dense = run(1.0)
    _, sparse = run(0.25)
    for layer in written:
        # the reference's rule: the k-th smallest |Delta / (W + 1e-8)|, k = int(numel * 75 / 100), and all above
        score = (dense[layer] / (before[layer] + 1e-8)).abs().flatten()
        k = int(score.numel() * 75 / 100)
        keep = score >= torch.sort(score).values[k - 1]
        expected = dense[layer] * keep.view_as(dense[layer])
        assert torch.allclose(sparse[layer], expected, atol=1e-6), layer
        assert abs(float((sparse[layer] != 0).double().mean()) - 0.25) < 1e-3
