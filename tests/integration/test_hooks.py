"""The adapter's hooks read what the model itself reports, for every tiny family."""

import pytest
import torch

from tests.conftest import TINY

TEXTS = ["The Eiffel Tower is located in", "LinkedIn, by"]


@pytest.mark.parametrize("name", TINY)
def test_block_outputs_match_output_hidden_states(load_tiny, name):
    adapter = load_tiny(name)
    batch = adapter.encode(TEXTS)
    with torch.no_grad():
        ref = adapter.model(**batch, output_hidden_states=True).hidden_states
    layers = list(range(adapter.n_layers - 1))  # the last entry of hidden_states is after the final norm
    got = adapter.read_points(batch, [f"block.{l}" for l in layers])
    for l in layers:
        assert torch.allclose(got[f"block.{l}"], ref[l + 1], atol=1e-5), (name, l)


@pytest.mark.parametrize("name", TINY)
def test_last_block_through_final_norm_matches_last_hidden_state(load_tiny, name):
    adapter = load_tiny(name)
    batch = adapter.encode(TEXTS)
    last = adapter.n_layers - 1
    with torch.no_grad():
        ref = adapter.model(**batch, output_hidden_states=True).hidden_states[-1]
        got = adapter.read_points(batch, [f"block.{last}"])[f"block.{last}"]
        assert torch.allclose(adapter.final_norm(got), ref, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_rewrite_matrix_maps_keys_to_mlp_output(load_tiny, name):
    """The (out x in) view and the key point agree with the module's own output."""
    adapter = load_tiny(name)
    batch = adapter.encode(TEXTS)
    acts = adapter.read_points(batch, ["key.2", "mlp.2"])
    module = adapter.rewrite_module(2)
    bias = module.bias if getattr(module, "bias", None) is not None else 0
    predicted = acts["key.2"] @ adapter.rewrite_weight(2).T + bias
    assert torch.allclose(predicted, acts["mlp.2"], atol=1e-4)
    assert adapter.rewrite_weight(2).shape == (adapter.hidden_size, adapter.key_size(2))


@pytest.mark.parametrize("name", TINY)
def test_injection_changes_only_the_chosen_position(load_tiny, name):
    adapter = load_tiny(name)
    batch = adapter.encode(TEXTS)
    delta = torch.randn(2, adapter.hidden_size) * 5
    before = adapter.read_points(batch, ["block.3"])["block.3"]
    with adapter.inject("block.1", delta, rows=[0, 1], positions=[2, 1]):
        after = adapter.read_points(batch, ["block.1", "block.3"])
    plain = adapter.read_points(batch, ["block.1"])["block.1"]
    assert torch.allclose(after["block.1"][0, 2], plain[0, 2] + delta[0], atol=1e-5)
    assert torch.allclose(after["block.1"][1, 1], plain[1, 1] + delta[1], atol=1e-5)
    assert torch.allclose(after["block.3"][0, :2], before[0, :2], atol=1e-5)  # causal: earlier positions untouched
    assert not torch.allclose(after["block.3"][0, 2], before[0, 2])


@pytest.mark.parametrize("name", TINY)
def test_hooks_are_removed_after_use(load_tiny, name):
    adapter = load_tiny(name)
    batch = adapter.encode(TEXTS)

    def hooks():  # transformers keeps hooks of its own (output capturing): count, don't assume none
        return {id(m): len(m._forward_hooks) for m in adapter.model.modules()}

    before = hooks()
    adapter.read_points(batch, ["block.4", "key.1"])
    with adapter.inject("block.2", torch.ones(2, adapter.hidden_size), [0, 1], [0, 0]):
        assert hooks() != before
    assert hooks() == before
