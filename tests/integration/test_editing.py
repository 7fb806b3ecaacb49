"""Targets, keys and strategies on tiny models."""

from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from blue_cli.config.registry import method_class, strategy_class
from blue_cli.config.schema import StatsConfig, TargetConfig
from blue_cli.editing.context import context_templates
from blue_cli.editing.keys import collect_keys
from blue_cli.editing.session import target_settings
from blue_cli.editing.statistics.store import CovarianceStore, collect_second_moments
from blue_cli.editing.strategies.base import EditContext, Strategy
from blue_cli.editing.targets import optimise_targets


def flat_templates(groups):
    return [t for g in groups for t in g]


FAST = TargetConfig(lr=0.5, steps=6, clamp=4.0)


def test_batched_targets_match_one_at_a_time(load_tiny, requests10):
    adapter = load_tiny("tiny-gpt2")
    templates = flat_templates(context_templates(adapter, n_prefixes=2, seed=0))
    reqs = requests10[:4]
    together = optimise_targets(adapter, reqs, templates, 3, FAST)
    for i, req in enumerate(reqs):
        alone = optimise_targets(adapter, [req], templates, 3, FAST)
        assert torch.allclose(together.delta["block"][i], alone.delta["block"][0], atol=1e-4), i
        assert together.steps[i] == alone.steps[0]


def test_targets_lower_the_target_nll_and_respect_the_clamp(load_tiny, requests10):
    adapter = load_tiny("tiny-llama")
    templates = flat_templates(context_templates(adapter, n_prefixes=2, seed=0))
    settings = TargetConfig(lr=0.5, steps=10, clamp=0.5)
    res = optimise_targets(adapter, requests10[:5], templates, 3, settings)
    assert sum(res.loss_final) < sum(res.loss_init)
    ratio = res.delta["block"].norm(dim=1) / res.h_init["block"].norm(dim=1)
    assert (ratio <= 0.5 + 1e-5).all()


def test_keys_average_groups_then_templates(load_tiny, requests10):
    adapter = load_tiny("tiny-gpt2")
    groups = [["{}"], ["A cat sat. {}", "It rained. {}"]]
    req = requests10[0]
    K = collect_keys(adapter, [req], groups, [2])[2][:, 0]
    singles = [collect_keys(adapter, [req], [[t]], [2])[2][:, 0] for t in ("{}", "A cat sat. {}", "It rained. {}")]
    expected = 0.5 * singles[0] + 0.5 * (singles[1] + singles[2]) / 2
    assert torch.allclose(K, expected, atol=1e-5)


def test_one_pass_covariance_equals_per_layer(load_tiny):
    adapter = load_tiny("tiny-qwen2")
    docs = ["The quick brown fox jumps over the lazy dog. " * 5, "A second document about rivers and towns."]
    s = StatsConfig(samples=10, max_length=32)
    both, n = collect_second_moments(adapter, docs, [1, 3], s)
    only3, n3 = collect_second_moments(adapter, docs, [3], s)
    assert n == n3
    assert torch.allclose(both[3], only3[3], atol=1e-10)
    assert torch.allclose(both[1], both[1].T)


def _method_cfg(name="memit", **extra):
    base = {
        "name": name,
        "cov_weight": 100.0,
        "keep_previous_keys": True,
        "target": {
            "lr": 0.5,
            "steps": 4,
            "clamp": 4.0,
            "kl_factor": 0.0625,
            "weight_decay": 0.5,
            "early_stop_loss": 0.05,
            "batched": True,
            "reuse_prefix": True,
        },
    }
    base.update(extra)
    return OmegaConf.create(base)


METHOD_EXTRA = {
    "memit": {},
    "alphaedit": {"l2": 10.0, "nullspace_threshold": 0.02},
    "pmet": {},
    "rect": {"keep_fraction": 0.4},
    "prune": {"log_base": 1.2},
}


