"""``blue analyze`` on tiny-gpt2: the paper's residual analysis checked against numbers
recomputed here (the split, norms, cosines and target probabilities by hand)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from typer.testing import CliRunner

from blue_cli.cli.commands import app
from blue_cli.config.overrides import compose_config
from blue_cli.config.registry import dataset_class, method_class
from blue_cli.editing import session
from blue_cli.editing.keys import collect_keys, values_at_subject
from blue_cli.editing.statistics.store import CovarianceStore
from blue_cli.editing.strategies.base import EditContext
from blue_cli.editing.targets import optimise_targets
from blue_cli.reporting.residual_analysis import write_figures
from blue_cli.runs import runner
from blue_cli.tools.analysis import analyse_layers, own_residual_steps, run_analysis, write_analysis

FAST = [
    "model=tiny-gpt2",
    "method.target.steps=5",
    "stats.samples=40",
    "context.n_prefixes=2",
    "eval.wild=false",
    "eval.perplexity_tokens=0",
]
RECORDS = 4


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    cfg = compose_config(FAST)
    payload = run_analysis(cfg, RECORDS)
    out = tmp_path_factory.mktemp("analysis")
    write_analysis(payload, out)
    figures = write_figures(payload, out)
    return cfg, payload, out, figures


@pytest.fixture(scope="module")
def recomputed(analysed, load_tiny):
    """z at the last layer, h_L, and the directly optimised z_1 - h_1 at the first, on a separately loaded model."""
    cfg, payload, _, _ = analysed
    adapter = load_tiny("tiny-gpt2")
    requests = dataset_class("counterfact")(cfg.dataset, cfg.eval, seed=cfg.seed).load(RECORDS)
    assert [r.case_id for r in requests] == payload["case_ids"]
    templates = [t for group in payload["context_templates"] for t in group]
    settings = session.target_settings(cfg.method.target)
    first, last = payload["critical_layers"][0], payload["critical_layers"][-1]
    z_last = optimise_targets(adapter, requests, templates, last, settings).z("block")  # (n x d)
    h_last = values_at_subject(adapter, requests, last).T
    z_first = optimise_targets(adapter, requests, templates, first, settings).z("block")
    h_first = values_at_subject(adapter, requests, first).T
    return adapter, requests, z_last - h_last, z_first - h_first


def _layer(payload, layer):
    return next(r for r in payload["layers"] if r["layer"] == layer)


def test_at_the_last_layer_spreads_share_is_the_direct_residual(analysed, recomputed):
    _, payload, _, _ = analysed
    _, _, residual, _ = recomputed
    last = _layer(payload, payload["critical_layers"][-1])
    assert last["cosine"]["values"] == pytest.approx([1.0] * RECORDS, abs=1e-4)
    assert last["norm_ratio"]["values"] == pytest.approx([1.0] * RECORDS, abs=1e-4)
    assert last["share_norm"]["values"] == pytest.approx(residual.norm(dim=1).tolist(), rel=1e-4)
    assert payload["residual_norm"]["values"] == pytest.approx(residual.norm(dim=1).tolist(), rel=1e-4)


def test_at_the_first_layer_the_share_is_a_third_of_the_last_residual(analysed, recomputed):
    _, payload, _, _ = analysed
    _, _, residual, direct = recomputed
    n_layers = len(payload["critical_layers"])
    assert n_layers == 3
    first = _layer(payload, payload["critical_layers"][0])
    ratio = [(1 / n_layers) * float(residual[r].norm() / direct[r].norm()) for r in range(RECORDS)]
    assert first["norm_ratio"]["values"] == pytest.approx(ratio, rel=1e-4)
    cosine = F.cosine_similarity(residual, direct, dim=1).tolist()
    assert first["cosine"]["values"] == pytest.approx(cosine, abs=1e-4)
    assert first["direct_norm"]["values"] == pytest.approx(direct.norm(dim=1).tolist(), rel=1e-4)
    # A different layer asks for a different vector: the point of the analysis.
    assert first["cosine"]["mean"] < 0.99
    mean = sum(ratio) / RECORDS
    assert first["norm_ratio"]["mean"] == pytest.approx(mean, rel=1e-4)
    assert first["norm_ratio"]["std"] == pytest.approx(
        math.sqrt(sum((x - mean) ** 2 for x in ratio) / RECORDS), rel=1e-3, abs=1e-9
    )


def _logprob_by_hand(adapter, request, layer=None, vector=None) -> float:
    """Sum of log P(target tokens) from one unpadded HF forward, ``vector`` added to block
    ``layer``'s output at the subject's last token by a plain forward hook."""
    tok = adapter.tok
    prompt = tok(request.rewrite_prompt)["input_ids"]
    target = tok(" " + request.target_new, add_special_tokens=False)["input_ids"]
    position = len(tok(request.prompt[: request.prompt.index("{}")] + request.subject)["input_ids"]) - 1

    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, position] += vector.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = adapter.block(layer).register_forward_hook(add) if vector is not None else None
    try:
        with torch.no_grad():
            logits = adapter.model(torch.tensor([prompt + target])).logits[0].double()
    finally:
        if handle is not None:
            handle.remove()
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(target)], dim=-1)
    return float(logprobs[torch.arange(len(target)), torch.tensor(target)].sum())


def test_target_probabilities_match_a_forward_by_hand(analysed, recomputed):
    _, payload, _, _ = analysed
    adapter, requests, residual, direct = recomputed
    first, last = payload["critical_layers"][0], payload["critical_layers"][-1]
    n_layers = len(payload["critical_layers"])
    base = [_logprob_by_hand(adapter, r) for r in requests]
    assert payload["logprob_base"] == pytest.approx(base, abs=1e-3)
    assert payload["p_base"]["values"] == pytest.approx([math.exp(x) for x in base], rel=1e-3)
    with_direct = [_logprob_by_hand(adapter, r, first, direct[i]) for i, r in enumerate(requests)]
    assert _layer(payload, first)["logprob_direct"] == pytest.approx(with_direct, abs=1e-3)
    with_share = [_logprob_by_hand(adapter, r, first, residual[i] / n_layers) for i, r in enumerate(requests)]
    assert _layer(payload, first)["logprob_spread"] == pytest.approx(with_share, abs=1e-3)
    with_full = [_logprob_by_hand(adapter, r, last, residual[i]) for i, r in enumerate(requests)]
    assert _layer(payload, last)["logprob_direct"] == pytest.approx(with_full, abs=1e-3)
    assert _layer(payload, last)["logprob_spread"] == pytest.approx(with_full, abs=1e-3)


def test_the_direct_residual_gives_the_target_at_least_the_probability_of_spreads_share(analysed):
    """The paper's claim; on tiny-gpt2 (seed 0, 4 records) it holds at every layer."""
    _, payload, _, _ = analysed
    for row in payload["layers"]:
        assert row["p_direct"]["mean"] >= row["p_spread"]["mean"] - 1e-9, row["layer"]
        assert row["p_written_direct"]["mean"] >= row["p_written_spread"]["mean"] - 1e-9, row["layer"]
    # Adding the optimised vector raises P(target) above the model's own.
    assert all(row["p_direct"]["mean"] > payload["p_base"]["mean"] for row in payload["layers"])


