"""The run's checkpoint: one file, swapped in with one rename, so a kill never splits it.

It holds what every finished batch asked each layer to write, the residual R (d x n)
of each closed-form write in order, not the weights. A resume reloads the base model
and replays the batches through the strategy's own write path: keys collected on the
replayed weights, the same solves, RECT's revision, C_prev's keys. Only target
optimisation, the expensive part, is skipped. On the same device and libraries this
gives the same weights bit for bit; a fingerprint of every written matrix's change
after each batch is checked to prove it.

Why not the weights: under ``spread`` on Llama3-8B the five written matrices are
1.17 GB in float32 and C_prev's keys another 0.57 GB for 2000 edits, rewritten after
every batch; the residuals of those 2000 edits are 0.16 GB (4096 x 100 float32 per
write), and C_prev needs nothing stored because its keys are recollected.
The metadata holds the number of finished batches, the config key, the batch rows,
the written layers per batch, the fingerprints, and whether the method's final
restraint (PRUNE) was applied. ``batches.jsonl`` is derived from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from blue_cli.cache import atomic_path
from blue_cli.datasets.records import EditRequest
from blue_cli.errors import ConfigError, NumericalError
from blue_cli.runs import files as results

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "replay-1"
# A replayed change whose norm differs by more than this (relative) is not the run's:
# the base model, the statistics or the code changed. Below it, a different device or
# library (float rounding) is only reported.
DIVERGED = 1e-3


def read_metadata(run_dir: Path) -> dict[str, str] | None:
    """The checkpoint's metadata, or None when the run folder has no checkpoint."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def saved_batches(run_dir: Path) -> tuple[int, int]:
    """(finished batches, batches in the run) of a run folder's checkpoint; (0, 0) without one."""
    try:
        meta = read_metadata(run_dir) or {}
        return int(meta.get("batches_done", 0)), int(meta.get("batches_total", meta.get("batches_done", 0)))
    except Exception:  # a damaged checkpoint: nothing to count (resuming reports it)
        return 0, 0


