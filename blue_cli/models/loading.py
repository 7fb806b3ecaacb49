"""Load a model and tokenizer by hub id, local path, GGUF file or tiny preset name."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from blue_cli.download import offline_requested
from blue_cli.errors import ConfigError, OfflineError
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.cpu_speed import half_precision_warning
from blue_cli.models.source import (
    check_model_available,
    check_model_source,
    hub_endpoint,
    hub_offline,
    offline_message,
    unreachable_message,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else must be a valid torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}' (choose: auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' asked for but CUDA is not available (choose: auto, cpu)")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA (edit math stays float32/float64) and float32 on CPU."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}' (choose: auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def _source_dir(source: str, dtype: torch.dtype) -> str:
    """A loadable path for a tiny preset name, a packaged model or a GGUF file (its converted
    copy in the cache, made on first use), else the source unchanged (hub id or folder)."""
    from blue_cli.models.gguf import ensure_converted, gguf_file_of
    from blue_cli.models.packaged import fetched_file, is_packaged
    from blue_cli.models.tiny import is_tiny, tiny_model_dir

    if is_tiny(source):
        return str(tiny_model_dir(source))
    gguf = fetched_file(source) if is_packaged(source) else gguf_file_of(source)
    if gguf is not None:
        return str(ensure_converted(gguf, dtype))
    return source


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextmanager
def hub_offline_when_asked() -> Iterator[None]:
    """Under ``BLUE_OFFLINE``, put the hub client in offline mode while loading.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, so setting the variable
    is not enough once it is imported: its constant is set too, and both are restored
    afterwards. Without this a missing model costs about a minute of hub retries.
    """
    if not offline_requested():
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved_env, saved_const = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_const
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """No "Loading weights" bar: blue shows its own progress, one bar per long step."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_model(
    source: str,
    *,
    name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    device_map: str | None = None,
) -> ModelAdapter:
    """Load ``source`` (tiny preset, local folder, GGUF file or hub id) and wrap it in an adapter.

    ``device_map='auto'`` spreads a big model over several GPUs through accelerate;
    it is ignored on CPU. A hub model that is neither cached nor reachable is refused
    before the hub client starts its retries (``check_model_available``): every command
    and the Python API load through here, not only ``blue edit``'s preflight.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = check_model_source(source)
    check_model_available(source, revision)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    slow = half_precision_warning(torch_dtype, dev)
    if slow is not None:
        log.warning(slow)
    local = kind != "hub"
    kwargs = {"revision": revision} if (revision and not local) else {}
    use_map = device_map if (device_map and dev.type == "cuda") else None
    try:
        path = _source_dir(source, torch_dtype)
        with hub_offline_when_asked(), no_progress_bars():
            tok = AutoTokenizer.from_pretrained(path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, device_map=use_map, **kwargs)
    except ImportError as exc:
        raise ConfigError(f"cannot load model '{source}': {_first_line(exc)}") from None
    except OSError as exc:
        offline = hub_offline() or "offline" in str(exc).lower() or "connect" in str(exc).lower()
        if not local and offline:
            message = (
                offline_message(source)
                if hub_offline()
                else unreachable_message(source, hub_endpoint(), _first_line(exc))
            )
            raise OfflineError(message) from None
        raise ConfigError(f"cannot load model '{source}': {_first_line(exc)}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        # e.g. a folder whose tokenizer files are damaged, or a config of an unknown model type
        raise ConfigError(f"cannot load model '{source}': {type(exc).__name__}: {_first_line(exc)}") from None
    if use_map is None:
        model.to(dev)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return ModelAdapter(model, tok, name=name or source)