def test_analysis_json_and_figures(analysed):
    _, _, out, figures = analysed
    data = json.loads((out / "analysis.json").read_text())
    assert [r["layer"] for r in data["layers"]] == [1, 2, 3]
    assert data["records"] == RECORDS and data["z_layer"] == 3 and data["run"] is None
    for row in data["layers"]:
        assert 0.0 <= row["key_fit_error_direct"] < 1.0
        assert len(row["p_written_direct"]["values"]) == RECORDS
    assert {f.name for f in figures} == {"residual_similarity.png", "target_probability.png"}
    for figure in figures:
        image = imread(figure)
        assert image.shape[0] > 300 and image.shape[1] > 600
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_the_analysis_leaves_the_weights_as_it_found_them(analysed, fresh_tiny):
    cfg, payload, _, _ = analysed
    adapter = fresh_tiny("tiny-gpt2")
    critical = [2, 3]
    before = {l: adapter.rewrite_weight(l).detach().clone() for l in critical}
    stats = CovarianceStore(adapter, session.stats_settings(cfg))
    stats.ensure(critical)
    method = method_class("memit")(cfg.method, critical)
    method.prepare(stats, adapter.device)
    requests = dataset_class("counterfact")(cfg.dataset, cfg.eval).load(2)
    ctx = EditContext(adapter, payload["context_templates"], session.target_settings(cfg.method.target))
    result = analyse_layers(method, ctx, requests, critical)
    for l in critical:
        assert torch.equal(adapter.rewrite_weight(l), before[l]), l
    # The written probabilities come from a real write: they differ from the unedited model's.
    assert result["layers"][-1]["logprob_written_direct"] != pytest.approx(result["logprob_base"], abs=1e-3)


