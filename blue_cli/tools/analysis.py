"""The BLUE paper's residual-distribution analysis (``blue analyze``).

The paper (Li et al. 2025, arXiv 2502.03748, sections 3-4) argues that ``spread``
hands each critical layer a share of the residual measured at the LAST layer, which
is not what that layer itself would need. For every critical layer l this module
measures, per request:

- spread's share for l: z optimised once at the last critical layer L, R = z - h_L,
  share_i = split_residual(R, len(layers) - i, method.residual_split), all on the
  model as given (no writes between layers, so every share is a fixed fraction of R);
- the residual optimised directly at l for the same request (z_l - h_l, what BLUE
  writes at a boundary layer);
- their cosine similarity and norm ratio ||share|| / ||direct||;
- P(target_new | rewrite prompt) with each vector added at l's write point at the
  subject's last token, and after the method's closed-form write at l alone with
  each of them as R (restored afterwards; a method's batch revision and final
  restraint, RECT and PRUNE, are not applied: this is the write itself).

With a run folder the model carries the run's edited weights and method state, and
the per-layer target-optimisation steps and key-fit errors of its batches are read
from its checkpoint (the rows ``batches.jsonl`` is derived from). ``own_residual_steps`` is
the paper's Table 1: the mean steps per critical layer when every layer, in increasing order,
optimises and writes its own residual. Pure orchestration: every vector, solve and score
comes from the editing and evaluation functions a run uses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from blue_cli.config.overrides import compose_config
from blue_cli.config.registry import dataset_class, strategy_class
from blue_cli.config.schema import check_run_config
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.diagnostics import new_target_logprobs, restored_weights
from blue_cli.editing.linalg import split_residual
from blue_cli.editing.methods.base import EditMethod
from blue_cli.editing.session import build_session, seed_everything
from blue_cli.editing.strategies.base import EditContext, Strategy
from blue_cli.errors import ConfigError, DataError
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import subject_last_index
from blue_cli.progress import NullProgress
from blue_cli.runs import files as results
from blue_cli.runs import replay
from blue_cli.runs.checkpoint import saved_rows
from blue_cli.runs.replay import replay_run
from blue_cli.runs.runner import load_adapter

log = logging.getLogger(__name__)

ANALYSIS = "analysis.json"


def summary_of(values: Sequence[float]) -> dict:
    """Mean and population standard deviation (0 for one value) of per-request numbers, and the numbers."""
    vals = [float(v) for v in values]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return {"mean": mean, "std": std, "values": vals}


def target_logprobs(
    adapter: ModelAdapter,
    requests: Sequence[EditRequest],
    point: str | None = None,
    vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """log P(target_new | rewrite prompt) per request, with ``vectors`` (n x d) added at
    ``point`` at each request's subject-last token (none: the model as it is)."""
    if vectors is None:
        return new_target_logprobs(adapter, requests)
    positions = [subject_last_index(adapter.tok, r.prompt, r.subject) for r in requests]
    with adapter.inject(point, vectors, list(range(len(requests))), positions):
        return new_target_logprobs(adapter, requests)


def written_logprobs(
    method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], layer: int, residual: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """log P(target_new) after the closed-form write of ``residual`` (d x n) at ``layer`` alone,
    and the write's key-fit error; the layer's weight is restored on the way out."""
    adapter = ctx.adapter
    with restored_weights(adapter, [layer]):
        write = Strategy.write_layer(method, ctx, requests, layer, residual)
        return new_target_logprobs(adapter, requests), write.key_fit_error


