"""A non-finite target, key, solve or update never reaches the weights, C_prev, the
checkpoint or the summary: the run stops (or skips the batch with on_nan=skip)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from blue_cli.config.overrides import compose_config
from blue_cli.editing import session as session_module
from blue_cli.editing.methods.memit import Memit
from blue_cli.errors import NumericalError
from blue_cli.runs import runner
from blue_cli.runs.replay import edited_weights

SMALL = [
    "model=tiny-gpt2",
    "method=memit_seq",
    "method.solver=direct",  # NanFromSecondBatch puts its NaN into C, which the direct solver reads
    "num_edits=4",
    "batch_size=2",
    "method.target.steps=3",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild=false",  # the evaluation in the wild has tests of its own
    "eval.perplexity_tokens=0",  # held-out perplexity too (tests/unit/test_perplexity.py, test_long_horizon*)
]


class NanFromSecondBatch(Memit):
    """MEMIT whose covariance gets one NaN after the first batch's solves."""

    solves = 0

    def solve(self, layer, K, R):
        NanFromSecondBatch.solves += 1
        if NanFromSecondBatch.solves > len(self.layers):
            self.C[layer][0, 0] = float("nan")
        return super().solve(layer, K, R)


def _checkpoint(run_dir):
    with safe_open(str(run_dir / "checkpoint.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_a_nan_in_c_stops_the_run_and_keeps_the_last_good_batch(tmp_path, monkeypatch, fresh_tiny):
    NanFromSecondBatch.solves = 0
    monkeypatch.setattr(session_module, "method_class", lambda name: NanFromSecondBatch)
    with pytest.raises(NumericalError, match=r"batch 1 \(case_ids .*\): non-finite update of layer \d"):
        runner.run_experiment(compose_config(SMALL), tmp_path)
    assert not (tmp_path / "summary.json").exists()
    tensors, meta = _checkpoint(tmp_path)
    assert meta["batches_done"] == "1"
    assert tensors and all(k.startswith("residual.0.") for k in tensors)  # batch 0's writes only
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    assert len(json.loads(meta["fingerprints"])) == 1


def test_on_nan_skip_skips_and_counts_the_batch(tmp_path, monkeypatch, fresh_tiny):
    NanFromSecondBatch.solves = 0
    monkeypatch.setattr(session_module, "method_class", lambda name: NanFromSecondBatch)
    summary = runner.run_experiment(compose_config([*SMALL, "on_nan=skip"]), tmp_path)
    assert summary["skipped_batches"] == 1
    tensors, meta = _checkpoint(tmp_path)
    assert meta["finished"] == "true"
    assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
    # the skipped batch left no trace: the weights equal a run that edited the first batch only
    NanFromSecondBatch.solves = -(10**9)  # never NaN
    first_only = runner.run_experiment(compose_config([*SMALL, "num_edits=2"]), tmp_path / "first")
    ref, ref_meta = _checkpoint(tmp_path / "first")
    assert json.loads(meta["writes"])[1] == []  # nothing written for the skipped batch
    assert ref.keys() == tensors.keys() and all(torch.equal(tensors[k], ref[k]) for k in ref)
    prints = json.loads(meta["fingerprints"])
    assert prints[0] == prints[1] == json.loads(ref_meta["fingerprints"])[0]  # weights as after batch 0, bit for bit
    assert first_only["skipped_batches"] == 0
    skipped, first = edited_weights(tmp_path), edited_weights(tmp_path / "first")  # the replay skips it too
    assert skipped.keys() == first.keys() and all(torch.equal(skipped[l], first[l]) for l in first)


def test_on_nan_takes_only_stop_or_skip():
    with pytest.raises(Exception, match=r"unknown on_nan 'ignore' \(choose: stop, skip\)"):
        compose_config(["on_nan=ignore"])
