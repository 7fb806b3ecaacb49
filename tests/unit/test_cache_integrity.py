"""Statistics cache you can trust: damaged entries are caught and rebuilt, parallel jobs compute once."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from blue_cli.cache import atomic_path, write_json_atomic
from blue_cli.config.schema import StatsConfig
from blue_cli.editing.statistics.corpus import load_corpus
from blue_cli.editing.statistics.store import CovarianceStore, collect_second_moments, write_entry
from blue_cli.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SMALL = StatsConfig(samples=8, max_length=32)


def fresh_moment(adapter, settings: StatsConfig, layer: int) -> torch.Tensor:
    """C computed straight from the corpus, with no cache involved."""
    docs = load_corpus(settings.corpus, max_docs=settings.samples)
    moments, _ = collect_second_moments(adapter, docs, [layer], settings)
    return moments[layer].float()


def flip_bytes(path: Path, count: int = 200) -> None:
    """Invert ``count`` bytes in the middle of the tensor data (after the safetensors header)."""
    raw = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(raw[:8], "little")
    mid = data_start + (len(raw) - data_start) // 2
    for i in range(mid, mid + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


def bad_lines(caplog, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]


@pytest.fixture()
def gpt2(load_tiny):
    return load_tiny("tiny-gpt2")


def test_flipped_bytes_are_detected_moved_aside_and_rebuilt(gpt2, tmp_path, caplog):
    CovarianceStore(gpt2, SMALL, tmp_path).ensure([1, 2])
    path = CovarianceStore(gpt2, SMALL, tmp_path).path(1)
    flip_bytes(path)
    damaged = load_file(str(path))["mom2"]  # still loads: the old code would have used it
    expected = fresh_moment(gpt2, SMALL, 1)
    assert not torch.allclose(damaged, expected, equal_nan=True)

    caplog.set_level(logging.INFO)
    store = CovarianceStore(gpt2, SMALL, tmp_path)
    C = store.get(1)
    torch.testing.assert_close(C, expected, rtol=1e-6, atol=1e-9)
    [line] = bad_lines(caplog, path)
    assert "sha256" in line
    [moved] = aside(path)
    assert moved.read_bytes() != path.read_bytes()
    assert not bad_lines(caplog, store.path(2))  # the intact layer is reused untouched
    # the rebuilt entry is valid: a third store reuses it without a warning or a computation
    caplog.clear()
    again = CovarianceStore(gpt2, SMALL, tmp_path)
    assert again.missing([1, 2]) == []
    torch.testing.assert_close(again.get(1), C, rtol=0, atol=0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or "collecting" in r.getMessage()]


@pytest.mark.parametrize("damage", ["truncated", "empty", "old-format"])
def test_unreadable_entries_are_rebuilt_without_a_traceback(gpt2, tmp_path, caplog, damage):
    CovarianceStore(gpt2, SMALL, tmp_path).ensure([1])
    path = CovarianceStore(gpt2, SMALL, tmp_path).path(1)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # what the previous version wrote: no metadata, no checksum
        save_file({"mom2": torch.full((512, 512), 7.0), "count": torch.tensor([3])}, str(path))

    caplog.set_level(logging.WARNING)
    store = CovarianceStore(gpt2, SMALL, tmp_path)
    assert store.missing([1]) == [1]
    torch.testing.assert_close(store.get(1), fresh_moment(gpt2, SMALL, 1), rtol=1e-6, atol=1e-9)
    [line] = bad_lines(caplog, path)
    assert ("no metadata" if damage == "old-format" else "unreadable") in line
    assert len(aside(path)) == 1


def test_entry_with_other_metadata_is_not_reused(gpt2, tmp_path, caplog):
    eight = CovarianceStore(gpt2, SMALL, tmp_path)
    C8 = eight.get(1)
    ten_settings = StatsConfig(samples=10, max_length=32)
    ten = CovarianceStore(gpt2, ten_settings, tmp_path)
    ten.path(1).parent.mkdir(parents=True)
    shutil.copy(eight.path(1), ten.path(1))  # a valid file, but for 8 samples

    caplog.set_level(logging.WARNING)
    C10 = ten.get(1)
    expected = fresh_moment(gpt2, ten_settings, 1)
    torch.testing.assert_close(C10, expected, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(C10, C8)
    [line] = bad_lines(caplog, ten.path(1))
    assert "samples='8', expected '10'" in line


def test_non_finite_values_with_a_matching_checksum_are_rejected(gpt2, tmp_path, caplog):
    store = CovarianceStore(gpt2, SMALL, tmp_path)
    C = store.get(1)
    poisoned = C.clone()
    poisoned[3, 3] = float("inf")
    meta = {**store.metadata(1), "windows": "8", "tokens": "256"}
    write_entry(store.path(1), {"mom2": poisoned}, meta)  # checksum recorded for the bad values

    caplog.set_level(logging.WARNING)
    rebuilt = CovarianceStore(gpt2, SMALL, tmp_path).get(1)
    assert torch.isfinite(rebuilt).all()
    torch.testing.assert_close(rebuilt, C, rtol=1e-6, atol=1e-9)
    [line] = bad_lines(caplog, store.path(1))
    assert "non-finite" in line


def test_non_finite_statistics_are_refused_not_cached(gpt2, tmp_path, monkeypatch):
    import blue_cli.editing.statistics.store as covariance

    def overflowed(adapter, windows, layers, settings, progress=None):
        return {l: torch.full((adapter.key_size(l),) * 2, float("inf"), dtype=torch.float64) for l in layers}, 99

    monkeypatch.setattr(covariance, "accumulate_second_moments", overflowed)
    store = CovarianceStore(gpt2, SMALL, tmp_path)
    with pytest.raises(ConfigError, match="layer 1 of 'tiny-gpt2' are not finite"):
        store.ensure([1])
    assert not store.path(1).exists()


def test_derived_entries_are_checked_and_follow_their_source(gpt2, tmp_path, caplog):
    calls = []

    def double(C):
        calls.append(1)
        return C * 2

    store = CovarianceStore(gpt2, SMALL, tmp_path)
    C = store.get(1)
    torch.testing.assert_close(store.cached_tensor(1, "double", double), 2 * C)
    assert len(calls) == 1
    torch.testing.assert_close(CovarianceStore(gpt2, SMALL, tmp_path).cached_tensor(1, "double", double), 2 * C)
    assert len(calls) == 1  # reused from disk

    derived = store.path(1).with_name("layer1_double.safetensors")
    flip_bytes(derived)
    caplog.set_level(logging.WARNING)
    torch.testing.assert_close(CovarianceStore(gpt2, SMALL, tmp_path).cached_tensor(1, "double", double), 2 * C)
    assert len(calls) == 2
    assert "sha256" in bad_lines(caplog, derived)[0]
    assert len(aside(derived)) == 1

    # a different (valid) C replaces the statistics: the projector cached for the old C is stale
    meta = {**store.metadata(1), "windows": "8", "tokens": "256"}
    write_entry(store.path(1), {"mom2": C + 1}, meta)
    caplog.clear()
    torch.testing.assert_close(CovarianceStore(gpt2, SMALL, tmp_path).cached_tensor(1, "double", double), 2 * (C + 1))
    assert len(calls) == 3
    assert "source_sha256" in bad_lines(caplog, derived)[0]


def test_short_corpus_warns_and_reports_counts(gpt2, tmp_path, caplog):
    paragraphs = ["Rivers run to the sea.", "The town has a bridge and a mill.", "Snow fell early that year."]
    corpus = tmp_path / "short.txt"
    corpus.write_text("\n\n".join(paragraphs) + "\n")
    settings = StatsConfig(corpus=str(corpus), samples=50, max_length=32)
    tokens = sum(len(gpt2.tok(p)["input_ids"]) for p in paragraphs)  # each fits one window

    caplog.set_level(logging.WARNING)
    store = CovarianceStore(gpt2, settings, tmp_path / "cache")
    store.ensure([1, 2])
    [line] = [r.getMessage() for r in caplog.records if "stats.samples" in r.getMessage()]
    assert "gave 3 token windows" in line and "asks for 50" in line
    assert store.shortfall == 47
    assert store.summary() == {"samples_requested": 50, "windows": 3, "tokens": tokens, "shortfall": 47}
    # loaded from the cache, the counts (and the warning) come back
    caplog.clear()
    cached = CovarianceStore(gpt2, settings, tmp_path / "cache")
    assert cached.missing([1, 2]) == []
    assert cached.summary() == store.summary()
    assert len([r for r in caplog.records if "stats.samples" in r.getMessage()]) == 1

    # editing the corpus file invalidates its statistics
    corpus.write_text("\n\n".join(paragraphs + ["A fourth paragraph about boats."]) + "\n")
    changed = CovarianceStore(gpt2, settings, tmp_path / "cache")
    assert changed.missing([1]) == [1]
    changed.ensure([1])
    assert changed.summary()["windows"] == 4


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
        write_json_atomic(tmp_path / "b.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == mode


JOB = textwrap.dedent(
    """
    import hashlib, logging, os, select, sys
    from pathlib import Path
    os.umask(0o022)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    from blue_cli.config.schema import StatsConfig
    from blue_cli.editing.statistics.store import CovarianceStore
    from blue_cli.models.loading import load_model

    root, work = Path(sys.argv[1]), Path(sys.argv[2])

    class Announce(logging.Handler):  # the waiting job says so with a file
        def emit(self, record):
            if "waiting for" in record.getMessage():
                (work / "waiting").touch()

    logging.getLogger("blue_cli.cache").addHandler(Announce())
    adapter = load_model("tiny-gpt2", name="tiny-gpt2", device="cpu", dtype="float32")
    real = adapter.read_points
    passes = []

    def until(path):
        while not path.exists():
            select.select([], [], [], 0.02)

    def counted(*args, **kwargs):  # a statistics pass runs the model: count it once per job
        if not passes:
            passes.append(1)
            with open(work / "computed", "a") as f:
                f.write(f"{os.getpid()}\\n")
            until(work / "waiting")  # hold the lock until the other job is waiting for it
        return real(*args, **kwargs)

    adapter.read_points = counted
    (work / f"ready-{os.getpid()}").touch()
    while len(list(work.glob("ready-*"))) < 2:  # start both stores together
        select.select([], [], [], 0.02)
    store = CovarianceStore(adapter, StatsConfig(samples=8, max_length=32), root)
    store.ensure([1, 2])
    digest = hashlib.sha256(store.get(1).numpy().tobytes() + store.get(2).numpy().tobytes()).hexdigest()
    print(os.getpid(), digest)
    """
)


def test_parallel_jobs_compute_an_entry_once(tmp_path):
    root, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, str(root), str(work)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = [job.communicate(timeout=300) for job in jobs]
    for job, (_, err) in zip(jobs, outs, strict=True):
        assert job.returncode == 0, err
    computed = (work / "computed").read_text().split()
    assert len(computed) == 1, computed
    pids = {str(job.pid): (out, err) for job, (out, err) in zip(jobs, outs, strict=True)}
    [waiter] = [pid for pid in pids if pid not in computed]
    assert f"pid {waiter} waiting for layer1_mom2_8.safetensors lock held by another job" in pids[waiter][1]
    assert "waiting for" not in pids[computed[0]][1]
    assert "collecting second moments" not in pids[waiter][1]
    sums = {out.split()[1] for out, _ in outs}
    assert len(sums) == 1  # the waiter reused exactly what the other job wrote
    entries = sorted(root.rglob("*.safetensors"))
    assert [p.name for p in entries] == ["layer1_mom2_8.safetensors", "layer2_mom2_8.safetensors"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in entries} == {0o644}
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.corrupt-*"))
