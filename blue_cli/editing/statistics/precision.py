"""The precision of the statistics pass's key products x^T x (``stats.precision``).

Differs from reference: the reference (``layer_stats``) multiplies in float32. Here
``auto`` is float64 on CPU, where it is cheap and sums over any split of the batches
match the one pass to ~1e-16, and float32 on CUDA, where float64 runs at a small
fraction of the float32 rate on most GPUs (A40: ~0.6 vs ~37 TFLOPS), enough to turn
a 100,000-document pass over d_k = 14336 from minutes into hours per layer. A float32
product is ~1e-7 relative from the float64 one; the sum it is added to stays float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from blue_cli.errors import ConfigError

PRECISIONS = ("auto", "float32", "float64")


def product_precision(precision: str, device: torch.device | str) -> str:
    """The dtype name ("float32" or "float64") of the per-batch products on ``device``.

    ``auto``: float64 on CPU (today's numbers bit for bit), float32 elsewhere.
    One-line ConfigError naming an unknown value and the valid ones.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown stats.precision '{precision}' (choose: {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "float64" if torch.device(device).type == "cpu" else "float32"
    return precision


@contextmanager
def exact_float32_matmul() -> Iterator[None]:
    """float32 matmuls in full float32 inside the block (no TF32 on CUDA); the setting is restored after.

    A user's or library's TF32 setting would otherwise turn a "float32" product into one
    with a 10-bit mantissa (~1e-3 relative), silently. Uses
    ``torch.backends.cuda.matmul.fp32_precision`` (torch >= 2.9, where reading the legacy
    ``allow_tf32`` flag after the new API was used raises), else the legacy flag.
    """
    matmul = torch.backends.cuda.matmul
    name, exact = ("fp32_precision", "ieee") if _readable(matmul, "fp32_precision") else ("allow_tf32", False)
    previous = getattr(matmul, name)
    setattr(matmul, name, exact)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def _readable(obj: object, name: str) -> bool:
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    return True
