"""The bf16/fp16 warning on a CPU without a fast half-precision path: measured once, cached,
one line; the measurement itself is replaced here, so no test reads a clock."""

from __future__ import annotations

import json
import math

import pytest
import torch

from blue_cli.models import cpu_speed
from blue_cli.models.cpu_speed import half_precision_slowdown, half_precision_warning
from tests.conftest import invoke_blue


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """Set what the micro-benchmark 'measures', and count how often it runs (fresh cache)."""
    monkeypatch.setenv("BLUE_CACHE", str(tmp_path / "cache"))
    calls: list[torch.dtype] = []

    def set_slowdown(value: float):
        def fake(dtype):
            calls.append(dtype)
            return value

        monkeypatch.setattr(cpu_speed, "measure_slowdown", fake)

    return set_slowdown, calls


def test_a_slow_cpu_gets_one_line_naming_the_measured_factor_and_float32(measured):
    set_slowdown, _ = measured
    set_slowdown(365.0)
    line = half_precision_warning(torch.bfloat16, "cpu")
    assert line == (
        "model.dtype=bfloat16 on this CPU: a bfloat16 matmul measured 365x slower than float32 "
        "(no native bfloat16 here), so the run will be that much slower; model.dtype=float32 is faster here"
    )
    assert "\n" not in line


def test_a_cpu_with_native_half_precision_float32_and_cuda_get_no_warning(measured):
    set_slowdown, calls = measured
    set_slowdown(cpu_speed.SLOW_FACTOR)  # at the bound: not slow
    assert half_precision_warning(torch.float16, "cpu") is None
    set_slowdown(1e6)
    assert half_precision_warning(torch.float32, "cpu") is None
    assert half_precision_warning(torch.bfloat16, "cuda") is None
    assert calls == [torch.float16]  # float32 and CUDA are never measured


def test_the_measurement_is_cached_per_dtype_and_a_damaged_entry_is_measured_again(measured, tmp_path):
    set_slowdown, calls = measured
    set_slowdown(40.0)
    assert half_precision_slowdown(torch.bfloat16) == 40.0
    set_slowdown(2.0)
    assert half_precision_slowdown(torch.bfloat16) == 40.0  # read back, not measured
    assert half_precision_slowdown(torch.float16) == 2.0  # its own entry
    assert calls == [torch.bfloat16, torch.float16]
    (entry,) = (tmp_path / "cache" / "probes").glob("*bfloat16.json")
    assert json.loads(entry.read_text())["slowdown"] == 40.0
    entry.write_text("{not json")
    assert half_precision_slowdown(torch.bfloat16) == 2.0
    assert len(calls) == 3


def test_the_real_measurement_is_a_positive_ratio():
    ratio = cpu_speed.measure_slowdown(torch.float32)  # float32 against itself: about 1
    assert math.isfinite(ratio) and ratio > 0


def test_blue_plan_of_a_bf16_cpu_run_says_so_on_a_slow_cpu(measured, tmp_path):
    set_slowdown, _ = measured
    set_slowdown(365.0)
    result = invoke_blue(["plan", "model=tiny-gpt2", "model.dtype=bfloat16", "device=cpu"], cwd=tmp_path)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "measured 365x slower than float32" in warnings[0]
    result = invoke_blue(["plan", "model=tiny-gpt2", "model.dtype=float32", "device=cpu"], cwd=tmp_path)
    assert "warning:" not in result.stderr


def test_loading_a_bf16_model_on_a_slow_cpu_logs_the_line_once(measured, caplog):
    from blue_cli.models.loading import load_model

    set_slowdown, calls = measured
    set_slowdown(365.0)
    with caplog.at_level("WARNING", logger="blue_cli.models.loading"):
        load_model("tiny-gpt2", device="cpu", dtype="bfloat16")
    lines = [r.getMessage() for r in caplog.records if "slower than float32" in r.getMessage()]
    assert lines == [half_precision_warning(torch.bfloat16, "cpu")]
    assert calls == [torch.bfloat16]
