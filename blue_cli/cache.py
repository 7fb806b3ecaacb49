"""Atomic, content-keyed cache files: a crash never leaves a half-written file.

Parallel jobs (a Hydra joblib sweep) share the cache, so a writer takes a per-entry
file lock and a reader that finds a damaged entry moves it aside instead of using it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from blue_cli.errors import BlueError, DiskFullError
from blue_cli.faults import fault_point

log = logging.getLogger(__name__)

# errnos of a full disk or an exhausted quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How libraries that wrap the OSError spell it: safetensors raises
# SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)").
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


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
def atomic_path(path: Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it into place only if the block succeeds.

    ``size``: about how many bytes the block writes, for the message when the disk is
    full (else the temp file's size when the write stopped). A full disk raises
    :class:`DiskFullError` naming ``path``, instead of the writer's own exception.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, size) from exc
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fault_point(f"write:{path.name}")
        # mkstemp makes the file 0600; a cache shared by several users or jobs wants
        # the mode an ordinary open() would give (0644 under umask 022).
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, size or _file_size(tmp_path)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or quota: an OSError with that errno, or a library's
    own exception wrapping one (safetensors does; see :data:`DISK_FULL_TEXTS`)."""
    if isinstance(exc, BlueError):
        return False
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, Exception) and any(text in str(exc) for text in DISK_FULL_TEXTS)


def disk_full_error(path: Path, needed: int | None) -> DiskFullError:
    """The one-line error for a write of ``path`` that found its disk full: the file, about
    how much the write needed (when known), the space free there, and where to make room."""
    path = Path(path)
    try:
        free = f"{human_bytes(shutil.disk_usage(_existing_parent(path)).free)} free there"
    except OSError:
        free = "free space unknown"
    need = f"needs about {human_bytes(needed)}, " if needed else ""
    advice = "free some space there and run again"
    if _is_under(path, cache_root()):
        advice += ", or set BLUE_CACHE to a folder on a larger disk"
    return DiskFullError(f"disk full writing '{path}' (the write {need}{free}): {advice}")


def human_bytes(n: float) -> str:
    """Decimal units (1 GB = 1e9 bytes), as ``blue plan`` prints sizes."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size or None
    except OSError:
        return None


def _existing_parent(path: Path) -> Path:
    """The nearest folder of ``path`` that exists (shutil.disk_usage needs one)."""
    for folder in path.parents:
        if folder.exists():
            return folder
    return Path(".")


def _is_under(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))
    except (OSError, ValueError):
        return False


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
    Once inside, temp files of the entry that a killed writer left are removed: every
    writer of the entry holds this lock, so none of them is being written.
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
        remove_stale_temporaries(path.parent, [path.name])
        yield
    finally:
        lock.release()


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> int:
    """Remove the temp files :func:`atomic_path` made for ``names`` in ``folder``
    (``.<name>.<random>.tmp``) that a killed write left; returns how many.

    Only for a caller holding the lock that every writer of those names holds (the
    entry's, the run folder's): then no such file is being written. A statistics entry
    of Llama3-8B leaves about 0.8 GB per kill.
    """
    removed, freed = 0, 0
    for name in names:
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            try:
                size = tmp.stat().st_size
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed, freed = removed + 1, freed + size
    if removed:
        log.info("removed %d temporary file(s) of killed writes in %s (%s)", removed, folder, human_bytes(freed))
    return removed


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
    data = text.encode("utf-8")
    with atomic_path(path, size=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON through a temp file and a rename."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")
