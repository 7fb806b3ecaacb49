"""Forward hooks that read or edit a module's activations, always removed on exit.

Decoder blocks return either a tuple whose first item is the hidden state or, in
transformers 5.x, a bare tensor; every hook here accepts both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every needed activation is read."""


def hidden_of(output: torch.Tensor | tuple) -> torch.Tensor:
    """The hidden-state tensor inside a module output (tuple or bare tensor)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    """``output`` with its hidden state swapped for ``hidden``, same container type."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


@contextmanager
def capture(
    modules: dict[str, nn.Module], *, read: str = "output", stop_after: str | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each module's input (first positional arg) or output hidden state.

    ``stop_after`` names the module after which the forward pass is aborted with
    :class:`StopForward`; callers run the model inside :func:`run_until_stopped`.
    """
    if read not in ("input", "output"):
        raise ValueError(f"read must be 'input' or 'output', not {read!r}")
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(module, args, output):
            store[name] = args[0] if read == "input" else hidden_of(output)
            if name == stop_after:
                raise StopForward

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def run_until_stopped(forward, *args, **kwargs):
    """Call ``forward``; a :class:`StopForward` from a hook is a normal early exit."""
    try:
        return forward(*args, **kwargs)
    except StopForward:
        return None


@contextmanager
def add_at_positions(
    module: nn.Module, delta: torch.Tensor, rows: Sequence[int] | torch.Tensor, positions: Sequence[int] | torch.Tensor
) -> Iterator[None]:
    """Add ``delta[rows[b]]`` to the module's output hidden state at ``(b, positions[b])``.

    delta: (n_requests, d). rows/positions: one entry per sequence in the batch.
    Used to inject the target vector at the subject's last token.
    """
    rows_t = torch.as_tensor(rows, dtype=torch.long)
    pos_t = torch.as_tensor(positions, dtype=torch.long)

    def hook(mod, args, output):
        hidden = hidden_of(output)
        batch = torch.arange(hidden.shape[0], device=hidden.device)
        add = torch.zeros_like(hidden)
        add[batch, pos_t.to(hidden.device)] = delta[rows_t.to(delta.device)].to(hidden.device, hidden.dtype)
        return replace_hidden(output, hidden + add)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
