"""Experiment tracking: TensorBoard event files hold exactly the logged numbers; the other
backends fail with a one-line error naming their extra when their library is absent."""

from __future__ import annotations

import builtins
import math
import sys

import pytest

from blue_cli.errors import ConfigError
from blue_cli.runs.tracking import NullTracker, TensorBoardTracker, flatten_scalars, make_tracker


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_flatten_scalars_keeps_only_finite_numbers_with_dotted_names():
    row = {"a": 1, "b": {"c": 2.5, "d": [3, {"e": 4}]}, "s": "text", "n": None, "nan": float("nan"), "inf": math.inf}
    assert flatten_scalars(row) == {"a": 1.0, "b.c": 2.5, "b.d.0": 3.0, "b.d.1.e": 4.0}
    assert flatten_scalars({"x": {"y": 7}}, "eval") == {"eval/x.y": 7.0}


def test_tensorboard_scalars_read_back_at_logged_steps(tmp_path):
    pytest.importorskip("tensorboard")
    tracker = make_tracker("tensorboard", tmp_path, None)
    assert isinstance(tracker, TensorBoardTracker)
    tracker.log_batch({"write_error": 0.25, "layers": {"17": {"norm": 3.5}}, "method": "memit"}, step=1)
    tracker.log_batch({"write_error": 0.125, "layers": {"17": {"norm": 4.0}}, "skipped": None}, step=2)
    tracker.log_eval({"batches": 0, "edits": 0, "efficacy": float("nan")}, step=0)
    tracker.log_eval({"batches": 2, "edits": 20, "efficacy": 0.75, "general": {"mmlu": {"acc": 0.5}}}, step=20)
    tracker.log_summary({"efficacy": 0.75, "model": "tiny-gpt2", "written_layers": [4, 5]})
    tracker.close()

    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no event file under run_dir/tensorboard"
    got = _scalars(tmp_path / "tensorboard")
    assert got["batch/write_error"] == [(1, 0.25), (2, 0.125)]
    assert got["batch/layers.17.norm"] == [(1, 3.5), (2, 4.0)]
    assert got["eval/efficacy"] == [(20, 0.75)]  # NaN at step 0 skipped
    assert got["eval/edits"] == [(0, 0.0), (20, 20.0)]
    assert got["eval/general.mmlu.acc"] == [(20, 0.5)]
    assert got["summary/efficacy"] == [(0, 0.75)]
    assert got["summary/written_layers.1"] == [(0, 5.0)]
    assert not any("method" in t or "model" in t or "skipped" in t for t in got)
    assert set(got) == {
        "batch/write_error",
        "batch/layers.17.norm",
        "eval/batches",
        "eval/edits",
        "eval/efficacy",
        "eval/general.mmlu.acc",
        "summary/efficacy",
        "summary/written_layers.0",
        "summary/written_layers.1",
    }


def test_null_tracker_writes_nothing(tmp_path):
    for name in (None, "none", "NONE"):
        tracker = make_tracker(name, tmp_path, None)
        assert type(tracker) is NullTracker
        tracker.log_batch({"x": 1.0}, step=1)
        tracker.log_eval({"x": 1.0}, step=10)
        tracker.log_summary({"x": 1.0})
        tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_unknown_logger_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        make_tracker("tensorbored", tmp_path, None)
    msg = str(err.value)
    assert "\n" not in msg and "tensorbored" in msg
    for choice in ("none", "tensorboard", "wandb", "mlflow"):
        assert choice in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_backend_names_its_extra(tmp_path, monkeypatch, name):
    real_import = builtins.__import__

    def fake_import(mod, *args, **kwargs):
        if mod == name or mod.startswith(name + "."):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(mod, *args, **kwargs)

    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError) as err:
        make_tracker(name, tmp_path, {"seed": 0})
    assert str(err.value) == (
        f'logger={name} needs the {name} extra: pip install "blue-editing[{name}]" '
        f'(from a checkout: pip install -e ".[{name}]")'
    )


def test_run_config_accepts_logger_and_rejects_unknown():
    from blue_cli.config.overrides import compose_config
    from blue_cli.config.schema import check_run_config

    cfg = compose_config(["logger=tensorboard"])
    assert cfg.logger == "tensorboard"
    check_run_config(cfg)
    assert compose_config([]).logger is None
    with pytest.raises(ConfigError, match="unknown logger 'neptune'"):
        check_run_config(compose_config(["logger=neptune"]))


def test_no_backend_is_imported_unless_chosen():
    import subprocess

    code = (
        "import sys, blue_cli.config.schema, blue_cli.runs.tracking as t; t.make_tracker(None, '.', None);"
        "print([m for m in ('tensorboard', 'wandb', 'mlflow', 'tensorboardX') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
