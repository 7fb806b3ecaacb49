"""Causal tracing of one fact (ROME, Meng et al. 2022, section 2.1 and Fig. 1).

Three runs of the same prompt, read at its last position as P(first token of the true object):

- clean: the prompt as it is; every named point's state is kept;
- corrupted: Gaussian noise added to the subject tokens' input embeddings, ``samples`` draws
  at once (one batch row each), the probability averaged over the draws;
- restored: the corrupted rows, but at one token position the states of a window of layers of
  one kind are set back to the clean run's. Its gain over the corrupted run is the
  *indirect effect* of that (kind, layer, position).

Kinds and the adapter's named points: ``hidden`` is ``block.{l}`` (the residual stream after
block l), ``mlp`` is ``mlp.{l}`` (the rewrite module's output) and ``attn`` is ``attn.{l}``
(the attention output projection's output). Torch only, no files: the caller keeps the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.hooks import capture, hidden_of, replace_hidden

KINDS = {"hidden": "block", "mlp": "mlp", "attn": "attn"}
"""Tracing kind -> the adapter's point kind (see :meth:`ModelAdapter.point`)."""

DEFAULT_WINDOWS = {"hidden": 1, "mlp": 10, "attn": 10}
"""ROME's Fig. 1: one layer for hidden states, ten around the layer for MLP and attention."""

Patch = Sequence[tuple[str, int]]
"""(point name, token position) pairs set back to their clean state in one group of rows."""


def point_name(kind: str, layer: int) -> str:
    """The adapter point that a tracing ``kind`` restores at ``layer`` (``mlp`` -> ``mlp.{l}``)."""
    return f"{KINDS[kind]}.{layer}"


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """The layers restored for ``layer``: ROME's window ``[l - w // 2, l + ceil(w / 2))``, clipped to the model.

    ``window=1`` is ``[l]``; ``window=10`` is ``l-5 .. l+4`` (fewer at either end).
    """
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def embedding_std(adapter: ModelAdapter) -> float:
    """Standard deviation of the input embedding matrix's entries (float64).

    Differs from reference: ROME's ``collect_embedding_std`` takes the std of the embeddings
    of the knowns' subject tokens; the whole matrix needs no data and is the same for every
    fact set, so traces of different fact sets share one noise level.
    """
    return float(adapter.model.get_input_embeddings().weight.double().std())


def subject_noise(samples: int, n_tokens: int, width: int, scale: float, seed: int) -> torch.Tensor:
    """``samples`` draws of N(0, scale^2) noise for ``n_tokens`` embeddings: (samples, n_tokens, width), float32, CPU.

    Drawn from a ``torch.Generator`` seeded with ``seed``, so a seed gives the same numbers
    on every machine and in every run; the same draws serve the corrupted run and every
    restored run of a fact (ROME draws them from ``RandomState(1)`` for each run, the same effect).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((samples, n_tokens, width), generator=generator, dtype=torch.float32) * scale


@dataclass(frozen=True)
class Corruption:
    """Noise added to the input embeddings of token positions ``start .. end - 1`` (the subject).

    noise: (samples, end - start, d), one draw per batch row of a group.
    """

    start: int
    end: int
    noise: torch.Tensor

    @property
    def samples(self) -> int:
        return self.noise.shape[0]


def _restore_hook(rows: torch.Tensor, positions: torch.Tensor, clean: torch.Tensor):
    """A forward hook setting ``output[rows[i], positions[i]]`` to ``clean[positions[i]]``; clean: (T, d)."""

    def hook(module, args, output):
        hidden = hidden_of(output).clone()
        hidden[rows.to(hidden.device), positions.to(hidden.device)] = clean[positions].to(hidden.device, hidden.dtype)
        return replace_hidden(output, hidden)

    return hook


@torch.no_grad()
def target_probabilities(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    target_id: int,
    corruption: Corruption | None,
    patches: Sequence[Patch] = ((),),
    clean: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """P(target_id) at the last position, for each group of rows: (len(patches), samples), float32.

    One forward of ``len(patches) * samples`` copies of the prompt (``input_ids``: (T,)), row
    ``g * samples + s`` carrying noise draw ``s`` (none without ``corruption``: one row per
    group) and group ``g``'s patch: each (point, position) of ``patches[g]`` is set to
    ``clean[point][position]`` (clean: ``{point: (T, d)}``), the point's output replaced in
    place, so later layers compute from it.
    """
    samples = corruption.samples if corruption is not None else 1
    groups = len(patches)
    rows = groups * samples
    where: dict[str, tuple[list[int], list[int]]] = {}
    for g, patch in enumerate(patches):
        for name, position in patch:
            row_list, pos_list = where.setdefault(name, ([], []))
            row_list.extend(range(g * samples, (g + 1) * samples))
            pos_list.extend([position] * samples)
    handles = []

    def corrupt(module, args, output):  # output: (rows, T, d) token embeddings
        noise = corruption.noise.to(output.device, output.dtype).repeat(groups, 1, 1)  # row r: draw r % samples
        out = output.clone()
        out[:, corruption.start : corruption.end] += noise
        return out

    try:
        if corruption is not None:
            handles.append(adapter.model.get_input_embeddings().register_forward_hook(corrupt))
        for name, (row_list, pos_list) in where.items():
            module, side = adapter.point(name)
            if side != "output":
                raise ValueError(f"cannot restore {name!r}: only output points are restored")
            hook = _restore_hook(torch.tensor(row_list), torch.tensor(pos_list), clean[name])
            handles.append(module.register_forward_hook(hook))
        ids = input_ids.to(adapter.device).unsqueeze(0).expand(rows, -1)
        final = adapter.base_forward(ids, torch.ones_like(ids))[:, -1]  # (rows, d)
    finally:
        for handle in handles:
            handle.remove()
    probs = torch.softmax(adapter.logits_at(final).float(), dim=-1)[:, target_id]  # float32: fp16 softmax underflows
    return probs.reshape(groups, samples)


@torch.no_grad()
def clean_run(
    adapter: ModelAdapter, input_ids: torch.Tensor, target_id: int, points: Sequence[str]
) -> tuple[float, dict[str, torch.Tensor]]:
    """The clean probability and every point's clean state ``{point: (T, d)}``, from one forward."""
    modules = {}
    for name in points:
        module, side = adapter.point(name)
        if side != "output":
            raise ValueError(f"cannot restore {name!r}: only output points are restored")
        modules[name] = module
    with capture(modules, read="output") as got:
        prob = target_probabilities(adapter, input_ids, target_id, None)
    return float(prob), {name: state[0].detach() for name, state in got.items()}


@dataclass
class FactTrace:
    """The traces of one fact.

    effects: ``{kind: (T, L)}`` float64, p(restored) - p(corrupted) with the window of
    layers around column l restored at row t's token; clean and corrupted: probabilities
    of the true object's first token; subject: token positions ``start, end`` (end exclusive).
    """

    clean: float
    corrupted: float
    subject: tuple[int, int]
    effects: dict[str, torch.Tensor]
    noise_scale: float


def trace_fact(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    subject: tuple[int, int],
    target_id: int,
    *,
    kinds: Sequence[str] = tuple(KINDS),
    samples: int = 10,
    noise_scale: float,
    windows: dict[str, int] | None = None,
    seed: int = 0,
    max_rows: int = 256,
    on_layer: Callable[[], None] | None = None,
) -> FactTrace:
    """Clean, corrupted and restored runs of one prompt: the indirect effect of every (kind, layer, token).

    input_ids: (T,) the prompt's tokens; subject: its token range ``(start, end)``;
    noise_scale: the noise's standard deviation (ROME: 3 x :func:`embedding_std`); windows:
    layers restored per kind (default :data:`DEFAULT_WINDOWS`). A forward holds up to
    ``max_rows`` rows (token positions x samples; at least one position); ``on_layer`` is
    called after each (kind, layer), for progress.
    """
    windows = {**DEFAULT_WINDOWS, **(windows or {})}
    start, end = subject
    n_tokens, n_layers = int(input_ids.shape[0]), adapter.n_layers
    if not 0 <= start < end <= n_tokens:
        raise ValueError(f"subject range {subject} is not inside the prompt's {n_tokens} tokens")
    points = [point_name(kind, layer) for kind in kinds for layer in range(n_layers)]
    clean_prob, states = clean_run(adapter, input_ids, target_id, points)
    width = adapter.model.get_input_embeddings().weight.shape[1]
    corruption = Corruption(start, end, subject_noise(samples, end - start, width, noise_scale, seed))
    corrupted = float(target_probabilities(adapter, input_ids, target_id, corruption).double().mean())
    per_forward = max(1, max_rows // samples)
    effects = {}
    for kind in kinds:
        table = torch.empty((n_tokens, n_layers), dtype=torch.float64)
        for layer in range(n_layers):
            names = [point_name(kind, l) for l in window_layers(layer, windows[kind], n_layers)]
            for first in range(0, n_tokens, per_forward):
                positions = range(first, min(n_tokens, first + per_forward))
                patches = [[(name, t) for name in names] for t in positions]
                probs = target_probabilities(adapter, input_ids, target_id, corruption, patches, states)
                table[first : first + len(positions), layer] = probs.double().mean(dim=1) - corrupted
            if on_layer is not None:
                on_layer()
        effects[kind] = table
    return FactTrace(clean_prob, corrupted, (start, end), effects, noise_scale)
