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
from blue_cli.editing.targets import _build_batch, optimise_targets
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
    cfg = compose_config(
        [
            "model=tiny-llama",
            "method=memit",
            "strategy=blue",
            "batch_size=8",
            "num_edits=8",
            "device=cpu",
            "method.target.steps=3",
            "method.target.early_stop_loss=0",
        ]
    )
    adapter = fresh_tiny("tiny-llama")
    shape, facts = model_shape(cfg.model), run_facts(cfg)
    requests = load_counterfact("bundled", limit=8)
    groups = context_templates(adapter, n_prefixes=cfg.context.n_prefixes, n_tokens=cfg.context.n_tokens, seed=0)
    templates = [t for g in groups for t in g]
    layer = facts.target_layers[0]

    batch = _build_batch(adapter, requests, templates)
    seq_len = batch.inputs["input_ids"].shape[1]
    target_mean = len(batch.nll_row) / (len(requests) * len(templates))
    result = {}
    measured = _counted(
        lambda: result.update(
            r=optimise_targets(adapter, requests, templates, layer, target_settings(cfg.method.target), ("block",))
        )
    )
    assert max(result["r"].steps) == 2  # no early stop: 3 forwards, a backward after the first 2
    planned = target_flops(shape, facts, layer, 3, seq_len=seq_len, target_mean=target_mean)
    print(f"planned/measured: targets {planned / measured:.3f}", end=", ")
    assert _close(planned, measured), (planned, measured)
    # the reference's schedule recomputes the frozen prefix every step: strictly more
    assert target_flops(shape, facts, layer, 3, reuse_prefix=False, seq_len=seq_len, target_mean=target_mean) > planned

    seqs, _, _ = key_sentences(adapter.tok, requests, groups)
    padded = sum(len(seqs[i : i + CHUNK]) * max(map(len, seqs[i : i + CHUNK])) for i in range(0, len(seqs), CHUNK))
    key_len = padded / len(seqs)
    measured = _counted(lambda: collect_keys(adapter, requests, groups, [layer]))
    planned = key_flops(shape, facts, layer, seq_len=round(key_len))
    print(f"keys {planned / measured:.3f}")
    assert _close(planned, measured), (planned, measured)
    assert torch.is_grad_enabled()