@pytest.mark.parametrize("method_name", sorted(METHOD_EXTRA))
@pytest.mark.parametrize("strategy,expected", [("blue", [1, 4]), ("spread", [1, 2, 3, 4])])
def test_strategy_changes_exactly_its_layers(fresh_tiny, requests10, strategy, expected, method_name):
    """Only the FFN output matrices of the written layers change, for every method."""
    adapter = fresh_tiny("tiny-gpt2")
    critical = [1, 2, 3, 4]
    before = {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}
    strat = strategy_class(strategy)()
    written = strat.written_layers(critical)
    stats = CovarianceStore(adapter, StatsConfig(samples=20, max_length=64))
    cfg = _method_cfg(name=method_name, **METHOD_EXTRA[method_name])
    method = method_class(method_name)(cfg, written)
    method.prepare(stats, adapter.device)
    originals = {l: adapter.rewrite_weight(l).detach().clone() for l in written}
    ctx = EditContext(adapter, context_templates(adapter, n_prefixes=2, seed=0), target_settings(cfg.target))
    strat.edit_batch(method, ctx, requests10[:3], critical)
    current = {l: adapter.rewrite_weight(l).detach() for l in written}
    for layer, weight in method.evaluated_weights(current, originals)[0].items():
        adapter.set_rewrite(layer, weight)
    changed = {k for k, v in adapter.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {adapter.rewrite_param_name(l) for l in expected}


def _one_batch(adapter, method_name, requests, layer=2, **extra):
    stats = CovarianceStore(adapter, StatsConfig(samples=200, max_length=64))
    cfg = _method_cfg(name=method_name, **extra)
    method = method_class(method_name)(cfg, [layer])
    method.prepare(stats, adapter.device)
    groups = context_templates(adapter, n_prefixes=2, seed=0)
    K = collect_keys(adapter, requests, groups, [layer])[layer]
    target = Strategy.compute_targets(
        method, EditContext(adapter, groups, target_settings(cfg.target)), requests, layer
    )
    from blue_cli.editing.keys import values_at_subject

    R = target.z(method.write_point).T - values_at_subject(adapter, requests, layer, method.write_point)
    return method, stats, K, R


def test_alphaedit_leaves_preserved_key_directions_alone(fresh_tiny, requests10):
    adapter = fresh_tiny("tiny-llama")
    method, stats, K, R = _one_batch(adapter, "alphaedit", requests10[:5], l2=10.0, nullspace_threshold=0.02)
    delta = method.solve(2, K, R)
    P = method.P[2]
    assert torch.allclose(P, P.T, atol=1e-6)
    assert (P @ P - P).abs().max() < 1e-6
    evals, evecs = torch.linalg.eigh(stats.get(2).double())
    preserved = evecs[:, evals >= 0.02]  # the covariance's top eigenvectors
    assert preserved.shape[1] > 0
    W = adapter.rewrite_weight(2).detach().double()
    change = (delta @ preserved).norm(dim=0) / (W @ preserved).norm(dim=0)
    assert change.max() < 1e-3
    assert delta.norm() > 0


def test_rect_keeps_the_stated_fraction_of_the_batch_update(fresh_tiny, requests10):
    adapter = fresh_tiny("tiny-gpt2")
    method, _, K, R = _one_batch(adapter, "rect", requests10[:4], keep_fraction=0.4)
    delta = method.solve(2, K, R)
    assert float((delta != 0).double().mean()) > 0.99  # the solve itself is dense, as the reference's
    W = adapter.rewrite_weight(2).detach().clone()
    kept = method.revise_batch({2: delta.float()}, {2: W})[2]
    assert abs(float((kept != 0).double().mean()) - 0.4) < 1e-3


def test_prune_bounds_the_accumulated_change(fresh_tiny, requests10):
    import math

    adapter = fresh_tiny("tiny-gpt2")
    method, _, K, R = _one_batch(adapter, "prune", requests10[:4], log_base=1.2)
    W0 = adapter.rewrite_weight(2).detach().clone()
    adapter.add_to_rewrite(2, method.solve(2, K, R) * 50)  # a change far past sigma_max(W0)
    weights, info = method.evaluated_weights({2: adapter.rewrite_weight(2).detach()}, {2: W0})
    adapter.set_rewrite(2, weights[2])
    bound, before, after = info["prune_bound.2"], info["prune_max_sv_before.2"], info["prune_max_sv_after.2"]
    assert before > bound
    assert after <= bound + math.log(before / bound) / math.log(1.2) + 1e-6
    change = adapter.rewrite_weight(2).detach().double() - W0.double()
    assert float(torch.linalg.svdvals(change).max()) == pytest.approx(after, rel=1e-4)


def test_one_at_a_time_schedule_gives_the_batched_targets(load_tiny, requests10):
    adapter = load_tiny("tiny-gpt2")
    templates = flat_templates(context_templates(adapter, n_prefixes=1, seed=0))
    cfg = _method_cfg()
    method = method_class("memit")(cfg, [3])
    groups = [templates]
    a = Strategy.compute_targets(
        method, EditContext(adapter, groups, target_settings(cfg.target), batched=True), requests10[:3], 3
    )
    b = Strategy.compute_targets(
        method, EditContext(adapter, groups, target_settings(cfg.target), batched=False), requests10[:3], 3
    )
    assert torch.allclose(a.delta["block"], b.delta["block"], atol=1e-4)


@pytest.mark.parametrize(
    "name,points", [("tiny-gpt2", ("block",)), ("tiny-llama", ("attn", "mlp")), ("tiny-gptj", ("block",))]
)
def test_replaying_frozen_blocks_gives_the_same_targets(load_tiny, requests10, name, points):
    adapter = load_tiny(name)
    templates = flat_templates(context_templates(adapter, n_prefixes=1, seed=0))
    fast = optimise_targets(adapter, requests10[:3], templates, 2, FAST, points)
    slow = optimise_targets(adapter, requests10[:3], templates, 2, replace(FAST, reuse_prefix=False), points)
    for p in points:
        assert torch.allclose(fast.delta[p], slow.delta[p], atol=1e-5), p
    assert fast.loss_final == pytest.approx(slow.loss_final, abs=1e-5)
    assert all(type(b).__name__ not in ("_Skip", "_Replay") for b in adapter.model.get_submodule(adapter.family.blocks))
