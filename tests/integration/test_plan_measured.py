"""The plan against what one real batch allocates on a tiny model (CPU, float32), within 25%.

How memory is measured: tracemalloc cannot see torch's allocator and max RSS moves with
the allocator's caching and with other processes; torch.profiler's CPU ``[memory]`` events
did not add up to a timeline on this build (their sum over a call came out negative). So
:class:`LiveStorages` counts, after every torch op run inside it, the bytes of the tensor
storages that op created and that are still alive (weak references), and keeps the
maximum: the peak of what the measured call itself allocates. What was resident before
the call (model weights, method state, the runner's copy of the originals) is measured
separately as tensor nbytes and added.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from blue_cli.config.overrides import compose_config
from blue_cli.datasets.counterfact.records import load_counterfact
from blue_cli.editing.diagnostics import change_fingerprint, observe_before
from blue_cli.editing.keys import collect_keys
from blue_cli.editing.session import BatchLog, build_session
from blue_cli.editing.targets import _build_batch, _split, optimise_targets
from blue_cli.runs.checkpoint import Checkpoint
from blue_cli.tools.memory_plan import make_plan, model_shape, run_facts, target_items

TOLERANCE = 0.25


class LiveStorages(TorchDispatchMode):
    """Peak bytes of live CPU storages created by ops run inside the block."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.live and storage.nbytes():
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def close(planned: float, measured: float) -> bool:
    return abs(planned - measured) <= TOLERANCE * measured


def test_plan_matches_one_measured_batch(fresh_tiny, tmp_path):
    cfg = compose_config(
        [
            "model=tiny-llama",
            "method=alphaedit",
            "method.solver=direct",
            "strategy=spread",
            "batch_size=10",
            "num_edits=10",
            "device=cpu",
            "method.target.steps=2",
            "stats.samples=64",
        ]
    )
    adapter = fresh_tiny("tiny-llama")
    shape, facts = model_shape(cfg.model), run_facts(cfg)
    plan = make_plan(shape, facts)
    items = {i.name: i.bytes for i in plan.items}
    requests = load_counterfact("bundled", limit=10)
    session = build_session(cfg, adapter)
    strategy, method, ctx = session.strategy, session.method, session.ctx
    critical, written, originals, groups = session.critical, session.written, session.originals, session.groups

    # Target optimisation alone, planned with this batch's real padded length and target tokens.
    batch = _build_batch(adapter, requests, ctx.templates)
    seq_len = batch.inputs["input_ids"].shape[1]
    target_mean = len(batch.nll_row) / (len(requests) * len(ctx.templates))
    split = _split(adapter, batch, at_subject=True).inputs
    lengths = dict(seq_len=seq_len, target_mean=target_mean, run_len=split.input_ids.shape[1], past_len=split.cached)
    planned_targets = sum(i.bytes for i in target_items(shape, facts, **lengths))
    with LiveStorages() as tracked:
        optimise_targets(adapter, requests, ctx.templates, facts.target_layers[0], ctx.targets, method.points)
    assert close(planned_targets, tracked.peak), (planned_targets, tracked.peak)
    ratio_base = [tracked.peak, 0]

    # The largest solve, on real keys.
    K = collect_keys(adapter, requests, groups, [written[0]])[written[0]]
    R = torch.randn(shape.hidden_size, K.shape[1])
    method.record_keys(written[0], K)  # C_prev in use, as from the second batch on
    with LiveStorages() as tracked:
        method.solve(written[0], K, R)
    assert close(items["solve temporaries"], tracked.peak), (items["solve temporaries"], tracked.peak)
    ratio_base[1] = tracked.peak

    # A whole batch as the runner runs it, resident state included.
    with LiveStorages() as tracked:
        before = observe_before(adapter, method, requests, written, critical[-1])
        trace = strategy.edit_batch(method, ctx, requests, critical, before=before.weights)
    state = sum(t.nbytes for t in [*method.P.values(), *method.C_prev.values()])
    planned_state = items["projector P"] + items["C_prev"]
    assert state == planned_state
    weights = sum(p.nbytes for p in adapter.model.parameters()) + sum(w.nbytes for w in originals.values())
    measured_peak = weights + state + tracked.peak
    # this batch's real lengths, as above
    edit_peak = plan.total("resident") + max(planned_targets, items["solve temporaries"])
    assert close(edit_peak, measured_peak), (edit_peak, measured_peak)

    # The checkpoint the runner writes after this batch.
    checkpoint = Checkpoint(tmp_path, "key")
    session = SimpleNamespace(
        log=[BatchLog([(w.layer, w.residual) for w in trace.writes], change_fingerprint(adapter, originals))]
    )
    checkpoint.save(session, [{"batch": 0, "edits": 10, "case_ids": [r.case_id for r in requests]}])
    size = checkpoint.path.stat().st_size
    assert close(items["checkpoint (one file, rewritten each batch)"], size), (items, size)
    print(
        f"planned/measured: targets {planned_targets / ratio_base[0]:.3f}, "
        f"solve {items['solve temporaries'] / ratio_base[1]:.3f}, "
        f"batch peak {edit_peak / measured_peak:.3f}, "
        f"checkpoint {items['checkpoint (one file, rewritten each batch)'] / size:.3f}"
    )


def test_updated_solver_state_and_refactorisation_as_planned(fresh_tiny):
    """The updated solver's resident state after 10 recorded keys is exactly the plan's items,
    and a refactorisation's temporaries (B and its LU, float64) are what the plan counts."""
    cfg = compose_config(
        [
            "model=tiny-llama",
            "method=alphaedit",
            "method.solver=updated",
            "strategy=blue",
            "batch_size=10",
            "num_edits=10",
            "device=cpu",
            "stats.samples=64",
        ]
    )
    adapter = fresh_tiny("tiny-llama")
    shape, facts = model_shape(cfg.model), run_facts(cfg)
    items = {i.name: i.bytes for i in make_plan(shape, facts).items}
    session = build_session(cfg, adapter)
    method, written, groups = session.method, session.written, session.groups
    requests = load_counterfact("bundled", limit=10)
    keys = collect_keys(adapter, requests, groups, written)
    for layer, K in keys.items():
        method.solve(layer, K, torch.randn(shape.hidden_size, K.shape[1]))
        method.record_keys(layer, K)
    systems = [method.systems[l] for l in written]
    recorded = sum(t.nbytes for s in systems for t in (s.U, s.G, s.V, s.S_inv))
    assert recorded == items["recorded keys (updated solver)"]
    assert sum(t.nbytes for t in method.P.values()) == items["projector P (updated solver)"]
    assert "solver factorisation (updated solver)" not in items  # 10 keys < d_k / 4: still l2 I
    system = method.systems[written[0]]
    with LiveStorages() as tracked:
        refactorised = system.refactorised(symmetric=False)
    planned = items["solve temporaries"]
    assert close(planned, tracked.peak), (planned, tracked.peak)
    assert refactorised.factor.kind == "lu"
