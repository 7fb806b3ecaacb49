"""A run folder's life: its lock, the resume check before Hydra writes, cleanup of a failed start.

A run folder holds hours of results, so nothing may touch a finished one by accident:
the resume check (same config?) runs before Hydra writes ``.hydra/`` there, a lock
file keeps a second run out while one is using it, and a run that failed before its
first batch was saved removes the folder it created instead of leaving a husk that
looks like a result.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from blue_cli.cache import current_umask, remove_stale_temporaries
from blue_cli.errors import RunFolderError
from blue_cli.runs.checkpoint import CHECKPOINT

log = logging.getLogger(__name__)

LOCK_NAME = ".blue.lock"
# What Hydra (and the lock) put into a run folder before the job function starts.
HYDRA_ENTRIES = frozenset({".hydra", "blue.log", LOCK_NAME})


def lock_run_folder(run_dir: Path) -> FileLock:
    """Take ``run_dir``'s lock at once, or raise RunFolderError naming the folder.

    The lock is an OS file lock, so a killed run (kill -9) releases it with its process;
    the caller releases it with ``.release()`` when the run ends. Once it is taken, the
    temp files of run files that a killed run left are removed (a run writes its files
    only while holding this lock).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / LOCK_NAME).is_symlink():  # filelock 3.12 follows it: never lock (or make) a file elsewhere
        raise unusable_lock(run_dir / LOCK_NAME, OSError(errno.ELOOP, os.strerror(errno.ELOOP)))
    lock = FileLock(str(run_dir / LOCK_NAME), mode=0o666 & ~current_umask(), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderError(
            f"run folder '{run_dir}' is in use by another blue run "
            "(wait for it to end, or choose another hydra.run.dir)"
        ) from None
    except OSError as exc:
        raise unusable_lock(run_dir / LOCK_NAME, exc) from None
    remove_stale_temporaries(run_dir, RUN_FILES)
    return lock


def unusable_lock(path: Path, exc: OSError) -> RunFolderError:
    """The one-line error for a lock file that cannot be opened (a symbolic link, which the lock
    refuses to follow, a folder, no permission)."""
    if path.is_symlink():
        why = "is a symbolic link"
    elif path.is_dir():
        why = "is a folder"
    else:
        why = f"cannot be opened ({exc.strerror or exc})"
    return RunFolderError(
        f"cannot lock run folder '{path.parent}': its lock file '{path}' {why}; "
        "blue makes it as a plain empty file: remove it and run again"
    )


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


def unfinished_runs_like(cfg, run_dir: Path, limit: int = 500) -> list[tuple[Path, int, int]]:
    """Other run folders near ``run_dir`` (its siblings and its parent's) whose checkpoint is of
    the same config and not finished: (folder, batches saved, batches in all), newest first."""
    from blue_cli.runs.checkpoint import read_metadata
    from blue_cli.runs.runner import resume_key

    run_dir = Path(run_dir).resolve()
    candidates = {*run_dir.parent.glob(f"*/{CHECKPOINT}"), *run_dir.parent.parent.glob(f"*/*/{CHECKPOINT}")}
    key, found = resume_key(cfg), []
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
        if path.parent == run_dir:
            continue
        try:
            meta = read_metadata(path.parent) or {}
        except Exception:  # a damaged checkpoint is not offered for resuming
            continue
        if meta.get("config_key") == key and meta.get("finished") == "false":
            done = int(meta.get("batches_done", 0))
            found.append((path.parent, done, int(meta.get("batches_total", done))))
    return found


# The files of a run (besides Hydra's): what resume=false sets aside before starting over.
RUN_FILES = (
    CHECKPOINT,
    "summary.json",
    "batches.jsonl",
    "cases.jsonl",
    "cases_pre.jsonl",
    "evals.jsonl",
    "config.yaml",
    "run_info.json",
    "context_templates.json",
    "tensorboard",
    "analysis",
)


def set_aside_previous_run(run_dir: Path) -> Path | None:
    """``resume=false`` in a folder holding a run: move that run's files into
    ``previous-<time>/`` first, so that nothing of it (its summary, cases, checkpoint)
    can be read as the new run's, even if the new start fails. Returns that folder."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir / f"previous-{stamp}"
    n = 1
    while target.exists():
        target = run_dir / f"previous-{stamp}-{n}"
        n += 1
    target.mkdir()
    for path in found:
        os.replace(path, target / path.name)
    log.warning("resume=false: the earlier run's files in %s are moved to %s", run_dir, target.name)
    return target


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse, before anything is written, a folder whose checkpoint is of another config.

    Only needed when the folder has a checkpoint and ``resume`` is on; the runner
    repeats the check, so this one is the early copy that keeps Hydra's hands off.
    """
    if not cfg.resume or not has_checkpoint(run_dir):
        return
    from blue_cli.runs import files as results
    from blue_cli.runs.checkpoint import Checkpoint
    from blue_cli.runs.runner import resume_key

    Checkpoint(Path(run_dir), resume_key(cfg)).check()
    results.read_jsonl(Path(run_dir) / results.EVALS)
