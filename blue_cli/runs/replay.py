"""A finished or killed run's edited model, rebuilt from its folder: the base model,
the run's config and cached statistics, and the checkpoint's batches replayed.

The checkpoint keeps residuals, not weights (checkpoint.py); export and analysis
get the weights here, through the same replay a resume uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from blue_cli.config.registry import dataset_class
from blue_cli.editing.session import EditSession, build_session
from blue_cli.errors import DataError
from blue_cli.models.adapter import ModelAdapter
from blue_cli.runs import files as results
from blue_cli.runs.checkpoint import CHECKPOINT, Checkpoint, read_metadata


def read_run_config(run_dir: Path) -> DictConfig:
    """The run folder's own config.yaml (a damaged one: one line naming it)."""
    path = Path(run_dir) / results.CONFIG
    if not path.is_file():
        raise DataError(f"'{run_dir}' has no {results.CONFIG} (give a run folder written by blue edit)")
    return results.read_config(path)


def replay_run(
    run_dir: Path, progress=None, cfg: DictConfig | None = None
) -> tuple[DictConfig, ModelAdapter, EditSession]:
    """(the config, the model with the run's edited weights, the session with C_prev).

    ``cfg``: the run's config with changes (``blue analyze --run ... device=cpu``); one
    that changes what the batches wrote (another lambda, other statistics) is refused
    by the checkpoint's fingerprints, one that only changes rounding is reported."""
    from blue_cli.runs.runner import batches_of, load_adapter

    run_dir = Path(run_dir)
    if read_metadata(run_dir) is None:
        raise DataError(f"no {CHECKPOINT} in '{run_dir}' (the run wrote no batch yet)")
    cfg = cfg if cfg is not None else read_run_config(run_dir)
    requests = dataset_class(cfg.dataset.name)(cfg.dataset, cfg.eval, seed=cfg.seed).load(cfg.num_edits)
    adapter = load_adapter(cfg)
    session = build_session(cfg, adapter, progress=progress, compute_stats=False)
    Checkpoint(run_dir, None).load(session, batches_of(requests, cfg.batch_size), progress, write_rows=False)
    return cfg, adapter, session


def edited_weights(run_dir: Path, progress=None) -> dict[int, torch.Tensor]:
    """The run's written matrices as it left them ({layer: (d_out x d_in) float32, CPU})."""
    _, adapter, session = replay_run(run_dir, progress)
    return {l: adapter.rewrite_weight(l).detach().to("cpu", torch.float32).clone() for l in session.written}
