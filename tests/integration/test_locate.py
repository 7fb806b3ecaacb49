"""Causal tracing (``blue locate``) on the tiny models, checked against forwards written here by hand.

The hand-written forwards use HF's own ``inputs_embeds`` for the corruption and plain forward
hooks for the restoration, so they share no code with blue_cli/locate/tracing.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from blue_cli.locate.facts import known_facts, load_knowns
from blue_cli.locate.tracing import (
    Corruption,
    clean_run,
    embedding_std,
    subject_noise,
    target_probabilities,
    trace_fact,
    window_layers,
)
from tests.conftest import invoke_blue

MODELS = ("tiny-gpt2", "tiny-llama")
SAMPLES = 3
SEED = 7
# A by-hand forward runs one sequence where the trace runs a batch of samples: float32
# matmuls of different shapes round differently (1.5e-6 in a probability was seen), so the
# two agree to float32 rounding, well below any effect the checks tell apart.
BY_HAND_TOL = 1e-5


@pytest.fixture(scope="module", params=MODELS)
def setup(request, load_tiny):
    """A tiny model, a fact it knows (its first known one among ROME's knowns) and its noise scale."""
    adapter = load_tiny(request.param)
    (fact,) = known_facts(adapter, load_knowns(), 1)
    return adapter, fact, 3 * embedding_std(adapter)


def _noise(fact, adapter, scale, seed=SEED):
    """The draws the docs promise: torch.Generator(seed), N(0, 1) of (samples, subject tokens, d), times the scale."""
    width = adapter.model.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((SAMPLES, fact.end - fact.start, width), generator=generator) * scale


def _by_hand(adapter, fact, noise, hooks=()):
    """Mean P(object) over the noise draws, the subject's embeddings shifted through inputs_embeds,
    with ``hooks`` ((module, hook) pairs) registered during the forward."""
    ids = fact.ids.unsqueeze(0).expand(noise.shape[0], -1)
    embeds = adapter.model.get_input_embeddings()(ids).clone()
    embeds[:, fact.start : fact.end] += noise
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            logits = adapter.model(inputs_embeds=embeds).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()
    return float(torch.softmax(logits.double(), -1)[:, fact.target_id].mean())


def _swap_at(position, clean_state):
    """A hook putting ``clean_state`` (d,) into every row of the module's output at ``position``."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, position] = clean_state
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return hook


def _clean_outputs(adapter, fact, modules):
    """Each module's output hidden state (T, d) in a clean forward, read by hand."""
    seen = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (output[0] if isinstance(output, tuple) else output)[0].clone()

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            adapter.model(fact.ids.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture(scope="module")
def traced(setup):
    adapter, fact, scale = setup
    trace = trace_fact(
        adapter,
        fact.ids,
        (fact.start, fact.end),
        fact.target_id,
        samples=SAMPLES,
        noise_scale=scale,
        windows={"mlp": 3, "attn": 3},
        seed=SEED,
        max_rows=4,  # several forwards per layer: the chunking is exercised
    )
    return trace


def test_the_fact_is_known_and_its_subject_range_spells_the_subject(setup):
    adapter, fact, _ = setup
    with torch.no_grad():
        top = adapter.model(fact.ids.unsqueeze(0)).logits[0, -1].argmax()
    assert int(top) == fact.target_id
    assert fact.fact.target.startswith(adapter.tok.decode(fact.target_id).strip())
    spelled = adapter.tok.decode(fact.ids[fact.start : fact.end].tolist()).strip()
    assert spelled == fact.fact.subject


def test_clean_and_corrupted_runs_match_forwards_by_hand(setup, traced):
    adapter, fact, scale = setup
    with torch.no_grad():
        logits = adapter.model(fact.ids.unsqueeze(0)).logits[0, -1]
    assert traced.clean == pytest.approx(float(torch.softmax(logits.double(), -1)[fact.target_id]), abs=1e-6)
    assert traced.corrupted == pytest.approx(_by_hand(adapter, fact, _noise(fact, adapter, scale)), abs=BY_HAND_TOL)
    assert traced.corrupted < traced.clean  # the noise hides the subject


def test_restoring_every_hidden_state_gives_the_clean_probability_and_none_the_corrupted(setup, traced):
    adapter, fact, scale = setup
    names = [f"block.{l}" for l in range(adapter.n_layers)]
    clean_prob, states = clean_run(adapter, fact.ids, fact.target_id, names)
    corruption = Corruption(fact.start, fact.end, _noise(fact, adapter, scale))
    everything = [(name, t) for name in names for t in range(len(fact.ids))]
    patches = [everything, [], everything[:1]]
    probs = target_probabilities(adapter, fact.ids, fact.target_id, corruption, patches, states)
    assert probs[0].tolist() == pytest.approx([clean_prob] * SAMPLES, abs=1e-6)
    assert float(probs[1].double().mean()) == pytest.approx(traced.corrupted, abs=1e-6)
    # the first block's output at every token is already the whole clean state
    first = [("block.0", t) for t in range(len(fact.ids))]
    again = target_probabilities(adapter, fact.ids, fact.target_id, corruption, [first], states)
    assert again[0].tolist() == pytest.approx([clean_prob] * SAMPLES, abs=1e-6)
    # the last block at the last token decides the output alone: its effect is clean - corrupted
    assert traced.effects["hidden"][-1, -1] == pytest.approx(traced.clean - traced.corrupted, abs=1e-6)


def test_one_hidden_state_restored_equals_a_forward_with_it_swapped_in_by_hand(setup, traced):
    adapter, fact, scale = setup
    with torch.no_grad():
        clean_hidden = adapter.model(fact.ids.unsqueeze(0), output_hidden_states=True).hidden_states
    noise = _noise(fact, adapter, scale)
    last = adapter.n_layers - 2  # HF's last hidden state has the final norm applied: compare below it
    for layer, position in ((0, fact.end - 1), (last, fact.start), (1, len(fact.ids) - 1)):
        block = adapter.model.get_submodule(adapter.family.blocks)[layer]
        hook = _swap_at(position, clean_hidden[layer + 1][0, position])
        expected = _by_hand(adapter, fact, noise, [(block, hook)]) - traced.corrupted
        assert float(traced.effects["hidden"][position, layer]) == pytest.approx(expected, abs=BY_HAND_TOL)


def test_a_restored_mlp_window_equals_the_clean_mlp_outputs_swapped_in_by_hand(setup, traced):
    adapter, fact, scale = setup
    blocks = adapter.model.get_submodule(adapter.family.blocks)
    layer, position = 2, fact.end - 1
    window = window_layers(layer, 3, adapter.n_layers)
    assert window == [1, 2, 3]
    modules = {l: blocks[l].get_submodule(adapter.family.rewrite) for l in window}
    clean = _clean_outputs(adapter, fact, modules)
    hooks = [(modules[l], _swap_at(position, clean[l][position])) for l in window]
    expected = _by_hand(adapter, fact, _noise(fact, adapter, scale), hooks) - traced.corrupted
    assert float(traced.effects["mlp"][position, layer]) == pytest.approx(expected, abs=BY_HAND_TOL)


def test_the_window_is_centred_and_clipped():
    assert window_layers(0, 10, 6) == [0, 1, 2, 3, 4]
    assert window_layers(5, 10, 6) == [0, 1, 2, 3, 4, 5]
    assert window_layers(3, 1, 6) == [3]
    assert window_layers(10, 10, 30) == list(range(5, 15))


def test_the_noise_is_seeded(setup, traced):
    adapter, fact, scale = setup
    assert torch.equal(subject_noise(SAMPLES, 2, 8, 1.0, 3), subject_noise(SAMPLES, 2, 8, 1.0, 3))
    assert not torch.equal(subject_noise(SAMPLES, 2, 8, 1.0, 3), subject_noise(SAMPLES, 2, 8, 1.0, 4))
    kwargs = dict(kinds=("hidden",), samples=SAMPLES, noise_scale=scale)
    again = trace_fact(adapter, fact.ids, (fact.start, fact.end), fact.target_id, seed=SEED, max_rows=4, **kwargs)
    other = trace_fact(adapter, fact.ids, (fact.start, fact.end), fact.target_id, seed=SEED + 1, **kwargs)
    assert again.corrupted == traced.corrupted
    assert torch.equal(again.effects["hidden"], traced.effects["hidden"])
    # rows per forward change only the rounding (other batch shapes)
    wide = trace_fact(adapter, fact.ids, (fact.start, fact.end), fact.target_id, seed=SEED, **kwargs)
    assert torch.allclose(wide.effects["hidden"], traced.effects["hidden"], rtol=0, atol=1e-6)
    assert other.corrupted != traced.corrupted
    by_hand = _by_hand(adapter, fact, _noise(fact, adapter, scale, SEED + 1))
    assert other.corrupted == pytest.approx(by_hand, abs=BY_HAND_TOL)


def test_known_facts_keeps_only_greedy_correct_facts_in_order(load_tiny):
    adapter = load_tiny("tiny-gpt2")
    candidates = load_knowns()[:80]
    kept = known_facts(adapter, candidates, 100)
    keys = [c.key for c in candidates]
    assert [keys.index(e.fact.key) for e in kept] == sorted(keys.index(e.fact.key) for e in kept)
    for fact in candidates:
        ids = adapter.tok(fact.prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            top = int(adapter.model(ids).logits[0, -1].argmax())
        first = adapter.tok(" " + fact.target, add_special_tokens=False)["input_ids"][0]
        assert (top == first) == (fact.key in {e.fact.key for e in kept}), fact.key
    assert 0 < len(kept) < len(candidates)
    assert [e.fact.key for e in known_facts(adapter, candidates, 2)] == [e.fact.key for e in kept[:2]]


# -- the command ------------------------------------------------------------------------------


def _locate(tmp_path, out, *extra):
    args = ["locate", "model=tiny-gpt2", "device=cpu", "--facts", "3", "--samples", "2", "--window", "3"]
    return invoke_blue([*args, "--span", "2", "--out", str(out), *extra], cwd=tmp_path)


def test_blue_locate_writes_traces_json_and_figures_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "loc"
    result = _locate(tmp_path, out)
    assert result.code == 0, result.stderr
    assert "traced 3 facts, read back 0" in result.stdout
    payload = json.loads((out / "locate.json").read_text())
    assert payload["n_facts"] == 3 and len(payload["facts"]) == 3
    assert payload["model"]["name"] == "tiny-gpt2" and payload["model"]["n_layers"] == 6
    assert payload["settings"]["windows"] == {"hidden": 1, "mlp": 3, "attn": 3}
    assert set(payload["effects"]) == {"hidden", "mlp", "attn"}
    assert all(len(payload["effects"][k]["last_subject"]) == 6 for k in payload["effects"])
    for name in ("causal_trace", "last_subject_effect"):
        for suffix in (".png", ".pdf"):
            assert (out / f"{name}{suffix}").stat().st_size > 1000
    # the suggestion: the two consecutive layers with the largest summed MLP effect at the last subject token
    per_layer = payload["effects"]["mlp"]["last_subject"]
    sums = [per_layer[i] + per_layer[i + 1] for i in range(5)]
    best = max(range(5), key=lambda i: (sums[i], -i))
    suggestion = payload["suggestion"]
    assert suggestion["layers"] == [best, best + 1] and suggestion["boundary_layers"] == [best, best + 1]
    assert suggestion["override"] == f"model.layers=[{best},{best + 1}]"
    assert suggestion["override"] in result.stdout
    # each fact's file holds its tables; their group means give locate.json's numbers
    traces = sorted((out / "traces").glob("*.json"))
    assert len(traces) == 3
    records = [json.loads(p.read_text()) for p in traces]
    by_hand = sum(r["effects"]["hidden"][-1][5] for r in records) / 3  # last token, last layer
    assert payload["effects"]["hidden"]["last"][5] == pytest.approx(by_hand)
    stamps = {p: p.stat().st_mtime_ns for p in traces}

    again = _locate(tmp_path, out)
    assert again.code == 0, again.stderr
    assert "traced 0 facts, read back 3" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in traces} == stamps
    assert json.loads((out / "locate.json").read_text())["effects"] == payload["effects"]

    other = _locate(tmp_path, out, "--noise", "2")
    assert other.code == 2
    (line,) = other.error_lines()
    assert "other settings" in line and "noise 3.0 there, 2.0 now" in line


def test_blue_locate_rejects_bad_options_in_one_line(tmp_path):
    for extra, words in (
        (["--kinds", "mlp,mpl"], "unknown kinds 'mpl'"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--span", "7"], "--span 7 is more than the model's 6 layers"),
        (["--from", "wiki"], "unknown sources 'wiki'"),
    ):
        result = _locate(tmp_path, tmp_path / "bad", *extra)
        assert result.code == 2, extra
        (line,) = result.error_lines()
        assert words in line, (extra, line)
        assert not (tmp_path / "bad" / "traces").exists()
