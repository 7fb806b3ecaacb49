"""Target steps on a batch split at the subject's last token (models/split.py): the positions
before it run once as cached keys and values, and everything the steps compute is what a
full forward computes, on every family."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from blue_cli.config.schema import TargetConfig
from blue_cli.editing import targets
from blue_cli.editing.context import context_templates
from blue_cli.editing.targets import _build_batch, _split, length_groups, optimise_targets

FAMILIES = ("tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-gptj")
SETTINGS = TargetConfig(lr=0.5, steps=6, clamp=4.0)


def _templates(adapter, n_prefixes=2):
    return [t for g in context_templates(adapter, n_prefixes=n_prefixes, seed=0) for t in g]


@pytest.mark.parametrize("name", FAMILIES)
def test_split_forward_gives_the_full_forwards_hidden_states(load_tiny, requests10, name):
    """Every run position's final hidden state equals the full right-padded forward's at the
    same position of the same sequence. A rewriting sequence runs from its subject's last token
    to its end, a KL sequence ("{subject} is a", read at the subject) that token alone: the
    steps run fewer positions than the full batch has."""
    adapter = load_tiny(name)
    batch = _build_batch(adapter, requests10[:5], _templates(adapter))
    split = _split(adapter, batch, at_subject=True).inputs
    with torch.no_grad():
        full = adapter.base_forward(batch.inputs["input_ids"], batch.inputs["attention_mask"])
        run = adapter.forward_split(split)
    lengths = batch.inputs["attention_mask"].sum(1).clone()
    lengths[batch.kl_rows] = batch.lookup[batch.kl_rows] + 1
    assert split.cached == int(batch.lookup.max()) and split.cached > 0
    assert split.input_ids.shape[1] == int((lengths - batch.lookup).max()) < batch.inputs["input_ids"].shape[1]
    assert torch.equal(split.attention_mask[:, split.cached :].sum(1), lengths - batch.lookup)
    for i in range(len(lengths)):
        start, length = int(batch.lookup[i]), int(lengths[i])
        assert torch.equal(split.input_ids[i, : length - start], batch.inputs["input_ids"][i, start:length])
        expected = full[i, start:length]
        got = run[i, : length - start]
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max(), (name, i)


@pytest.mark.parametrize("name", ("tiny-llama", "tiny-gpt2"))
def test_cached_pass_grouped_by_width_caches_the_same_keys_and_values(load_tiny, requests10, monkeypatch, name):
    """The no-grad pass that caches the positions before each subject, run as one forward per
    group of similar width (each only as wide as its group's longest cached part), gives the
    keys and values of one forward of every sequence over its full length, slot for slot."""
    adapter = load_tiny(name)
    batch = _build_batch(adapter, requests10[:5], _templates(adapter))
    widths = []
    real = type(adapter)._forward_with_cache

    def counted(self, ids, mask):
        widths.append(ids.shape[1])
        return real(self, ids, mask)

    monkeypatch.setattr(type(adapter), "_forward_with_cache", counted)
    monkeypatch.setitem(targets.FORWARD_OVERHEAD_FLOPS, adapter.device.type, 0.0)
    grouped = _split(adapter, batch, at_subject=True).inputs
    assert len(widths) > 1 and max(widths) == int(batch.lookup.max()) and min(widths) < max(widths)
    with torch.no_grad():
        whole = real(adapter, batch.inputs["input_ids"], batch.inputs["attention_mask"])
    P = grouped.cached
    for block, (keys, values) in enumerate(grouped.past):
        full_k, full_v = whole.layers[block].keys, whole.layers[block].values
        for i, start in enumerate(batch.lookup.tolist()):
            # sequence i's cached positions 0..start-1 sit in the last ``start`` slots, zeros before
            assert torch.allclose(keys[i, :, P - start :], full_k[i, :, :start], atol=1e-5), (block, i)
            assert torch.allclose(values[i, :, P - start :], full_v[i, :, :start], atol=1e-5), (block, i)
            assert not keys[i, :, : P - start].any() and not values[i, :, : P - start].any()


@pytest.mark.parametrize(
    "name,points,grouped",
    [
        ("tiny-gpt2", ("block",), False),
        ("tiny-llama", ("attn", "mlp"), False),
        ("tiny-qwen2", ("block",), False),
        ("tiny-llama", ("block",), True),
        ("tiny-gptj", ("attn", "mlp"), True),
    ],
)
def test_split_steps_give_the_same_targets(load_tiny, requests10, monkeypatch, name, points, grouped):
    """optimise_targets with and without the split: the same vectors, losses and step counts
    (a mid threshold makes some requests stop early, so the sub-batch selection runs too).
    ``grouped``: a forward costs nothing extra, so every run width gets its own forward
    (tiny models otherwise run one)."""
    adapter = load_tiny(name)
    if grouped:
        monkeypatch.setitem(targets.FORWARD_OVERHEAD_FLOPS, adapter.device.type, 0.0)
        batch = _split(adapter, _build_batch(adapter, requests10[:4], _templates(adapter, 1)), at_subject=True)
        assert len(batch.groups) == 3
    templates = _templates(adapter, n_prefixes=1)
    probe = optimise_targets(adapter, requests10[:4], templates, 2, replace(SETTINGS, reuse_past=False), points)
    # the threshold in the widest gap between two requests' initial losses: those below take no step
    ordered = sorted(probe.loss_init)
    gap, low = max((b - a, a) for a, b in zip(ordered, ordered[1:]))
    settings = replace(SETTINGS, early_stop_loss=low + gap / 2)
    split = optimise_targets(adapter, requests10[:4], templates, 2, settings, points)
    full = optimise_targets(adapter, requests10[:4], templates, 2, replace(settings, reuse_past=False), points)
    assert split.steps == full.steps and len(set(full.steps)) > 1  # some stopped early, some did not
    for p in points:
        assert torch.allclose(split.delta[p], full.delta[p], atol=1e-4), p
        assert torch.equal(split.h_init[p], full.h_init[p])
    assert split.loss_final == pytest.approx(full.loss_final, abs=1e-4)
    assert split.loss_init == pytest.approx(full.loss_init, abs=1e-5)


def test_a_batch_whose_subjects_start_every_sequence_caches_nothing(load_tiny, requests10):
    """Unsplit (all starts 0) the batch is the right-padded one itself: no cache, no extra forward."""
    adapter = load_tiny("tiny-gpt2")
    batch = _build_batch(adapter, requests10[:2], ["{}"])
    split = _split(adapter, batch, at_subject=False).inputs
    assert split.past == [] and split.cached == 0
    assert torch.equal(split.input_ids, batch.inputs["input_ids"])
    assert torch.equal(split.attention_mask, batch.inputs["attention_mask"])


def _padded(groups) -> int:
    return sum(len(rows) * width for rows, width in groups)


def test_length_groups_partition_the_sequences_with_the_fewest_padded_positions():
    """Every sequence in exactly one group no narrower than it; with no forward overhead the
    padded total is the least over every split of the sorted widths into at most 3 groups
    (enumerated here); with a large overhead one group."""
    widths = torch.tensor([3, 1, 6, 6, 2, 5, 1, 6, 4, 1, 1, 6])
    groups = length_groups(widths, overhead=0.0)
    members = torch.cat([rows for rows, _ in groups]).sort().values
    assert torch.equal(members, torch.arange(len(widths)))
    assert all(int(widths[rows].max()) <= width for rows, width in groups)
    ordered = sorted(widths.tolist())
    n = len(ordered)
    best = min(
        i * ordered[i - 1] + (j - i) * ordered[j - 1] + (n - j) * ordered[-1]
        for i in range(1, n + 1)
        for j in range(i, n + 1)
        if j == n or ordered[j - 1] < ordered[j]
        if i == j or ordered[i - 1] < ordered[i]
    )
    assert _padded(groups) == best < n * 6
    single = length_groups(widths, overhead=1e6)
    assert len(single) == 1 and _padded(single) == n * 6
