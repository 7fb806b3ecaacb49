"""A run folder's life: its lock, the resume check before Hydra writes, cleanup of a failed start.

A run folder holds hours of results, so nothing may touch a finished one by accident:
the resume check (same config?) runs before Hydra writes ``.hydra/`` there, a lock
file keeps a second run out while one is using it, and a run that failed before its
first batch was saved removes the folder it created instead of leaving a husk that
looks like a result.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from blue_cli.cache import current_umask
from blue_cli.checkpoint import CHECKPOINT
from blue_cli.errors import RunFolderError

log = logging.getLogger(__name__)

LOCK_NAME = ".blue.lock"
# What Hydra (and the lock) put into a run folder before the job function starts.
HYDRA_ENTRIES = frozenset({".hydra", "blue.log", LOCK_NAME})


def lock_run_folder(run_dir: Path) -> FileLock:
    """Take ``run_dir``'s lock at once, or raise RunFolderError naming the folder.

    The lock is an OS file lock, so a killed run (kill -9) releases it with its process;
    the caller releases it with ``.release()`` when the run ends.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_NAME), mode=0o666 & ~current_umask(), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderError(
            f"run folder '{run_dir}' is in use by another blue run "
            "(wait for it to end, or choose another hydra.run.dir)"
        ) from None
    return lock


def is_fresh(run_dir: Path) -> bool:
    """True when ``run_dir`` holds nothing yet but what Hydra writes at a job's start.

    Called at the start of a job: such a folder was created for this run (or is the
    husk of an earlier failed start), so removing it after a failure loses nothing.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return True
    return all(entry.name in HYDRA_ENTRIES for entry in run_dir.iterdir())


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).is_file()


def remove_failed_start(run_dir: Path, fresh: bool) -> bool:
    """Remove ``run_dir`` if the run created it (``fresh``) and saved no batch; True if removed."""
    run_dir = Path(run_dir)
    if not fresh or has_checkpoint(run_dir) or not run_dir.is_dir():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("removed %s: the run failed before its first batch was saved", run_dir)
    return not run_dir.exists()


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse, before anything is written, a folder whose checkpoint is of another config.

    Only needed when the folder has a checkpoint and ``resume`` is on; the runner
    repeats the check, so this one is the early copy that keeps Hydra's hands off.
    """
    if not cfg.resume or not has_checkpoint(run_dir):
        return
    from blue_cli.checkpoint import Checkpoint
    from blue_cli.runner import resume_key

    Checkpoint(Path(run_dir), resume_key(cfg)).check()
