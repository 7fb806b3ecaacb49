"""The run's checkpoint: one file, swapped in with one rename, so a kill never splits it.

It holds the written layers' weights (whole matrices, not differences, so a resumed
run continues bit-identically), the method state (C_prev), and in its metadata the
number of finished batches, the config key, the batch rows and whether the method's
final restraint (PRUNE) is already applied. ``batches.jsonl`` is derived from it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from blue_cli.cache import atomic_path
from blue_cli.errors import ConfigError
from blue_cli.models.adapter import ModelAdapter
from blue_cli.reporting import results

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"


class Checkpoint:
    """Save after each finished batch; load to resume a killed run of the same config."""

    def __init__(self, run_dir: Path, config_key: str):
        self.run_dir = Path(run_dir)
        self.config_key = config_key
        self.finish_info: dict[str, float] = {}

    @property
    def path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save(
        self,
        done: int,
        adapter: ModelAdapter,
        originals: dict[int, torch.Tensor],
        method,
        batch_rows: list[dict],
        *,
        finished: bool = False,
        info: dict[str, float] | None = None,
    ) -> None:
        tensors = {f"weight.{l}": adapter.rewrite_weight(l).detach().cpu().contiguous() for l in originals}
        tensors.update({k: v.contiguous() for k, v in method.state_dict().items()})
        metadata = {
            "batches_done": str(done),
            "config_key": self.config_key,
            "finished": json.dumps(finished),
            "finish_info": json.dumps(info or {}),
            "batches": json.dumps(batch_rows),
        }
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        results.write_jsonl(self.run_dir, results.BATCHES, batch_rows)

    def _read_meta(self) -> dict[str, str] | None:
        if not self.path.exists():
            return None
        with safe_open(str(self.path), framework="pt") as f:
            return f.metadata() or {}

    def check(self) -> None:
        """Refuse, before anything is written, to resume a checkpoint of another config."""
        meta = self._read_meta()
        if meta is not None and meta.get("config_key") != self.config_key:
            raise ConfigError(
                f"'{self.run_dir}' holds a checkpoint of a different config "
                "(use a new hydra.run.dir, or resume=false to start this folder over)"
            )

    def load(self, adapter: ModelAdapter, originals: dict[int, torch.Tensor], method) -> tuple[int, list[dict], bool]:
        """(batches done, their rows, finished); weights and method state are restored."""
        if not self.path.exists():
            return 0, [], False
        self.check()
        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        done = int(meta["batches_done"])
        for l in originals:
            adapter.set_rewrite(l, tensors[f"weight.{l}"])
        method.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("weight.")})
        rows = json.loads(meta["batches"])
        results.write_jsonl(self.run_dir, results.BATCHES, rows)
        self.finish_info = json.loads(meta.get("finish_info", "{}"))
        log.info("resuming after %d finished batches", done)
        return done, rows, json.loads(meta.get("finished", "false"))
