"""Atomic, content-keyed cache files: a crash never leaves a half-written file.

Parallel jobs (a Hydra joblib sweep) share the cache, so a writer takes a per-entry
file lock and a reader that finds a damaged entry moves it aside instead of using it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from blue_cli.faults import fault_point

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where downloads, statistics and tiny models are cached (``BLUE_CACHE`` overrides)."""
    env = os.environ.get("BLUE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "blue"


def content_key(payload: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-serialisable payload, for cache file names."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fault_point(f"write:{path.name}")
        # mkstemp makes the file 0600; a cache shared by several users or jobs wants
        # the mode an ordinary open() would give (0644 under umask 022).
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the only portable read is set-and-restore
    os.umask(mask)
    return mask


@contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on cache entry ``path`` (file ``<path>.lock``) across processes.

    Logs one info line when another job holds it, then waits: the caller should look
    for a valid entry again once inside, since the other job has usually written it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", mode=0o666 & ~current_umask())
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("pid %d waiting for %s lock held by another job", os.getpid(), path.name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def move_aside(path: Path, reason: str) -> Path:
    """Rename a bad cache entry to ``<name>.corrupt-<timestamp>`` and log why, in one line.

    Kept rather than deleted so the damage can be inspected; nothing reads these again.
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    log.warning("cache entry %s is bad (%s): moved aside to %s and rebuilding", path, reason, target.name)
    return target


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON through a temp file and a rename."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")