class Checkpoint:
    """Save after each finished batch; load (replay) to resume a killed run of the same config."""

    def __init__(self, run_dir: Path, config_key: str | None):
        self.run_dir = Path(run_dir)
        self.config_key = config_key
        self.finish_info: dict[str, float] = {}
        # sha256 of cases_pre.jsonl as the run wrote it: a resume reuses only that file.
        self.pre_cases_digest: str | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save(
        self,
        session,
        batch_rows: list[dict],
        *,
        finished: bool = False,
        info: dict[str, float] | None = None,
        total: int | None = None,
    ) -> None:
        """Write every finished batch of ``session`` (an EditSession) and its rows
        (``total``: the run's number of batches, for messages about an unfinished run)."""
        tensors = {
            f"residual.{b}.{i}": residual.contiguous()
            for b, entry in enumerate(session.log)
            for i, (_, residual) in enumerate(entry.writes)
        }
        metadata = {
            "format": FORMAT,
            "batches_done": str(len(session.log)),
            "batches_total": str(total if total is not None else len(session.log)),
            "config_key": self.config_key or "",
            "finished": json.dumps(finished),
            "finish_info": json.dumps(info or {}),
            "batches": json.dumps(batch_rows),
            "writes": json.dumps([[layer for layer, _ in entry.writes] for entry in session.log]),
            "fingerprints": json.dumps([{str(l): v for l, v in entry.fingerprint.items()} for entry in session.log]),
            "pre_cases_sha256": self.pre_cases_digest or "",
            # Norm-Anchor Scaling's reference norms, measured on the original model (editing/anchoring.py)
            "norm_anchor": json.dumps({str(l): v for l, v in getattr(session, "norm_reference", {}).items()}),
        }
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        results.write_jsonl(self.run_dir, results.BATCHES, batch_rows)

    def check(self) -> dict[str, str] | None:
        """Refuse, before anything is written, a checkpoint of another config or format."""
        meta = read_metadata(self.run_dir)
        if meta is None:
            return None
        if meta.get("format") != FORMAT:
            raise ConfigError(
                f"'{self.path}' was written by an older blue (whole matrices, format "
                f"{meta.get('format', 'none')!r}; this one reads {FORMAT!r}): start the run over with resume=false"
            )
        if self.config_key is not None and meta.get("config_key") != self.config_key:
            raise ConfigError(
                f"'{self.run_dir}' holds a checkpoint of a different config "
                "(use a new hydra.run.dir, or resume=false to start this folder over)"
            )
        return meta

    def load(
        self,
        session,
        batches: Sequence[Sequence[EditRequest]],
        progress=None,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[list[dict], bool]:
        """Replay the finished batches into ``session``; returns (their rows, finished).

        ``on_batch(done)`` is called before the first replayed batch (0, the base model) and
        after each (the runner redoes there what a kill lost: evaluation points). A finished
        run also gets the method's final view (PRUNE) applied again.
        """
        meta = self.check()
        if meta is None or int(meta.get("batches_done", 0)) == 0:
            return [], False
        self.pre_cases_digest = meta.get("pre_cases_sha256") or None
        if on_batch is not None:
            on_batch(0)
        with safe_open(str(self.path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        done = int(meta["batches_done"])
        rows = json.loads(meta["batches"])
        layers = json.loads(meta["writes"])
        prints = json.loads(meta["fingerprints"])
        if done > len(batches):
            raise ConfigError(f"'{self.path}' holds {done} batches but the run has only {len(batches)}")
        session.restore_norm_reference(json.loads(meta.get("norm_anchor") or "{}"))
        log.info("replaying %d finished batches", done)
        inexact = 0.0
        track = (
            progress.track("replaying finished batches", done)
            if progress is not None
            else nullcontext(lambda *a, **k: None)
        )
        with track as update:
            for b in range(done):
                _check_cases(b, rows[b], batches[b])
                writes = [(layer, tensors[f"residual.{b}.{i}"]) for i, layer in enumerate(layers[b])]
                try:
                    session.replay_batch(batches[b], writes)
                except NumericalError as exc:
                    raise ConfigError(f"replaying batch {b} of '{self.path}' failed: {exc}") from None
                inexact = max(inexact, _compare(b, prints[b], session.log[-1].fingerprint, self.path))
                update(b + 1)
                if on_batch is not None:
                    on_batch(b + 1)
        if inexact:
            log.warning(
                "the replay matches the run only to %.1e relative, not bit for bit "
                "(another device, thread count or library version)",
                inexact,
            )
        finished = json.loads(meta.get("finished", "false"))
        self.finish_info = json.loads(meta.get("finish_info", "{}"))
        if finished:
            session.apply_final_weights()
        results.write_jsonl(self.run_dir, results.BATCHES, rows)
        log.info("resuming after %d finished batches", done)
        return rows, finished


def _check_cases(b: int, row: dict, batch: Sequence[EditRequest]) -> None:
    ids = [r.case_id for r in batch]
    if row.get("case_ids") != ids:
        raise ConfigError(
            f"checkpoint batch {b} edited cases {row.get('case_ids')} but the dataset now gives {ids} "
            "(the data changed since the run: resume=false to start over)"
        )


def _compare(b: int, recorded: dict[str, list[float]], replayed: dict[int, list[float]], path: Path) -> float:
    """The largest relative difference of the change's norm; raises past ``DIVERGED``."""
    worst = 0.0
    for layer, values in replayed.items():
        want = recorded[str(layer)]
        if want == values:
            continue
        rel = abs(values[0] - want[0]) / max(abs(want[0]), 1e-30)
        if rel > DIVERGED:
            raise ConfigError(
                f"replaying '{path}' diverged at batch {b}, layer {layer}: change norm {values[0]:.6g} "
                f"vs {want[0]:.6g} recorded (the base model or the statistics changed: resume=false to start over)"
            )
        worst = max(worst, rel, 1e-16)
    return worst


def fingerprint(adapter, originals: dict[int, torch.Tensor]) -> dict[int, list[float]]:
    """Per written layer: [||W - W0||_F, sum(W - W0)] in float64, to check a replay."""
    out = {}
    for layer, W0 in originals.items():
        W = adapter.rewrite_weight(layer).detach()
        change = (W - W0.to(W.device)).double()
        out[layer] = [float(change.norm()), float(change.sum())]
    return out
