"""Cache entries of tensors: safetensors files with metadata and a sha256, checked on load.

Differs from reference: the reference's statistics files carry neither; a damaged or
stale entry here is moved aside and rebuilt instead of silently giving wrong numbers.
Used by covariance.py for full and shard entries and for tensors derived from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from blue_cli.cache import atomic_path, entry_lock, move_aside

Entry = tuple[dict[str, torch.Tensor], dict[str, str]]
# Metadata an entry must carry: a value, or a tuple of the values accepted (None: absent).
Expected = Mapping[str, "str | tuple[str | None, ...]"]


class BadEntry(Exception):
    """A cache entry that must not be used; the message is the reason, for the log line."""


def tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """The bytes of the tensors' data: what a safetensors file of them needs, but for its header."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def write_entry(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Write ``tensors`` with ``metadata`` and their sha256 atomically; returns the sha256.

    The caller holds ``entry_lock(path)``. A full disk raises DiskFullError (cache.atomic_path).
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    sha = tensor_checksum(tensors)
    with atomic_path(path, size=tensor_bytes(tensors)) as tmp:
        save_file(tensors, str(tmp), metadata={**metadata, "sha256": sha})
    return sha


def read_entry(path: Path, expected: Expected) -> Entry:
    """(tensors, metadata) of the entry at ``path``; raises ``BadEntry`` saying why it is unusable.

    Unusable: unreadable (missing, empty, truncated), metadata other than ``expected``,
    a checksum that does not match the bytes, or non-finite values. An expected tuple
    lists the values accepted, None meaning absent (entries older than the key).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            names = f.keys()
            tensors = {k: f.get_tensor(k) for k in names}
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise BadEntry(f"unreadable: {lines[0]}") from None
    if not meta:
        raise BadEntry("no metadata (written by an older version)")
    for key, want in expected.items():
        if meta.get(key) not in (want if isinstance(want, tuple) else (want,)):
            raise BadEntry(f"metadata {key}={meta.get(key)!r}, expected {want!r}")
    if tensor_checksum(tensors) != meta.get("sha256"):
        raise BadEntry("sha256 of the tensors does not match the one recorded")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BadEntry(f"non-finite values in '{name}'")
    return tensors, meta


def read_valid_entry(path: Path, expected: Expected, locked: bool = False) -> Entry | None:
    """The entry at ``path`` if it is valid, else None (a bad one is moved aside first).

    Moving aside happens only under the entry's lock (taken here unless ``locked``), and
    after a second look: another job may have replaced the bad file with a good one.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read_entry(path, expected)
    except BadEntry as bad:
        if locked:
            move_aside(path, str(bad))
            return None
    with entry_lock(path):
        return read_valid_entry(path, expected, locked=True)