def test_own_residual_steps_are_table_1s_protocol_recomputed_by_hand(analysed, fresh_tiny):
    """The paper's Table 1: every critical layer, in order, optimises its own target on the model
    with the earlier layers written (MEMIT's closed form of the full residual, by hand here), and
    the steps it takes are what the analysis reports; the weights are left as they were."""
    cfg, payload, _, _ = analysed
    cfg = compose_config([*FAST, "method.target.steps=12", "method.target.early_stop_loss=1.0"])
    critical = list(cfg.model.layers)
    requests = dataset_class("counterfact")(cfg.dataset, cfg.eval, seed=cfg.seed).load(RECORDS)
    groups = payload["context_templates"]
    settings = session.target_settings(cfg.method.target)

    adapter = fresh_tiny("tiny-gpt2")
    before = {l: adapter.rewrite_weight(l).detach().clone() for l in critical}
    stats = CovarianceStore(adapter, session.stats_settings(cfg))
    stats.ensure(critical)
    method = method_class("memit")(cfg.method, critical)
    method.prepare(stats, adapter.device)
    rows = own_residual_steps(method, EditContext(adapter, groups, settings), requests, critical)
    for l in critical:
        assert torch.equal(adapter.rewrite_weight(l), before[l]), l

    templates = [t for group in groups for t in group]
    unedited = optimise_targets(adapter, requests, templates, critical[-1], settings).steps
    by_hand = []
    for layer in critical:
        result = optimise_targets(adapter, requests, templates, layer, settings)
        by_hand.append(result.steps)
        R = (result.z("block") - values_at_subject(adapter, requests, layer).T).T.double()  # (d x n)
        K = collect_keys(adapter, requests, groups, [layer])[layer].double()  # (d_k x n)
        A = cfg.method.cov_weight * stats.get(layer).double() + K @ K.T
        adapter.add_to_rewrite(layer, (R @ K.T @ torch.linalg.inv(A)).float())
    assert [r["layer"] for r in rows] == critical
    assert [r["steps"]["values"] for r in rows] == [[float(s) for s in steps] for steps in by_hand]
    # the earlier writes matter: a later layer stops sooner than it would on the unedited model
    assert sum(by_hand[-1]) < sum(unedited)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config(
        [*FAST, "method=memit_seq", "strategy=spread", "num_edits=4", "batch_size=2", "eval.generation=false"]
    )
    runner.run_experiment(cfg, run_dir)
    return run_dir


def test_analyze_a_run_folder_from_the_cli(finished_run, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", "--run", str(finished_run), "--records", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "write_error" in result.output
    data = json.loads((out / "analysis.json").read_text())
    batches = [json.loads(line) for line in (finished_run / "batches.jsonl").read_text().splitlines()]
    assert len(batches) == 2 and all(len(b["target_steps"]) == 1 and len(b["key_fit_error"]) == 3 for b in batches)
    run = data["run_batches"]
    assert run["written_layers"] == [1, 2, 3] and run["batches"] == 2
    # spread optimises its target once, at the last critical layer
    assert [s["layer"] for s in run["target_steps"]] == [3]
    assert run["target_steps"][0]["mean"] == pytest.approx(sum(b["target_steps"][0] for b in batches) / 2)
    for i, fit in enumerate(run["key_fit_error"]):
        assert fit["mean"] == pytest.approx(sum(b["key_fit_error"][i] for b in batches) / 2)
    assert run["write_error"] == pytest.approx(sum(b["write_error"] for b in batches) / 2)
    # The run's edited weights are in place: P(target_new) without vectors is the run's post-edit value.
    cases = {c["case_id"]: c for c in map(json.loads, (finished_run / "cases.jsonl").read_text().splitlines())}
    assert data["logprob_base"] == pytest.approx(
        [cases[i]["rewrite_logprob_sum_new"] for i in data["case_ids"]], abs=1e-4
    )
    assert data["context_templates"] == json.loads((finished_run / "context_templates.json").read_text())
    for name in ("residual_similarity.png", "target_probability.png", "run_layers.png"):
        assert imread(out / name).shape[0] > 300, name


def test_analyze_rejects_bad_input(finished_run, tmp_path):
    cli = CliRunner()
    result = cli.invoke(app, ["analyze", "--run", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = cli.invoke(app, ["analyze", "--run", str(finished_run), "method.target.stepz=3"])
    assert result.exit_code == 2 and "stepz" in result.output and "steps" in result.output
    result = cli.invoke(app, ["analyze", "--run", str(finished_run), "model=tiny-llama"])
    assert result.exit_code == 2 and "cannot change 'model'" in result.output
    # a setting that changes what the run's batches wrote cannot rebuild its weights
    result = cli.invoke(app, ["analyze", "--run", str(finished_run), "method.cov_weight=1"])
    assert result.exit_code == 2 and "diverged at batch 0" in result.output
    result = cli.invoke(app, ["analyze", "--records", "0", "model=tiny-gpt2"])
    assert result.exit_code == 2 and "--records" in result.output
