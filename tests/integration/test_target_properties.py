"""Targets, keys and second moments on tiny models, checked against independent recomputation.

Every reference value is computed here from the definition, with plain forward passes
and hooks written in this file: the subject's last token from the tokenizer's
character offsets, block outputs from ``output_hidden_states``, the rewrite module's
input from a forward hook, NLL and KL from the logits. Nothing is compared with a
number copied from a run or with the function under test called twice.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from blue_cli.config.schema import StatsConfig, TargetConfig
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.keys import collect_keys, values_at_subject
from blue_cli.editing.statistics.store import collect_second_moments
from blue_cli.editing.targets import KL_PROMPT, _build_batch, _losses, _split, optimise_targets
from blue_cli.models.tokens import subject_last_index

TEMPLATES = ["{}", "The. {}"]
LAYER = 2
BASE = TargetConfig(lr=0.5, steps=6, clamp=4.0, kl_factor=0.0625, weight_decay=0.5, early_stop_loss=0.0)


# --- independent helpers --------------------------------------------------------------


def last_subject_token(tok, template: str, subject: str) -> int:
    """The last token overlapping the subject's characters, from the tokenizer's offsets."""
    text = template.replace("{}", subject, 1)
    end = template.index("{}") + len(subject)
    offsets = tok(text, return_offsets_mapping=True)["offset_mapping"]
    return max(i for i, (a, b) in enumerate(offsets) if b > a and a < end)


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _with_added(module, vector: torch.Tensor, position: int):
    """Forward hook adding ``vector`` to the module's output at one position of a batch of one."""

    def hook(mod, args, output):
        h = _hidden(output).clone()
        h[0, position] = h[0, position] + vector.to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return module.register_forward_hook(hook)


def _logits(adapter, ids: list[int], layer: int | None = None, vector=None, position: int | None = None):
    handle = _with_added(adapter.block(layer), vector, position) if vector is not None else None
    try:
        return adapter.model(input_ids=torch.tensor([ids])).logits[0].float()
    finally:
        if handle is not None:
            handle.remove()


def target_nll(adapter, req: EditRequest, templates, layer: int, vector=None) -> torch.Tensor:
    """Mean over templates of the mean per-token NLL of " target_new", teacher-forced,
    with ``vector`` added to block ``layer``'s output at the subject's last token."""
    tok = adapter.tok
    target = tok(" " + req.target_new, add_special_tokens=False)["input_ids"]
    per_template = []
    for template in templates:
        text_template = template.replace("{}", req.prompt, 1)
        prompt = tok(text_template.replace("{}", req.subject, 1))["input_ids"]
        pos = last_subject_token(tok, text_template, req.subject)
        logp = torch.log_softmax(_logits(adapter, prompt + target, layer, vector, pos), dim=-1)
        per_template.append(-torch.stack([logp[len(prompt) - 1 + j, t] for j, t in enumerate(target)]).mean())
    return torch.stack(per_template).mean()


