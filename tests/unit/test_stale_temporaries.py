"""Temp files that killed writes left are removed under the lock their writers hold, and
nothing else is: other entries' temporaries, other files, a folder another run holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from blue_cli.cache import entry_lock, remove_stale_temporaries
from blue_cli.errors import RunFolderError
from blue_cli.runs.folder import lock_run_folder


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x" * 10)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_only_the_named_files_temporaries_are_removed(tmp_path):
    touch(tmp_path, ".summary.json.k2j3_x9a.tmp", ".summary.json.abc.tmp", ".notes.md.abc.tmp", "summary.json")
    touch(tmp_path, ".summary.jsonl.abc.tmp", "summary.json.abc.tmp")
    assert remove_stale_temporaries(tmp_path, ["summary.json"]) == 2
    assert names(tmp_path) == [".notes.md.abc.tmp", ".summary.jsonl.abc.tmp", "summary.json", "summary.json.abc.tmp"]


def test_names_are_not_patterns(tmp_path):
    touch(tmp_path, ".layer[1]_mom2.safetensors.abc.tmp", ".layer1_mom2.safetensors.abc.tmp")
    assert remove_stale_temporaries(tmp_path, ["layer[1]_mom2.safetensors"]) == 1
    assert names(tmp_path) == [".layer1_mom2.safetensors.abc.tmp"]


def test_an_entry_lock_removes_its_entrys_temporaries_only(tmp_path):
    entry = tmp_path / "layer1_mom2_40.safetensors"
    touch(tmp_path, ".layer1_mom2_40.safetensors.u7q1.tmp", ".layer1_mom2_40.shard0of2.safetensors.u7q1.tmp")
    touch(tmp_path, ".layer3_mom2_40.safetensors.u7q1.tmp")
    with entry_lock(entry):
        assert not (tmp_path / ".layer1_mom2_40.safetensors.u7q1.tmp").exists()
    assert names(tmp_path) == [
        ".layer1_mom2_40.shard0of2.safetensors.u7q1.tmp",
        ".layer3_mom2_40.safetensors.u7q1.tmp",
        "layer1_mom2_40.safetensors.lock",
    ]


def test_the_run_folder_lock_removes_run_file_temporaries_only(tmp_path):
    run_dir = tmp_path / "run"
    touch(run_dir, ".checkpoint.safetensors.a1.tmp", ".summary.json.b2.tmp", ".cases.jsonl.c3.tmp")
    touch(run_dir, ".report.md.d4.tmp", "report.md")
    lock = lock_run_folder(run_dir)
    try:
        assert names(run_dir) == [".blue.lock", ".report.md.d4.tmp", "report.md"]
    finally:
        lock.release()


def test_a_folder_another_run_holds_is_left_alone(tmp_path):
    run_dir = tmp_path / "run"
    held = lock_run_folder(run_dir)
    try:
        touch(run_dir, ".checkpoint.safetensors.live.tmp")  # being written by the holder
        with pytest.raises(RunFolderError, match="is in use by another blue run"):
            lock_run_folder(run_dir)
        assert (run_dir / ".checkpoint.safetensors.live.tmp").exists()
    finally:
        held.release()
