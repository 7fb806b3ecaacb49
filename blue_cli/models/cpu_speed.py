"""Whether this CPU multiplies bfloat16/float16 matrices at a usable speed.

A CPU without native bf16 (AVX2 only: no AVX512-BF16, no AMX) runs a torch bfloat16
matmul through a slow fallback, measured ~365x slower than float32 on this project's CI
machines; a bf16 edit run there takes hours instead of minutes. Which CPUs have the fast
path is not a name list: a micro-benchmark (a few milliseconds) measures it once per CPU,
torch release and dtype, and the answer is cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path

import torch

from blue_cli.cache import cache_root, write_json_atomic

log = logging.getLogger(__name__)

HALF_DTYPES = (torch.bfloat16, torch.float16)
# Slower than float32 by more than this: the fallback path (native units run at 0.5-2x).
SLOW_FACTOR = 8.0
_SHAPE = (64, 256, 256)  # (rows, inner, columns): ~0.1 ms in float32, ~40 ms on the slow path
_REPEATS = 3


def cpu_identity() -> str:
    """A short key for this CPU: its model name and feature flags (Linux), else the platform."""
    text = ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text = "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        pass
    text = text or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_slowdown(dtype: torch.dtype) -> float:
    """How many times slower a ``dtype`` matmul is than a float32 one on this CPU (best of a few)."""
    rows, inner, cols = _SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(inner, cols, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up: kernel selection and thread start
        times = []
        for _ in range(_REPEATS):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return max(min(times), 1e-9)

    return best(a.to(dtype), b.to(dtype)) / best(a, b)


def half_precision_slowdown(dtype: torch.dtype, root: Path | None = None) -> float:
    """:func:`measure_slowdown`, measured once per CPU, torch release and dtype, then read back."""
    name = str(dtype).removeprefix("torch.")
    path = (root or cache_root() / "probes") / f"cpu-matmul-{cpu_identity()}-torch{torch.__version__}-{name}.json"
    try:
        return float(json.loads(path.read_text())["slowdown"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    slowdown = measure_slowdown(dtype)
    write_json_atomic(path, {"dtype": name, "torch": torch.__version__, "slowdown": slowdown})
    return slowdown


def half_precision_warning(dtype: torch.dtype, device: torch.device | str) -> str | None:
    """One line when ``dtype`` on this CPU takes the slow path, else None (CUDA, float32, fast CPUs)."""
    if torch.device(device).type != "cpu" or dtype not in HALF_DTYPES:
        return None
    slowdown = half_precision_slowdown(dtype)
    if slowdown <= SLOW_FACTOR:
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"model.dtype={name} on this CPU: a {name} matmul measured {slowdown:.0f}x slower than float32 "
        f"(no native {name} here), so the run will be that much slower; model.dtype=float32 is faster here"
    )