def rewrite_inputs(adapter, ids: list[int], layer: int) -> torch.Tensor:
    """The rewrite module's input at every position of one unpadded sequence: (T x d_k)."""
    got = {}

    def hook(module, args, output):
        got["x"] = args[0]

    handle = adapter.rewrite_module(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            adapter.model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return got["x"][0].float()


# --- shared optimisation runs (each a second or two on two cores) ------------------------


@pytest.fixture(scope="module")
def gpt2(load_tiny):
    return load_tiny("tiny-gpt2")


@pytest.fixture(scope="module")
def reqs(requests10):
    return requests10[:3]


@pytest.fixture(scope="module")
def base_run(gpt2, reqs):
    return optimise_targets(gpt2, reqs, TEMPLATES, LAYER, BASE)


@pytest.fixture(scope="module")
def runs(load_tiny, gpt2, reqs, base_run):
    """{model: (adapter, the BASE optimisation of ``reqs``)} for tiny-gpt2 and tiny-llama (BOS)."""
    llama = load_tiny("tiny-llama")
    return {"tiny-gpt2": (gpt2, base_run), "tiny-llama": (llama, optimise_targets(llama, reqs, TEMPLATES, LAYER, BASE))}


# --- (d) subject position and h_init ------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_subject_last_index_matches_token_offsets(load_tiny, model):
    """Including prompts where the subject is not first, and llama's prepended BOS."""
    tok = load_tiny(model).tok
    cases = [
        ("{} is a", "LinkedIn"),
        ("The language used by {} is", "Leonard Plugge"),
        ("A. {}, the", "Bernie Casey"),
        ("The. {}, by", "LinkedIn"),
        ("In 1928 {} wrote {} twice", "Otto Abel"),
    ]
    if model == "tiny-llama":
        assert tok("x")["input_ids"][0] == tok.bos_token_id  # the BOS case is really exercised
    for template, subject in cases:
        assert subject_last_index(tok, template, subject) == last_subject_token(tok, template, subject), template


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_h_init_is_the_block_output_at_the_subject_last_token(runs, reqs, model):
    adapter, res = runs[model]
    for i, req in enumerate(reqs):
        ids = adapter.tok(req.rewrite_prompt)["input_ids"]
        with torch.no_grad():
            states = adapter.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        expected = states[LAYER + 1][0, last_subject_token(adapter.tok, req.prompt, req.subject)]
        assert torch.allclose(res.h_init["block"][i], expected, atol=1e-5), req.subject
        assert torch.allclose(res.z("block")[i], expected + res.delta["block"][i], atol=1e-5)


# --- (f) the NLL the loop reports is the NLL of the returned vector ------------------------


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_reported_losses_are_the_target_nll_with_and_without_delta(runs, reqs, model):
    """loss_init is the NLL with nothing added; loss_final the NLL with delta added at the
    subject's last token of every template (measured here with a hook). Adding delta lowers it."""
    adapter, res = runs[model]
    for i, req in enumerate(reqs):
        with torch.no_grad():
            before = target_nll(adapter, req, TEMPLATES, LAYER)
            after = target_nll(adapter, req, TEMPLATES, LAYER, res.delta["block"][i])
        assert abs(res.loss_init[i] - float(before)) < 1e-4, req.subject
        assert abs(res.loss_final[i] - float(after)) < 1e-4, req.subject
        assert float(after) < float(before) - 0.1, req.subject


# --- (b) the norm clamp ---------------------------------------------------------------------


def test_clamp_bounds_every_delta_relative_to_its_own_h_init(gpt2, reqs, base_run):
    clamp = 0.01
    tight = optimise_targets(gpt2, reqs, TEMPLATES, LAYER, replace(BASE, clamp=clamp, lr=2.0, steps=3))
    bound = clamp * tight.h_init["block"].norm(dim=1)
    assert (tight.delta["block"].norm(dim=1) <= bound + 1e-5).all()
    assert (tight.delta["block"].norm(dim=1) > 0.5 * bound).all()  # it really pushed against the clamp
    loose = base_run.delta["block"].norm(dim=1)  # clamp 4.0: effectively off
    assert (loose > clamp * base_run.h_init["block"].norm(dim=1)).any()


# --- (a) the KL term --------------------------------------------------------------------------


def test_kl_term_is_kl_of_now_from_initial_at_the_kl_prompt_subject(gpt2, reqs, base_run):
    """_losses' KL, weighted by kl_factor as the loop does, equals kl_factor * sum p_now (log p_now -
    log p_init) on "{subject} is a" at the subject's last token, recomputed here; it is zero on the
    first step and has a gradient."""
    req = reqs[0]
    kl_factor = 0.3
    batch = _split(gpt2, _build_batch(gpt2, [req], TEMPLATES), at_subject=True)  # as the steps run it
    h0 = base_run.h_init["block"][0]
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(h0.shape, generator=g)
    vec = (0.5 * h0.norm() * vec / vec.norm()).requires_grad_(True)
    zero = torch.zeros(1, h0.numel())
    with gpt2.inject(f"block.{LAYER}", zero, batch.rows, batch.lookup):
        _, logp_init, kl_first, _ = _losses(gpt2, batch, 1, None)
    assert torch.equal(kl_first, torch.zeros(1))
    with gpt2.inject(f"block.{LAYER}", vec[None], batch.rows, batch.lookup):
        nll, _, kl, _ = _losses(gpt2, batch, 1, logp_init.detach())
        kl = kl_factor * kl

    ids = gpt2.tok(KL_PROMPT.replace("{}", req.subject, 1))["input_ids"]
    pos = last_subject_token(gpt2.tok, KL_PROMPT, req.subject)
    with torch.no_grad():
        lp0 = torch.log_softmax(_logits(gpt2, ids)[pos], -1)
        lp1 = torch.log_softmax(_logits(gpt2, ids, LAYER, vec.detach(), pos)[pos], -1)
    expected = 0.3 * (lp1.exp() * (lp1 - lp0)).sum()
    reverse = 0.3 * (lp0.exp() * (lp0 - lp1)).sum()
    assert float(expected) > 1e-3 and abs(float(expected - reverse)) > 1e-3  # the check discriminates
    assert abs(float(kl[0].detach()) - float(expected)) < 1e-5 * max(1.0, float(expected))
    with torch.no_grad():
        assert abs(float(nll[0]) - float(target_nll(gpt2, req, TEMPLATES, LAYER, vec.detach()))) < 1e-4
    (grad,) = torch.autograd.grad(kl.sum(), vec)
    assert grad.norm() > 1e-6


def test_kl_factor_changes_the_optimised_vector(gpt2, reqs, base_run):
    no_kl = optimise_targets(gpt2, reqs, TEMPLATES, LAYER, replace(BASE, kl_factor=0.0))
    assert not torch.allclose(no_kl.delta["block"], base_run.delta["block"], atol=1e-4)


# --- (c) the weight decay term ------------------------------------------------------------------


def test_weight_decay_changes_the_vector_and_stronger_decay_shrinks_it(gpt2, reqs, base_run):
    none = optimise_targets(gpt2, reqs, TEMPLATES, LAYER, replace(BASE, weight_decay=0.0))
    strong = optimise_targets(gpt2, reqs, TEMPLATES, LAYER, replace(BASE, weight_decay=200.0))
    assert not torch.allclose(none.delta["block"], base_run.delta["block"], atol=1e-4)
    assert (strong.delta["block"].norm(dim=1) < none.delta["block"].norm(dim=1)).all()


# --- (e) early stop ----------------------------------------------------------------------------


def test_request_starting_below_early_stop_loss_takes_no_step(gpt2, reqs):
    """The threshold sits between two requests' initial NLLs (measured here): only the
    request above it moves."""
    with torch.no_grad():
        start = [float(target_nll(gpt2, r, TEMPLATES, LAYER)) for r in reqs[:2]]
    low, high = sorted(range(2), key=lambda i: start[i])
    assert start[high] - start[low] > 0.2
    res = optimise_targets(gpt2, reqs[:2], TEMPLATES, LAYER, replace(BASE, steps=4, early_stop_loss=sum(start) / 2))
    assert res.steps[low] == 0
    assert torch.equal(res.delta["block"][low], torch.zeros_like(res.delta["block"][low]))
    assert res.steps[high] > 0 and res.delta["block"][high].norm() > 0


# --- collect_keys and values_at_subject (keys.py) ---------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_keys_average_within_groups_then_across(load_tiny, requests10, model):
    """k = 1/2 k(plain) + 1/2 mean(prefixed), the rewrite module's input at the subject's last
    token read by a hook on each unpadded sentence; a flat mean over all four differs."""
    adapter = load_tiny(model)
    groups = [["{}"], ["A. {}", "B b. {}", "C c c. {}"]]
    reqs = requests10[:2]
    layers = [1, 3]
    K = collect_keys(adapter, reqs, groups, layers)
    for layer in layers:
        assert K[layer].shape == (adapter.key_size(layer), len(reqs))
        for r, req in enumerate(reqs):
            per_group, flat = [], []
            for group in groups:
                vecs = []
                for template in group:
                    text_template = template.replace("{}", req.prompt, 1)
                    ids = adapter.tok(text_template.replace("{}", req.subject, 1))["input_ids"]
                    vecs.append(
                        rewrite_inputs(adapter, ids, layer)[last_subject_token(adapter.tok, text_template, req.subject)]
                    )
                per_group.append(torch.stack(vecs).mean(0))
                flat += vecs
            expected = torch.stack(per_group).mean(0)
            assert (expected - torch.stack(flat).mean(0)).norm() > 1e-3 * expected.norm()
            assert torch.allclose(K[layer][:, r], expected, atol=1e-5), (layer, req.subject)


def test_values_at_subject_are_block_and_mlp_outputs(load_tiny, requests10):
    adapter = load_tiny("tiny-llama")
    reqs = requests10[:3]
    block = values_at_subject(adapter, reqs, LAYER, "block")
    mlp = values_at_subject(adapter, reqs, LAYER, "mlp")
    for i, req in enumerate(reqs):
        ids = adapter.tok(req.rewrite_prompt)["input_ids"]
        pos = last_subject_token(adapter.tok, req.prompt, req.subject)
        got = {}

        def hook(module, args, output, got=got):
            got["y"] = output

        handle = adapter.rewrite_module(LAYER).register_forward_hook(hook)
        try:
            with torch.no_grad():
                states = adapter.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        assert torch.allclose(block[:, i], states[LAYER + 1][0, pos], atol=1e-5)
        assert torch.allclose(mlp[:, i], got["y"][0, pos], atol=1e-5)


# --- collect_second_moments (covariance.py) --------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_second_moments_are_the_mean_outer_product_over_real_tokens(load_tiny, model):
    """C = (1/N) sum_t k_t k_t^T over the tokens of each text, read unpadded here; the texts
    have different lengths, so a batch that counted pad rows would differ."""
    adapter = load_tiny(model)
    docs = [
        "The river runs past the old mill and under two bridges.",
        "Cats sleep.",
        "A town of stone houses, a church and a market square.",
    ]
    layers = [1, 4]
    moments, n = collect_second_moments(adapter, docs, layers, StatsConfig(samples=10, max_length=64))
    encoded = [adapter.tok(d)["input_ids"] for d in docs]
    assert len({len(e) for e in encoded}) == 3 and max(len(e) for e in encoded) < 64
    assert n == sum(len(e) for e in encoded)
    for layer in layers:
        rows = torch.cat([rewrite_inputs(adapter, ids, layer) for ids in encoded]).double()
        expected = rows.T @ rows / rows.shape[0]
        assert moments[layer].dtype == torch.float64
        assert (moments[layer] - expected).norm() / expected.norm() < 1e-5, layer


# --- PMET's adaptive NLL factor -------------------------------------------------------------


def test_adaptive_nll_stops_a_target_that_is_already_the_argmax(gpt2, requests10):
    """PMET's rule: a request whose target is already the argmax at every scored position
    stops once KL(p_now || p_init) < 0.01, which on the first step (KL = 0) means at once,
    although its NLL is far above the loss threshold; without the rule it takes steps.
    The targets here are the model's own greedy next tokens, found from its logits."""
    tok = gpt2.tok
    chosen = []
    for req in requests10:
        ids = tok(req.prompt.replace("{}", req.subject, 1))["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(gpt2.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
        token = int(logprobs.argmax())
        word = tok.decode([token]).strip()
        if tok(" " + word, add_special_tokens=False)["input_ids"] == [token] and -float(logprobs[token]) > 0.1:
            chosen.append(replace(req, target_new=word))
    assert len(chosen) >= 3  # the check has cases
    settings = replace(BASE, early_stop_loss=0.05)
    plain = optimise_targets(gpt2, chosen, ["{}"], LAYER, settings)
    adaptive = optimise_targets(gpt2, chosen, ["{}"], LAYER, replace(settings, adaptive_nll=True))
    assert all(s > 0 for s in plain.steps) and all(l > 0.1 for l in plain.loss_init)
    assert adaptive.steps == [0] * len(chosen)
    assert torch.equal(adaptive.delta["block"], torch.zeros_like(adaptive.delta["block"]))


def test_pmet_runs_with_the_adaptive_rule_by_default_and_it_can_be_switched_off():
    from blue_cli.config.overrides import compose_config
    from blue_cli.editing.session import target_settings

    for method in ("pmet", "pmet_seq"):
        assert target_settings(compose_config([f"method={method}"]).method.target).adaptive_nll
        off = compose_config([f"method={method}", "method.target.adaptive_nll=false"])
        assert not target_settings(off.method.target).adaptive_nll
    assert not target_settings(compose_config(["method=memit"]).method.target).adaptive_nll


def _reference_pmet_rule_loop(
    adapter, req: EditRequest, layer: int, settings: TargetConfig, rule: bool = True
) -> torch.Tensor:
    """One request, template "{}": the reference PMET loop's order written out with plain
    forwards (a block-output vector here, so only the rule differs from MEMIT's loop): loss with
    this step's NLL weight; stop below the loss threshold; then, if the target is the argmax at
    every scored position, weight 0.1 for the next step and stop once KL < 0.01, else weight 1;
    stop at the last step; else an Adam step and the norm clamp. Returns delta (d)."""
    tok = adapter.tok
    target = tok(" " + req.target_new, add_special_tokens=False)["input_ids"]
    text = req.prompt
    prompt = tok(text.replace("{}", req.subject, 1))["input_ids"]
    pos = last_subject_token(tok, text, req.subject)
    kl_ids = tok(KL_PROMPT.replace("{}", req.subject, 1))["input_ids"]
    kl_pos = last_subject_token(tok, KL_PROMPT, req.subject)
    with torch.no_grad():
        out = adapter.model(input_ids=torch.tensor([prompt]), output_hidden_states=True)
    h_init = out.hidden_states[layer + 1][0, pos].float()
    delta = torch.zeros_like(h_init, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings.lr)
    factor, init = 1.0, None
    for it in range(settings.steps):
        logp = torch.log_softmax(_logits(adapter, prompt + target[:-1], layer, delta, pos), dim=-1)
        rows = [len(prompt) - 1 + j for j in range(len(target))]
        nll = -torch.stack([logp[r, t] for r, t in zip(rows, target)]).mean()
        at_max = all(int(logp[r].argmax()) == t for r, t in zip(rows, target))
        kl_logp = torch.log_softmax(_logits(adapter, kl_ids, layer, delta, kl_pos)[kl_pos], dim=-1)
        init = kl_logp.detach() if init is None else init
        kl = (kl_logp.exp() * (kl_logp - init)).sum()
        loss = factor * nll + settings.kl_factor * kl + settings.weight_decay * delta.norm() / h_init.norm() ** 2
        if loss < settings.early_stop_loss:
            break
        if rule and at_max:
            factor = 0.1
            if kl < 0.01:
                break
        else:
            factor = 1.0
        if it == settings.steps - 1:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            limit = settings.clamp * h_init.norm()
            if delta.norm() > limit:
                delta.mul_(limit / delta.norm())
    return delta.detach()


def test_adaptive_nll_matches_the_reference_loop_written_out(gpt2, requests10):
    """A request (CounterFact case 2 of the bundled sample) whose target becomes the argmax
    mid-way on tiny-gpt2, so the 0.1 weight changes the result: blue's loop with the rule gives
    the loop written out here; without the rule it ends elsewhere."""
    req = requests10[2]
    settings = replace(BASE, steps=10, early_stop_loss=0.05, adaptive_nll=True)
    expected = _reference_pmet_rule_loop(gpt2, req, LAYER, settings)
    got = optimise_targets(gpt2, [req], ["{}"], LAYER, settings).delta["block"][0]
    plain = optimise_targets(gpt2, [req], ["{}"], LAYER, replace(settings, adaptive_nll=False)).delta["block"][0]
    assert (got - expected).norm() < 1e-4 * expected.norm()
    assert (plain - expected).norm() > 0.01 * expected.norm()  # the rule really acted: 100x the agreement
    without = _reference_pmet_rule_loop(gpt2, req, LAYER, settings, rule=False)
    assert (plain - without).norm() < 1e-4 * without.norm()  # and it is the only difference
