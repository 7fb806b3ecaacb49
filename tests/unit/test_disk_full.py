"""A full disk is one line naming the file, about how much the write needed and how much is
free there; the temp file is removed and the old file (if any) is left as it was.

Simulated by fault injection (an OSError(ENOSPC) from the write, and the SafetensorError
safetensors raises for one), and, where this machine lets a test mount one, on a real
small tmpfs.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from blue_cli import cache
from blue_cli.cache import atomic_path, write_json_atomic, write_text_atomic
from blue_cli.editing.statistics import entries
from blue_cli.editing.statistics.entries import write_entry
from blue_cli.errors import BlueError, DiskFullError

Usage = namedtuple("Usage", "total used free")
# What safetensors raises when its write finds the disk full (seen on a full tmpfs).
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.fixture
def free_4kb(monkeypatch):
    """shutil.disk_usage reports 4096 bytes free (the real free space is whatever it is)."""
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 4096, 4096))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_write_that_finds_the_disk_full_names_file_size_and_free_space(tmp_path, free_4kb):
    target = tmp_path / "run" / "cases.jsonl"
    with pytest.raises(DiskFullError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 1500)  # written so far, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    message = str(info.value)
    assert message == (
        f"disk full writing '{target}' (the write needs about 1.5 KB, 4.1 KB free there): "
        "free some space there and run again"
    )
    assert isinstance(info.value, BlueError)
    assert leftovers(target.parent) == []  # the temp file is removed


def test_a_full_disk_leaves_the_old_file_as_it_was(tmp_path, free_4kb, monkeypatch):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"old": 1})
    before = target.read_bytes()

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    text = '{"new": "' + "y" * 2000 + '"}'
    with pytest.raises(DiskFullError, match="the write needs about 2.0 KB"):
        write_text_atomic(target, text)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == ["summary.json"]


def test_a_quota_is_a_full_disk_too(tmp_path, free_4kb):
    with pytest.raises(DiskFullError, match="disk full writing"):
        with atomic_path(tmp_path / "a.bin"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))


def test_other_write_errors_keep_their_own_exception(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_path(tmp_path / "a.bin"):
            raise PermissionError(errno.EACCES, "denied")
    assert leftovers(tmp_path) == []


def test_a_statistics_entry_on_a_full_disk_names_its_size_and_blue_cache(tmp_path, free_4kb, monkeypatch):
    """safetensors wraps the OSError in its own SafetensorError: still a full disk."""
    monkeypatch.setenv("BLUE_CACHE", str(tmp_path / "cache"))
    entry = tmp_path / "cache" / "stats" / "m-abc" / "layer3_mom2_40.safetensors"

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(entries, "save_file", full)
    C = torch.zeros(128, 128)  # 65,536 bytes of float32
    with pytest.raises(DiskFullError) as info:
        write_entry(entry, {"mom2": C}, {"kind": "mom2"})
    assert str(info.value) == (
        f"disk full writing '{entry}' (the write needs about 65.5 KB, 4.1 KB free there): "
        "free some space there and run again, or set BLUE_CACHE to a folder on a larger disk"
    )
    assert leftovers(entry.parent) == []


# -- a real small filesystem ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs mounted for this test only; skipped where mounting is not permitted."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_real_full_disk_is_reported_for_text_and_tensors(small_disk):
    with pytest.raises(DiskFullError) as info:
        write_text_atomic(small_disk / "cases.jsonl", "z" * 200_000)
    assert f"disk full writing '{small_disk / 'cases.jsonl'}' (the write needs about 200.0 KB, " in str(info.value)
    with pytest.raises(DiskFullError) as info:
        write_entry(small_disk / "layer1_mom2_8.safetensors", {"mom2": torch.ones(256, 256)}, {"kind": "mom2"})
    assert "(the write needs about 262.1 KB, " in str(info.value)
    assert leftovers(small_disk) == []


class FullStream:
    """A file whose every write finds the disk full."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


def test_the_run_log_on_a_full_disk_drops_its_lines_with_one_warning(tmp_path, capsys):
    """Else logging prints its own traceback for every line once blue.log's disk is full."""
    import logging

    from blue_cli.cli.commands import RunLogHandler

    handler = RunLogHandler(tmp_path / "blue.log")
    handler.stream.close()
    handler.stream = FullStream()
    logger = logging.getLogger("tests.run_log")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("one")
        logger.error("two")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err == f"warning: the disk of {tmp_path / 'blue.log'} is full: its log lines are dropped\n"
