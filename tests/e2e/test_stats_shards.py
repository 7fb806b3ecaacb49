"""`blue stats` shards as a Hydra multirun (joblib launcher) and merges into the one-pass entry."""

from __future__ import annotations

import pytest

from blue_cli.config.overrides import compose_config
from blue_cli.editing.session import stats_settings
from blue_cli.editing.statistics.store import CovarianceStore
from tests.e2e.conftest import run_blue, run_blue_process

BASE = [
    "model=tiny-gpt2",
    "stats.samples=40",
    "stats.batch_tokens=256",
]  # tiny-gpt2: windows of 128, 2 a batch, 20 batches


@pytest.fixture(scope="module")
def one_pass(load_tiny, tmp_path_factory):
    """{layer: C} of the default strategy's layers, computed in one pass by the library."""
    adapter = load_tiny("tiny-gpt2")
    store = CovarianceStore(adapter, stats_settings(compose_config(BASE)), tmp_path_factory.mktemp("one") / "stats")
    return adapter, {l: store.get(l) for l in (1, 3)}, {l: store.counts[l] for l in (1, 3)}


def _sharded_multirun(tmp_path, shards: int, launcher: list[str], run=run_blue):
    cache = tmp_path / "cache"
    shard_list = ",".join(map(str, range(shards)))
    proc = run(
        ["stats", "-m", *BASE, f"stats.shard={shard_list}", f"stats.shards={shards}", *launcher,
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
        env_extra={"BLUE_CACHE": str(cache)},
    )  # fmt: skip
    return proc, cache


def test_multirun_of_shards_equals_one_pass(one_pass, tmp_path):
    """`blue stats -m` over 3 shards (Hydra's basic launcher, one job after another)."""
    proc, cache = _sharded_multirun(tmp_path, 3, [])
    _assert_merged(proc, cache, 3, one_pass)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [2, 3])
def test_joblib_multirun_of_shards_equals_one_pass(shards, one_pass, tmp_path):
    """The same through the joblib launcher: shards computed by parallel worker processes."""
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc, cache = _sharded_multirun(tmp_path, shards, launcher, run=run_blue_process)
    _assert_merged(proc, cache, shards, one_pass)


def _assert_merged(proc, cache, shards, one_pass):
    adapter, expected, counts = one_pass
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(cache.rglob(f"*.shard*of{shards}.safetensors"))) == 2 * shards  # layers 1 and 3
    store = CovarianceStore(adapter, stats_settings(compose_config(BASE)), cache / "stats")
    assert store.missing([1, 3]) == []  # the last job merged them
    for layer in (1, 3):
        got = store.get(layer).double()
        assert float((got - expected[layer].double()).abs().max() / expected[layer].abs().max()) < 1e-10
        assert store.counts[layer] == counts[layer]


def test_missing_shard_is_one_line_with_the_command(tmp_path):
    env = {"BLUE_CACHE": str(tmp_path / "cache")}
    proc = run_blue(["stats", *BASE, "stats.shard=1", "stats.shards=2"], cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens/s" in proc.stdout
    proc = run_blue(["stats", *BASE], cwd=tmp_path, env_extra=env)
    assert proc.returncode == 2
    [line] = [l for l in proc.stderr.splitlines() if "error:" in l]
    command = line.split("make it with: ", 1)[1].split()
    assert "shard 0 of 2 is missing" in line and command[:2] == ["blue", "stats"] and "stats.shard=0" in command
    proc = run_blue(command[1:], cwd=tmp_path, env_extra=env)  # the command it names makes the shard...
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 shards present: merged layers [1, 3]" in proc.stdout
    proc = run_blue(["stats", *BASE], cwd=tmp_path, env_extra=env)  # ...and the plain command finds the entry
    assert proc.returncode == 0 and "statistics for layers" not in proc.stdout
    proc = run_blue(["stats", *BASE, "stats.shard=2", "stats.shards=2"], cwd=tmp_path, env_extra=env)
    assert proc.returncode == 2 and "stats.shard must be in 0..1 for stats.shards=2, got 2" in proc.stderr
