"""Export a finished run's edited model as a standard Hugging Face folder.

A run folder keeps only what its batches wrote (``checkpoint.safetensors``: the
residuals, see checkpoint.py), not the model. Exporting replays the run on the base
model named in its config.yaml (with the run's cached statistics) to get the edited
matrices (float32, (d_out x d_in) whatever the module type), writes them into a
float32 copy of the base model through the adapter (which turns them back into
GPT-2 Conv1D's (d_in x d_out) layout), and saves model + tokenizer with
``save_pretrained``, so ``AutoModelForCausalLM.from_pretrained`` loads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from blue_cli.cache import current_umask, disk_full_error, is_disk_full
from blue_cli.errors import BlueError

log = logging.getLogger(__name__)

EXPORT_INFO = "blue_export.json"
EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportError(BlueError):
    """A run folder that cannot be exported (unfinished, missing files) or a bad target."""


def check_finished(run_dir: Path) -> None:
    """Refuse a run folder without a checkpoint, or whose run is not finished."""
    from blue_cli.runs.checkpoint import CHECKPOINT, read_metadata

    meta = read_metadata(run_dir)
    if meta is None:
        raise ExportError(f"'{run_dir}' has no {CHECKPOINT} (give a run folder written by blue edit)")
    if meta.get("finished") != "true":
        done = meta.get("batches_done", "?")
        raise ExportError(
            f"the run in '{run_dir}' is not finished ({done} batches saved); "
            f"resume it with blue edit hydra.run.dir={run_dir} before exporting"
        )


def export_run(run_dir: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Write the run's edited model to ``out_dir`` (which must not exist or be empty).

    The model is loaded and edited in float32 on the CPU and cast to ``dtype`` only at
    the end, so a float32 export reproduces the run's float32 weights exactly. The
    folder is built under a temporary name beside ``out_dir`` and renamed into place.
    """
    from blue_cli.models.loading import load_model
    from blue_cli.runs.replay import edited_weights, read_run_config

    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"unknown --dtype '{dtype}' (choose: {', '.join(EXPORT_DTYPES)})")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run folder '{run_dir}' does not exist")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"--out '{out_dir}' already exists and is not an empty folder (choose a new path)")
    check_finished(run_dir)
    cfg = read_run_config(run_dir)
    weights = edited_weights(run_dir)
    m = cfg.model
    adapter = load_model(m.source, name=m.name, device="cpu", dtype="float32", revision=m.get("revision"))
    for layer, matrix in sorted(weights.items()):
        if not 0 <= layer < adapter.n_layers or tuple(adapter.rewrite_weight(layer).shape) != tuple(matrix.shape):
            raise ExportError(
                f"edited matrix of layer {layer} {tuple(matrix.shape)} does not fit model '{m.source}' "
                f"({adapter.n_layers} layers); was the run made with another model?"
            )
        adapter.set_rewrite(layer, matrix)
    adapter.model.to(EXPORT_DTYPES[dtype])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        adapter.model.save_pretrained(tmp)
        adapter.tok.save_pretrained(tmp)
        info = {
            "run_dir": str(run_dir.resolve()),
            "model": m.name,
            "source": m.source,
            "edited_layers": sorted(weights),
            "dtype": dtype,
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        mask = current_umask()  # mkdtemp makes the folder 0700; give what mkdir would
        os.chmod(tmp, 0o777 & ~mask)
        for file in tmp.iterdir():
            os.chmod(file, 0o666 & ~mask)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except Exception as exc:
        if is_disk_full(exc):
            size = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
            raise disk_full_error(out_dir, size) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (layers %s, %s) to %s", run_dir, sorted(weights), dtype, out_dir)
    return out_dir
