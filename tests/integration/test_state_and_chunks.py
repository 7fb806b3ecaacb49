"""Method state that stays small: a checkpoint of residuals that a resume replays,
float32 storage, and target optimisation in chunks that give the same targets."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from blue_cli.config import registry
from blue_cli.config.overrides import compose_config
from blue_cli.config.registry import method_class
from blue_cli.config.schema import TargetConfig
from blue_cli.editing.context import context_templates
from blue_cli.editing.session import EditSession
from blue_cli.editing.strategies.base import EditContext, Strategy
from blue_cli.editing.targets import requests_per_chunk
from blue_cli.errors import ConfigError
from blue_cli.runs import runner
from blue_cli.runs.checkpoint import Checkpoint
from blue_cli.runs.replay import replay_run

SMALL = [
    "model=tiny-gpt2",
    "method=memit_seq",
    "num_edits=6",
    "batch_size=2",
    "method.target.steps=3",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",  # the evaluation in the wild has tests of its own
    "eval.perplexity_tokens=0",  # held-out perplexity too (tests/unit/test_perplexity.py, test_long_horizon*)
]


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


class _Recorder:
    """Wraps ``Strategy.write_layer`` to note each write's residual and the keys it saw."""

    def __init__(self, monkeypatch):
        self.writes: list[tuple[int, torch.Tensor]] = []
        real = Strategy.write_layer

        def spy(method, ctx, requests, layer, residual):
            self.writes.append((layer, residual.detach().clone()))
            return real(method, ctx, requests, layer, residual)

        monkeypatch.setattr(Strategy, "write_layer", staticmethod(spy))


def test_checkpoint_holds_each_writes_residual_not_weights_or_keys(tmp_path, monkeypatch):
    recorder = _Recorder(monkeypatch)
    runner.run_experiment(compose_config([*SMALL, "strategy=spread"]), tmp_path / "full")
    tensors, meta = _tensors(tmp_path / "full" / "checkpoint.safetensors")
    # spread over tiny-gpt2's 3 critical layers, 3 batches of 2: nine writes, d x n each
    assert sorted(tensors) == sorted(f"residual.{b}.{i}" for b in range(3) for i in range(3))
    assert json.loads(meta["writes"]) == [[1, 2, 3]] * 3
    assert len(recorder.writes) == 9
    for n, (layer, residual) in enumerate(recorder.writes):
        b, i = divmod(n, 3)
        assert json.loads(meta["writes"])[b][i] == layer
        assert torch.equal(tensors[f"residual.{b}.{i}"], residual), (b, i)  # exactly what the layer was asked to write
    assert meta["format"] == "replay-1" and json.loads(meta["finished"]) is True


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """SMALL run to the end: (its folder, its summary)."""
    run_dir = tmp_path_factory.mktemp("full")
    return run_dir, runner.run_experiment(compose_config(SMALL), run_dir)


def test_a_killed_run_resumes_by_replay_bit_identically(tmp_path, monkeypatch, full_run):
    full_dir, full = full_run
    tensors, meta = _tensors(full_dir / "checkpoint.safetensors")
    saves = {"n": 0}
    real_save = Checkpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(compose_config(SMALL), tmp_path / "killed")
    monkeypatch.setattr(Checkpoint, "save", real_save)
    replays = []
    real_replay = EditSession.replay_batch

    def counted(self, requests, writes):
        replays.append(len(writes))
        return real_replay(self, requests, writes)

    monkeypatch.setattr(EditSession, "replay_batch", counted)
    resumed = runner.run_experiment(compose_config(SMALL), tmp_path / "killed")
    assert replays == [2, 2]  # the two saved batches (two blue writes each) were replayed, not re-optimised
    again, again_meta = _tensors(tmp_path / "killed" / "checkpoint.safetensors")
    assert again.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(again[k], tensors[k]), k
    assert again_meta["fingerprints"] == meta["fingerprints"]  # every batch's weights, bit for bit
    for key in ("efficacy", "generalization", "specificity", "target_logprob_gain", "write_error"):
        assert resumed[key] == full[key], key


