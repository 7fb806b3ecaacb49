"""Method state that stays small: C_prev checkpointed as the keys that built it,
float32 storage, and target optimisation in chunks that give the same targets."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from blue_cli import runner
from blue_cli.checkpoint import Checkpoint
from blue_cli.editing.context import context_templates
from blue_cli.editing.covariance import CovarianceStore, StatsSettings
from blue_cli.editing.strategies.base import EditContext, Strategy
from blue_cli.editing.targets import TargetSettings, requests_per_chunk
from blue_cli.overrides import compose_config
from blue_cli.registry import method_class

SMALL = ["model=tiny-gpt2", "method=memit_seq", "num_edits=6", "batch_size=2", "method.target.steps=3",
         "stats.samples=40", "eval.generation=false"]


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_checkpoint_holds_the_keys_not_c_prev_and_a_resume_is_bit_identical(tmp_path, monkeypatch):
    full = runner.run_experiment(compose_config(SMALL), tmp_path / "full")
    tensors, _ = _tensors(tmp_path / "full" / "checkpoint.safetensors")
    keys = sorted(k for k in tensors if k.startswith("keys."))
    assert keys and not any(k.startswith("C_prev") for k in tensors)
    assert all(t.shape[1] == 2 for k, t in tensors.items() if k.startswith("keys."))  # d_k x n per batch
    assert len([k for k in keys if k.startswith("keys.1.")]) == 3  # one entry per batch

    saves = {"n": 0}
    real_save = Checkpoint.save

    def save_then_die(self, done, *args, **kwargs):
        real_save(self, done, *args, **kwargs)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        runner.run_experiment(compose_config(SMALL), tmp_path / "killed")
    monkeypatch.setattr(Checkpoint, "save", real_save)
    resumed = runner.run_experiment(compose_config(SMALL), tmp_path / "killed")
    again, _ = _tensors(tmp_path / "killed" / "checkpoint.safetensors")
    assert again.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(again[k], tensors[k]), k
    for key in ("efficacy", "generalization", "specificity", "target_logprob_gain", "write_error"):
        assert resumed[key] == full[key], key


def test_loading_the_keys_rebuilds_c_prev_exactly(fresh_tiny):
    adapter = fresh_tiny("tiny-gpt2")
    stats = CovarianceStore(adapter, StatsSettings(samples=40, max_length=64))
    cfg = OmegaConf.create({"name": "memit_seq", "cov_weight": 1.0, "sequential": True, "state_dtype": "float32", "target": {}})
    a, b = method_class("memit_seq")(cfg, [1]), method_class("memit_seq")(cfg, [1])
    a.prepare(stats, adapter.device)
    b.prepare(stats, adapter.device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        a.record_keys(1, torch.randn(adapter.key_size(1), 4, generator=gen))
    b.load_state_dict(a.state_dict())
    assert a.C_prev[1].dtype == torch.float32
    assert torch.equal(a.C_prev[1], b.C_prev[1])
    K = torch.cat(a.key_log[1], dim=1).double()
    assert torch.allclose(b.C_prev[1].double(), K @ K.T, rtol=1e-5, atol=1e-4)


def test_targets_in_chunks_equal_one_chunk(load_tiny, requests10):
    adapter = load_tiny("tiny-gpt2")
    groups = context_templates(adapter, n_prefixes=1, seed=0)
    method = method_class("memit")(OmegaConf.create({"name": "memit", "sequential": False}), [3])
    settings = TargetSettings(lr=0.5, steps=5, clamp=4.0)
    whole = Strategy.compute_targets(method, EditContext(adapter, groups, settings), requests10[:5], 3)
    chunked = Strategy.compute_targets(method, EditContext(adapter, groups, settings, chunk=2), requests10[:5], 3)
    assert torch.allclose(whole.delta["block"], chunked.delta["block"], atol=1e-4)  # as batched vs one at a time
    assert whole.steps == chunked.steps and chunked.delta["block"].shape[0] == 5


def test_requests_per_chunk_follows_the_activation_estimate():
    # 34 bytes x 4096 hidden x 140 tokens x 24 blocks (16-bit) = 467.9 MB per request
    per_request = 34 * 4096 * 140 * 24
    assert requests_per_chunk(hidden=4096, tokens_per_request=140, blocks=24, elem_bytes=2, budget_bytes=10 * per_request + 1) == 10
    assert requests_per_chunk(hidden=4096, tokens_per_request=140, blocks=24, elem_bytes=4, budget_bytes=10 * per_request + 1) == 5
    assert requests_per_chunk(hidden=4096, tokens_per_request=140, blocks=24, elem_bytes=2, budget_bytes=1.0) == 1
