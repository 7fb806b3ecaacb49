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

Differs from a plain safetensors file: the metadata also holds a sha256 of the tensors
and the rest of the metadata, checked on every load, so a file damaged on disk (flipped
bytes, a truncated copy) is reported as damaged, not replayed into a divergence that
would blame the base model or the statistics. Files without it (older blue) load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from blue_cli.cache import atomic_path
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.statistics.entries import tensor_bytes, tensor_checksum
from blue_cli.errors import ConfigError, DamagedFileError, NumericalError
from blue_cli.runs import files as results

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "replay-1"
# A replayed change whose norm differs by more than this (relative) is not the run's:
# the base model, the statistics or the code changed. Below it, a different device or
# library (float rounding) is only reported.
DIVERGED = 1e-3


class Contents(NamedTuple):
    """A checkpoint's metadata, parsed."""

    done: int
    rows: list[dict]
    layers: list[list[int]]
    prints: list[dict[str, list[float]]]
    finished: bool
    finish_info: dict[str, float]


class DamagedCheckpointError(DamagedFileError):
    """A checkpoint that cannot be read, or whose bytes no longer match its checksum."""


def damaged(path: Path, reason: str) -> DamagedCheckpointError:
    """The one-line error for a damaged checkpoint: which file, why, and what to do."""
    return DamagedCheckpointError(
        f"checkpoint '{path}' is damaged ({reason}): start the run over with resume=false "
        "(the damaged run's files are set aside), or remove the file"
    )


def checkpoint_checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over the tensors (name, dtype, shape, bytes) and every metadata entry but itself."""
    digest = hashlib.sha256(tensor_checksum(tensors).encode())
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    return digest.hexdigest()


def read_metadata(run_dir: Path) -> dict[str, str] | None:
    """The checkpoint's metadata, or None when the run folder has no checkpoint.

    An unreadable file (truncated, not safetensors) raises :class:`DamagedCheckpointError`."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, ValueError) as exc:
        raise damaged(path, f"unreadable: {_first_line(exc)}") from None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a checkpoint file, checked against its checksum when it has one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise damaged(path, f"unreadable: {_first_line(exc)}") from None
    recorded = meta.get("sha256")
    if recorded and checkpoint_checksum(tensors, meta) != recorded:
        raise damaged(path, "its bytes no longer match the checksum written with it")
    return tensors, meta


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def saved_rows(run_dir: Path) -> list[dict]:
    """The rows of the checkpoint's finished batches (what batches.jsonl is derived from);
    [] without a checkpoint. Read from the checkpoint, so a damaged batches.jsonl does not matter."""
    meta = read_metadata(run_dir)
    if meta is None:
        return []
    try:
        rows = json.loads(meta.get("batches", "[]"))
    except ValueError as exc:
        raise damaged(Path(run_dir) / CHECKPOINT, f"its metadata does not parse: {_first_line(exc)}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise damaged(Path(run_dir) / CHECKPOINT, "its batch rows are not a list of objects")
    return [results.current_names(r) for r in rows]


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
        # (tensors, metadata) read and checked by check(), for load() to use without reading again.
        self._verified: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None

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
        metadata["sha256"] = checkpoint_checksum(tensors, metadata)
        with atomic_path(self.path, size=tensor_bytes(tensors)) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        results.write_jsonl(self.run_dir, results.BATCHES, batch_rows)

    def check(self) -> dict[str, str] | None:
        """Refuse, before anything is written, a checkpoint of another config or format, or a damaged one."""
        meta = read_metadata(self.run_dir)
        if meta is None:
            return None
        if meta.get("sha256"):  # check the whole file before trusting its format and config
            self._verified = read_checkpoint(self.path)
            meta = self._verified[1]
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
        write_rows: bool = True,
    ) -> tuple[list[dict], bool]:
        """Replay the finished batches into ``session``; returns (their rows, finished).

        ``on_batch(done)`` is called before the first replayed batch (0, the base model) and
        after each (the runner redoes there what a kill lost: evaluation points). A finished
        run also gets the method's evaluated weights (PRUNE) applied again. ``write_rows``: rewrite
        batches.jsonl from the checkpoint (a resume, which holds the run folder's lock; not
        export or analyze, which only read the folder).
        """
        if self.check() is None:
            return [], False
        tensors, meta = self._verified or read_checkpoint(self.path)
        self._verified = None
        done, rows, layers, prints, finished, self.finish_info = self._contents(meta, tensors)
        if done == 0:
            return [], False
        self.pre_cases_digest = meta.get("pre_cases_sha256") or None
        if on_batch is not None:
            on_batch(0)
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
        if finished:
            session.apply_evaluated_weights()
        if write_rows:
            results.write_jsonl(self.run_dir, results.BATCHES, rows)
        log.info("resuming after %d finished batches", done)
        return rows, finished

    def _contents(self, meta: dict[str, str], tensors: Mapping[str, torch.Tensor]) -> Contents:
        """What the metadata says, parsed; a checkpoint without a checksum (older blue) whose
        fields do not parse, or that lacks a residual they name, is damaged."""
        try:
            done = int(meta["batches_done"])
            rows, layers, prints = (json.loads(meta[key]) for key in ("batches", "writes", "fingerprints"))
            contents = Contents(
                done,
                [results.current_names(r) for r in rows],
                layers,
                prints,
                json.loads(meta.get("finished", "false")),
                json.loads(meta.get("finish_info", "{}")),
            )
            names = [f"residual.{b}.{i}" for b in range(done) for i in range(len(layers[b]))]
            if min(len(rows), len(prints)) < done:
                raise ValueError(f"fewer batch rows or fingerprints than its {done} batches")
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise damaged(self.path, f"its metadata does not parse: {_first_line(exc)}") from None
        missing = [name for name in names if name not in tensors]
        if missing:
            raise damaged(self.path, f"tensor {missing[0]} is missing")
        return contents


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