def test_replay_rebuilds_the_weights_and_c_prev_exactly(full_run):
    """The replayed session holds the live run's weights and C_prev = sum of K K^T over
    the keys collected after each batch (as the updated solver's recorded keys), recomputed
    here from the replayed model."""
    cfg = compose_config(SMALL)
    live = runner.load_adapter(cfg)
    _, adapter, session = replay_run(full_run[0])
    assert len(session.log) == 3
    _, meta = _tensors(full_run[0] / "checkpoint.safetensors")
    recorded = json.loads(meta["fingerprints"])  # measured on the live run's weights
    assert [{str(l): v for l, v in e.fingerprint.items()} for e in session.log] == recorded
    requests = [
        r
        for batch in runner.batches_of(
            registry.dataset_class(cfg.dataset.name)(cfg.dataset, cfg.eval, seed=cfg.seed).load(cfg.num_edits),
            cfg.batch_size,
        )
        for r in batch
    ]
    # C_prev from keys collected on the replayed weights after each batch: rebuild it by
    # replaying batch by batch in a second session and collecting keys independently.
    from blue_cli.editing.keys import collect_keys
    from blue_cli.editing.session import build_session

    fresh = build_session(cfg, live)
    size = session.method.key_sizes
    expected = {l: torch.zeros(size[l], size[l], dtype=torch.float64) for l in session.written}
    for b, entry in enumerate(session.log):
        batch = requests[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        fresh.replay_batch(batch, entry.writes)
        for layer, K in collect_keys(live, batch, fresh.groups, session.written).items():
            expected[layer] += K.double() @ K.double().T
    method = session.method
    assert method.solver == "updated"  # auto, on CPU; C_prev is the system's recorded keys
    for layer in session.written:
        assert torch.equal(adapter.rewrite_weight(layer), live.rewrite_weight(layer))
        system = method.systems[layer]
        assert method.refactorisations[layer] == 0 and system.recorded == 6  # 6 keys < d_k / 8
        C_prev = system.V @ system.V.T
        assert torch.allclose(C_prev, expected[layer], rtol=1e-10, atol=1e-9)
        assert C_prev.abs().sum() > 0


def test_targets_in_chunks_equal_one_chunk(fresh_tiny, requests10):
    """In float64, so that float32 rounding of differently shaped batches, which Adam's
    first normalised steps can amplify past any fixed tolerance, does not decide the test."""
    adapter = fresh_tiny("tiny-gpt2")
    adapter.model.double()
    groups = context_templates(adapter, n_prefixes=1, seed=0)
    method = method_class("memit")(OmegaConf.create({"name": "memit", "keep_previous_keys": False}), [3])
    settings = TargetConfig(lr=0.5, steps=5, clamp=4.0)
    whole = Strategy.compute_targets(method, EditContext(adapter, groups, settings), requests10[:5], 3)
    chunked = Strategy.compute_targets(method, EditContext(adapter, groups, settings, chunk=2), requests10[:5], 3)
    assert torch.allclose(whole.delta["block"], chunked.delta["block"], rtol=0, atol=1e-9)
    assert whole.steps == chunked.steps and chunked.delta["block"].shape[0] == 5


def test_requests_per_chunk_follows_the_activation_estimate():
    # 34 bytes x 4096 hidden x 140 tokens x 24 blocks (16-bit) = 467.9 MB per request
    per_request = 34 * 4096 * 140 * 24
    assert (
        requests_per_chunk(
            hidden=4096, tokens_per_request=140, blocks=24, elem_bytes=2, budget_bytes=10 * per_request + 1
        )
        == 10
    )
    assert (
        requests_per_chunk(
            hidden=4096, tokens_per_request=140, blocks=24, elem_bytes=4, budget_bytes=10 * per_request + 1
        )
        == 5
    )
    assert requests_per_chunk(hidden=4096, tokens_per_request=140, blocks=24, elem_bytes=2, budget_bytes=1.0) == 1


def _rewrite_meta(path, **changes):
    """Change metadata entries as a run would have written them (checksum recomputed):
    what is tested is the replay's check, not the damaged-file check."""
    from safetensors.torch import save_file

    from blue_cli.runs.checkpoint import checkpoint_checksum

    tensors, meta = _tensors(path)
    meta = {**meta, **changes}
    if "sha256" in meta:
        meta["sha256"] = checkpoint_checksum(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture(scope="module")
def killed_once(tmp_path_factory):
    """A SMALL run killed after its first checkpoint; tests copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("killed")
    real_save = Checkpoint.save

    def save_then_die(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            runner.run_experiment(compose_config(SMALL), run_dir)
    return run_dir


def _copy(killed_once, to):
    shutil.copytree(killed_once, to)
    return to / "checkpoint.safetensors"


def test_a_replay_that_diverges_is_refused_and_float_rounding_is_reported(tmp_path, killed_once, caplog):
    path = _copy(killed_once, tmp_path / "a")
    prints = json.loads(_tensors(path)[1]["fingerprints"])
    layer = next(iter(prints[0]))
    far = [{**prints[0], layer: [prints[0][layer][0] * 1.01, prints[0][layer][1]]}]
    _rewrite_meta(path, fingerprints=json.dumps(far))
    with pytest.raises(ConfigError, match=rf"diverged at batch 0, layer {layer}: change norm"):
        runner.run_experiment(compose_config(SMALL), tmp_path / "a")

    path = _copy(killed_once, tmp_path / "b")
    prints = json.loads(_tensors(path)[1]["fingerprints"])
    near = [{**prints[0], layer: [prints[0][layer][0] * (1 + 1e-9), prints[0][layer][1]]}]
    _rewrite_meta(path, fingerprints=json.dumps(near))
    with caplog.at_level("WARNING"):
        summary = runner.run_experiment(compose_config(SMALL), tmp_path / "b")
    assert "not bit for bit" in caplog.text and summary["efficacy"] >= 0


def test_a_checkpoint_of_whole_matrices_is_refused_in_one_line(tmp_path, killed_once):
    path = _copy(killed_once, tmp_path / "run")
    _, meta = _tensors(path)
    from safetensors.torch import save_file

    save_file(
        {"weight.1": torch.zeros(2, 2)},
        str(path),
        metadata={k: v for k, v in meta.items() if k not in ("format", "sha256")},
    )
    with pytest.raises(ConfigError, match=r"written by an older blue .* resume=false"):
        runner.run_experiment(compose_config(SMALL), tmp_path / "run")


def test_stopped_requests_leave_the_batch_with_the_same_targets(fresh_tiny, requests10, monkeypatch):
    """A loose early stop (loss 3.0) stops requests at different steps. Batched with stopped
    requests dropped, the targets are those of one-request-at-a-time optimisation (float64, as
    above) and of keeping them in; the sequences forwarded are counted, not assumed: each
    request's sequences run once per step it was evaluated (steps + 1), plus two full passes (the
    cache of the positions before the subject, frozen prefix) and the initial states' pass over
    each request's plain prompt only."""
    from dataclasses import replace

    from blue_cli.editing.targets import optimise_targets

    adapter = fresh_tiny("tiny-gpt2")
    adapter.model.double()
    templates = [t for g in context_templates(adapter, n_prefixes=1, seed=0) for t in g]
    requests = requests10[:6]
    settings = TargetConfig(lr=0.5, steps=10, clamp=4.0, early_stop_loss=3.0)
    rows = {"n": 0}
    real_base, real_cache, real_split = (
        type(adapter).base_forward,
        type(adapter)._forward_with_cache,
        type(adapter).forward_split,
    )

    def counted(real):
        def forward(self, input_ids, *rest):
            rows["n"] += input_ids.shape[0]
            return real(self, input_ids, *rest)

        return forward

    def counted_split(self, split):
        assert split.past  # (a split without a cache would call base_forward and count twice)
        rows["n"] += split.input_ids.shape[0]
        return real_split(self, split)

    monkeypatch.setattr(type(adapter), "base_forward", counted(real_base))
    monkeypatch.setattr(type(adapter), "_forward_with_cache", counted(real_cache))
    monkeypatch.setattr(type(adapter), "forward_split", counted_split)
    results, forwarded = {}, {}
    for drop in (True, False):
        rows["n"] = 0
        results[drop] = optimise_targets(adapter, requests, templates, 3, replace(settings, drop_stopped=drop))
        forwarded[drop] = rows["n"]
    alone = [optimise_targets(adapter, [r], templates, 3, settings) for r in requests]
    dropped, kept = results[True], results[False]
    steps = dropped.steps
    assert len(set(steps)) >= 3 and min(steps) < settings.steps - 1  # stops at different steps happened
    assert steps == kept.steps == [a.steps[0] for a in alone]
    one_by_one = torch.cat([a.delta["block"] for a in alone])
    assert torch.allclose(dropped.delta["block"], one_by_one, rtol=0, atol=1e-9)
    assert torch.allclose(dropped.delta["block"], kept.delta["block"], rtol=0, atol=1e-9)
    assert dropped.loss_final == pytest.approx(kept.loss_final, rel=1e-9)
    per_request = len(templates) + 1  # its prompts and its KL prompt
    total = per_request * len(requests)
    once = 2 * total + len(requests)
    assert forwarded[True] == once + per_request * sum(s + 1 for s in steps)
    assert forwarded[False] == once + total * (max(steps) + 1)
    assert forwarded[True] < forwarded[False]
