"""The compute plan's FLOP counts against torch's own FLOP counter on one real batch of
tiny-llama (CPU): target optimisation and key collection, within 25%."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from blue_cli.config.overrides import compose_config
from blue_cli.datasets.counterfact.records import load_counterfact
from blue_cli.editing.context import context_templates
from blue_cli.editing.keys import CHUNK, collect_keys, key_sentences
from blue_cli.editing.session import target_settings
from blue_cli.editing.targets import _build_batch, _split, optimise_targets
from blue_cli.tools.compute_plan import key_flops, target_flops
from blue_cli.tools.memory_plan import model_shape, run_facts

TOLERANCE = 0.25


def _counted(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _close(planned: float, measured: float) -> bool:
    return abs(planned - measured) <= TOLERANCE * measured


def test_target_and_key_flops_match_torchs_count(fresh_tiny):
    cfg_overrides = [
        "model=tiny-llama",
        "method=memit",
        "strategy=blue",
        "batch_size=8",
        "num_edits=8",
        "device=cpu",
        "method.target.steps=3",
        "method.target.early_stop_loss=0",
    ]
    cfg = compose_config(cfg_overrides)
    adapter = fresh_tiny("tiny-llama")
    shape, facts = model_shape(cfg.model), run_facts(cfg)
    requests = load_counterfact("bundled", limit=8)
    groups = context_templates(adapter, n_prefixes=cfg.context.n_prefixes, n_tokens=cfg.context.n_tokens, seed=0)
    templates = [t for g in groups for t in g]
    layer = facts.target_layers[0]

    batch = _build_batch(adapter, requests, templates)
    seq_len = batch.inputs["input_ids"].shape[1]
    target_mean = len(batch.nll_row) / (len(requests) * len(templates))
    split = _split(adapter, batch, at_subject=True).inputs  # the run and cached positions the steps see
    run_len, past_len = split.input_ids.shape[1], split.cached
    result = {}
    measured = _counted(
        lambda: result.update(
            r=optimise_targets(adapter, requests, templates, layer, target_settings(cfg.method.target), ("block",))
        )
    )
    assert max(result["r"].steps) == 2  # no early stop: 3 forwards, a backward after the first 2
    lengths = dict(seq_len=seq_len, target_mean=target_mean, run_len=run_len, past_len=past_len)
    planned = target_flops(shape, facts, layer, 3, **lengths)
    print(f"planned/measured: targets {planned / measured:.3f}", end=", ")
    assert _close(planned, measured), (planned, measured)
    # the reference's schedule recomputes the frozen prefix every step: strictly more
    assert target_flops(shape, facts, layer, 3, reuse_prefix=False, **lengths) > planned

    # unsplit (every step runs every position): counted by torch again
    unsplit_cfg = compose_config([*cfg_overrides, "method.target.reuse_past=false"])
    unsplit = run_facts(unsplit_cfg)
    measured_unsplit = _counted(
        lambda: optimise_targets(
            adapter, requests, templates, layer, target_settings(unsplit_cfg.method.target), ("block",)
        )
    )
    planned_unsplit = target_flops(shape, unsplit, layer, 3, seq_len=seq_len, target_mean=target_mean)
    assert _close(planned_unsplit, measured_unsplit), (planned_unsplit, measured_unsplit)
    assert measured < 0.6 * measured_unsplit  # the split saves most of the steps' work

    seqs, _, _ = key_sentences(adapter.tok, requests, groups)
    padded = sum(len(seqs[i : i + CHUNK]) * max(map(len, seqs[i : i + CHUNK])) for i in range(0, len(seqs), CHUNK))
    key_len = padded / len(seqs)
    measured = _counted(lambda: collect_keys(adapter, requests, groups, [layer]))
    planned = key_flops(shape, facts, layer, seq_len=round(key_len))
    print(f"keys {planned / measured:.3f}")
    assert _close(planned, measured), (planned, measured)
    assert torch.is_grad_enabled()