def _cosines(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Cosine between matching columns of two (d x n) matrices, float64 (NaN for a zero column)."""
    a64, b64 = a.double(), b.double()
    return ((a64 * b64).sum(0) / (a64.norm(dim=0) * b64.norm(dim=0))).tolist()


def analyse_layers(
    method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], critical: Sequence[int], progress=None
) -> dict:
    """Spread's share versus the directly optimised residual at every critical layer; see the module docstring.

    The model's weights are the same before and after. Probabilities are exp(summed
    log-probability of the target's tokens); log-probabilities are kept too.
    """
    progress = progress or NullProgress()
    adapter, point, last = ctx.adapter, method.write_point, critical[-1]
    base = target_logprobs(adapter, requests)
    layers = []
    with progress.track("residual analysis", len(critical)) as update:
        final = Strategy.compute_targets(method, ctx, requests, last)
        residual = final.z(point).T - Strategy.current_values(method, ctx, requests, last)  # (d x n): z - h_L
        for i, layer in enumerate(critical):
            share = split_residual(residual, len(critical) - i, method.residual_split)  # (d x n)
            # At L the direct optimisation is the same one spread starts from: reuse it.
            target = final if layer == last else Strategy.compute_targets(method, ctx, requests, layer)
            direct = target.z(point).T - Strategy.current_values(method, ctx, requests, layer)  # (d x n): z_l - h_l
            name = f"{point}.{layer}"
            lp_share = target_logprobs(adapter, requests, name, share.T)
            lp_direct = target_logprobs(adapter, requests, name, direct.T)
            lp_w_share, fit_share = written_logprobs(method, ctx, requests, layer, share)
            lp_w_direct, fit_direct = written_logprobs(method, ctx, requests, layer, direct)
            share_norm, direct_norm = share.double().norm(dim=0), direct.double().norm(dim=0)
            layers.append(
                {
                    "layer": layer,
                    "cosine": summary_of(_cosines(share, direct)),
                    "norm_ratio": summary_of((share_norm / direct_norm).tolist()),
                    "share_norm": summary_of(share_norm.tolist()),
                    "direct_norm": summary_of(direct_norm.tolist()),
                    "direct_steps": summary_of(target.steps),
                    "p_spread": summary_of(lp_share.exp().tolist()),
                    "p_direct": summary_of(lp_direct.exp().tolist()),
                    "p_written_spread": summary_of(lp_w_share.exp().tolist()),
                    "p_written_direct": summary_of(lp_w_direct.exp().tolist()),
                    "logprob_spread": lp_share.tolist(),
                    "logprob_direct": lp_direct.tolist(),
                    "logprob_written_spread": lp_w_share.tolist(),
                    "logprob_written_direct": lp_w_direct.tolist(),
                    "key_fit_error_spread": fit_share,
                    "key_fit_error_direct": fit_direct,
                }
            )
            update(i + 1)
    return {
        "z_layer": last,
        "write_point": point,
        "residual_split": method.residual_split,
        "residual_norm": summary_of(residual.double().norm(dim=0).tolist()),
        "final_steps": summary_of(final.steps),
        "p_base": summary_of(base.exp().tolist()),
        "logprob_base": base.tolist(),
        "layers": layers,
    }


def own_residual_steps(
    method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], critical: Sequence[int], progress=None
) -> list[dict]:
    """The BLUE paper's Table 1: target-optimisation steps per critical layer when every
    layer computes its own residual.

    Layers in increasing order; at each, the targets are optimised at that layer on the model
    with the earlier layers already written, and the layer is then written with its full
    residual z_l - h_l (no share), by the method's closed form. Early stop as configured
    (``method.target.early_stop_loss``, 0.05 as the paper). The weights are restored afterwards.
    """
    progress = progress or NullProgress()
    adapter, point = ctx.adapter, method.write_point
    rows = []
    with restored_weights(adapter, critical), progress.track("steps with own residuals", len(critical)) as update:
        for i, layer in enumerate(critical):
            target = Strategy.compute_targets(method, ctx, requests, layer)
            residual = target.z(point).T - Strategy.current_values(method, ctx, requests, layer)  # (d x n)
            Strategy.write_layer(method, ctx, requests, layer, residual)
            rows.append({"layer": layer, "steps": summary_of(target.steps)})
            update(i + 1)
    return rows


def batch_layer_statistics(rows: Sequence[dict], written: Sequence[int]) -> dict:
    """Per written layer, the mean (and std) over a run's batches of the target steps and key-fit error.

    ``target_steps`` has one entry per layer where a target was optimised: the last
    ``len(entries)`` written layers, in order (spread optimises once, at the last
    critical layer; blue at each written layer, after the earlier ones were updated).
    ``key_fit_error`` has one entry per written layer. Skipped (NaN) batches are left out.
    """
    edited = [r for r in rows if "skipped" not in r]
    if not edited:
        raise DataError("no edited batch in batches.jsonl (every batch was skipped, or the run wrote none)")
    steps: dict[int, list[float]] = {}
    fits: dict[int, list[float]] = {}
    for r in edited:
        entries, errors = list(r["target_steps"]), list(r["key_fit_error"])
        if len(errors) != len(written) or not 0 < len(entries) <= len(written):
            raise DataError(
                f"batch {r.get('batch')} of batches.jsonl has {len(entries)} target_steps and {len(errors)} "
                f"key_fit_error entries for written layers {list(written)}"
            )
        for layer, value in zip(written[len(written) - len(entries) :], entries):
            steps.setdefault(layer, []).append(value)
        for layer, value in zip(written, errors):
            fits.setdefault(layer, []).append(value)

    def pack(table: dict[int, list[float]]) -> list[dict]:
        return [
            {"layer": layer, **{k: v for k, v in summary_of(vals).items() if k != "values"}}
            for layer, vals in sorted(table.items())
        ]

    return {
        "batches": len(edited),
        "written_layers": list(written),
        "target_steps": pack(steps),
        "key_fit_error": pack(fits),
        "write_error": sum(r["write_error"] for r in edited) / len(edited),
    }


def run_config_with(run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """A run folder's config.yaml with ``key=value`` overrides of existing settings (the
    model and config groups are fixed: the checkpoint belongs to them)."""
    cfg = replay.read_run_config(run_dir)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key.startswith(("+", "~")):
            raise ConfigError(f"override '{item}' with --run must be key=value on an existing setting")
        node = OmegaConf.select(cfg, key, default=KeyError)
        if node is KeyError:
            parent = key.rpartition(".")[0]
            parent_node = OmegaConf.select(cfg, parent) if parent else cfg
            valid = ", ".join(parent_node.keys()) if isinstance(parent_node, DictConfig) else "none"
            raise ConfigError(
                f"unknown config key '{key}' in the run's config "
                f"(valid keys{' under ' + parent if parent else ''}: {valid})"
            )
        if isinstance(node, DictConfig):
            raise ConfigError(f"cannot change '{key}' with --run: the run's checkpoint belongs to its {key}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    check_run_config(cfg)
    return cfg


def run_analysis(cfg: DictConfig, records: int, run_dir: Path | None = None, progress=None) -> dict:
    """Load the model (with a run's edited weights), ``records`` requests of the configured
    dataset, statistics and the method, and analyse every critical layer; returns the payload
    of ``analysis.json``."""
    if records < 1:
        raise ConfigError(f"--records must be >= 1, got {records}")
    progress = progress or NullProgress()
    requests = dataset_class(cfg.dataset.name)(cfg.dataset, cfg.eval, seed=cfg.seed).load(records)
    # the batch rows from the checkpoint (batches.jsonl is derived from it), before the work
    batch_rows = saved_rows(run_dir) if run_dir is not None else []
    replayed = replay_run(run_dir, progress, cfg) if run_dir is not None else None
    adapter = replayed[1] if replayed else load_adapter(cfg)
    critical = list(cfg.model.layers)
    # every critical layer computes its own residual: a stream that writes all of them,
    # continuing a replayed run's state (statistics, context templates, C_prev)
    previous = replayed[2] if replayed else None
    session = build_session(cfg, adapter, progress=progress, layers=critical, previous=previous)
    method, ctx, groups = session.method, session.ctx, session.groups
    seed_everything(cfg.seed)
    payload = {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "records": len(requests),
        "case_ids": [r.case_id for r in requests],
        "critical_layers": critical,
        "target_steps_limit": cfg.method.target.steps,
        "context_templates": groups,
        "run": str(run_dir) if run_dir is not None else None,
        **analyse_layers(method, ctx, requests, critical, progress),
        "own_residual_steps": own_residual_steps(method, ctx, requests, critical, progress),
    }
    if run_dir is not None:
        written = strategy_class(cfg.strategy.name)(cfg.strategy).written_layers(critical)
        payload["strategy"] = cfg.strategy.name
        payload["run_batches"] = batch_layer_statistics(batch_rows, written)
    return payload


def analysis_config(overrides: Sequence[str], run_dir: Path | None = None) -> DictConfig:
    """The composed config (``blue edit``'s overrides), or a run folder's own."""
    return compose_config(list(overrides)) if run_dir is None else run_config_with(run_dir, overrides)


def write_analysis(payload: dict, out_dir: Path) -> Path:
    """``analysis.json`` in ``out_dir`` (temp file and rename; NaN written as null)."""
    return results.write_json(Path(out_dir), ANALYSIS, payload)
