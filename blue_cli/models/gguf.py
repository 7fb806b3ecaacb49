"""GGUF checkpoints (llama.cpp's single-file format, in which the package index ships some
real models): dequantised once into blue's cache as a plain safetensors folder.

transformers reads a GGUF file itself (``from_pretrained(folder, gguf_file=name)``), but
dequantising and converting the tokenizer costs about half a minute for a 135M model, and
the loaded model refuses ``save_pretrained``. So the first run converts the file into
``<cache>/models/gguf-<sha256[:16]>-<dtype>/`` (config, weights, tokenizer and
``gguf_source.json``, renamed into place only when complete) and every later run, ``blue
export`` included, loads that folder as any saved model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blue_cli import install_hint
from blue_cli.cache import cache_root, current_umask, disk_full_error, entry_lock, is_disk_full
from blue_cli.errors import ConfigError

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
SOURCE_INFO = "gguf_source.json"
# The packages transformers needs to read a GGUF file (pyproject's `gguf` extra).
GGUF_PACKAGES = ("gguf", "accelerate")
_CHUNK = 1 << 22


def gguf_file_of(source: str) -> Path | None:
    """The GGUF file ``source`` names: the file itself, or the one ``.gguf`` in a folder that
    holds no saved model (no config.json); None when ``source`` is neither.

    A folder with several GGUF files is ambiguous: one line naming them.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ConfigError(f"model.source folder '{source}' holds {len(found)} GGUF files ({names}): name one of them")
    return found[0] if found else None


def check_gguf_packages() -> None:
    """One-line error when the packages that read GGUF files are not installed."""
    missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"reading a GGUF file needs the gguf extra ({', '.join(missing)} missing): " + install_hint("gguf")
        )


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks (a GGUF file can be gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def converted_dir(sha256: str, dtype_name: str, root: Path | None = None) -> Path:
    """Where the converted copy of the GGUF file with this sha256 lives."""
    return (root or cache_root() / "models") / f"gguf-{sha256[:16]}-{dtype_name}"


def is_converted(folder: Path, sha256: str) -> bool:
    """A finished conversion of that file: its info file is written last, and names the hash."""
    try:
        info = json.loads((folder / SOURCE_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("sha256") == sha256 and (folder / "config.json").is_file()


def ensure_converted(gguf: Path, dtype, *, root: Path | None = None) -> Path:
    """The cached safetensors folder of ``gguf`` in ``dtype`` (a torch dtype), converting it once.

    Parallel jobs share one conversion (the entry's lock); a conversion killed half-way
    leaves only a temporary folder, which the next one removes.
    """
    check_gguf_packages()
    gguf = Path(gguf).resolve()
    sha = file_sha256(gguf)
    dtype_name = str(dtype).removeprefix("torch.")
    folder = converted_dir(sha, dtype_name, root)
    if is_converted(folder, sha):
        return folder
    with entry_lock(folder):
        if is_converted(folder, sha):
            return folder
        if folder.exists():  # a folder without its info file was not written by a finished conversion
            shutil.rmtree(folder)
        size_mb = gguf.stat().st_size / 1e6
        log.info("converting %s (%.0f MB) to %s safetensors once, into %s", gguf.name, size_mb, dtype_name, folder)
        _convert(gguf, dtype, folder, {"sha256": sha, "file": gguf.name, "bytes": gguf.stat().st_size})
    return folder


def _convert(gguf: Path, dtype, folder: Path, info: dict) -> None:
    """Load the GGUF file with transformers, save it as a plain folder, rename it into place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    for stale in folder.parent.glob(f".{folder.name}.*.partial"):  # killed conversions (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with _quiet_tqdm():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        _forget_quantizer(model)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {**info, "dtype": str(dtype).removeprefix("torch."), "architectures": model.config.architectures}
        (tmp / SOURCE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        mask = current_umask()
        os.chmod(tmp, 0o777 & ~mask)
        for file in tmp.iterdir():
            os.chmod(file, 0o666 & ~mask)
        os.replace(tmp, folder)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(folder, 4 * gguf.stat().st_size) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _forget_quantizer(model) -> None:
    """The weights are dequantised tensors already; transformers still marks the model as
    GGUF-quantised, which makes ``save_pretrained`` refuse it and would be saved in its config."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@contextmanager
def _quiet_tqdm() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar per tensor; blue says one line instead."""
    saved = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved
