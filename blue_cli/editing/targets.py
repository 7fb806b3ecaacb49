"""Target vectors: what the hidden state at the subject's last token should become.

For each request a vector delta (d) is added at a point (the block output, or for
PMET also the attention/FFN outputs) of one layer at the subject's last token of
every rewriting prompt, and optimised with Adam on

    NLL(target_new | prompt)  +  kl_factor * KL(p_now || p_init on "{subject} is a")
    +  weight_decay * ||delta|| / ||h_init||^2,

then clamped to ||delta|| <= clamp * ||h_init|| after every step; z = h_init + delta.
With ``adaptive_nll`` (PMET's rule, on for ``pmet``/``pmet_seq``): while the target is the
argmax at every scored position, the next step weighs the NLL by 0.1, and the request
stops once KL(p_now || p_init) < 0.01.
All requests of a batch are optimised together, each with its own vector and its own
early stop; since Adam is element-wise and the sequences are independent this gives
the same vectors as one-request-at-a-time optimisation (tested to 1e-4). A request that
stops early leaves the batch: later steps run forward and backward on the others only,
as the reference's per-request loop stops each request on its own.
Differs from reference: prompt and target are concatenated as token ids rather
than re-tokenised as one string, and only the positions the loss reads are unembedded.
Each step runs only the positions from the subject's last token to the last one a loss
reads, attending to the earlier positions' cached keys and values (models/split.py; with
``reuse_past``): nothing before the subject can see the vector, so the result is the same
to float rounding and a third of the work on CounterFact's prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from itertools import combinations

import torch
import torch.nn.functional as F

from blue_cli.config.schema import TargetConfig
from blue_cli.datasets.records import EditRequest
from blue_cli.faults import fault_point
from blue_cli.models.adapter import ModelAdapter, PrefixRows, frozen_prefix
from blue_cli.models.split import SplitBatch
from blue_cli.models.tokens import fill, pad_id, pad_right, subject_last_index, target_ids

KL_PROMPT = "{} is a"


ADAPTIVE_NLL_FACTOR = 0.1  # PMET: the NLL weight while the target is the argmax at every scored position
ADAPTIVE_KL_STOP = 0.01  # PMET: stop then once KL(p_now || p_init) (without kl_factor) is below this


@dataclass
class TargetResult:
    """Per-request outcome at one point of one layer. Shapes (n x d), float32."""

    layer: int
    points: tuple[str, ...]
    h_init: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    steps: list[int] = field(default_factory=list)
    loss_init: list[float] = field(default_factory=list)
    loss_final: list[float] = field(default_factory=list)
    value_norms: list[float] = field(default_factory=list)  # ||v*|| written (set by the strategy)
    anchor_skipped: int = 0  # edits Norm-Anchor Scaling dropped (editing/anchoring.py)

    def z(self, point: str) -> torch.Tensor:
        return self.h_init[point] + self.delta[point]


def merge_results(parts: Sequence[TargetResult]) -> TargetResult:
    """One result from results of consecutive groups of requests at the same layer."""
    points = parts[0].points
    return TargetResult(
        layer=parts[0].layer,
        points=points,
        h_init={p: torch.cat([r.h_init[p] for r in parts]) for p in points},
        delta={p: torch.cat([r.delta[p] for r in parts]) for p in points},
        steps=[x for r in parts for x in r.steps],
        loss_init=[x for r in parts for x in r.loss_init],
        loss_final=[x for r in parts for x in r.loss_final],
    )


ACTIVATION_BYTES_PER_TOKEN_PER_BLOCK = 34  # x hidden size, 16-bit activations (the usual estimate)


def requests_per_chunk(
    *, hidden: int, tokens_per_request: int, blocks: int, elem_bytes: int, budget_bytes: float
) -> int:
    """How many requests' target optimisation fit in ``budget_bytes`` of activations.

    Back-propagating through ``blocks`` blocks keeps about 34 x hidden bytes per token
    per block in 16-bit (scaled by ``elem_bytes`` / 2) for every sequence of a request
    (its context templates and its KL prompt).
    """
    per_request = ACTIVATION_BYTES_PER_TOKEN_PER_BLOCK * hidden * tokens_per_request * blocks * elem_bytes / 2
    return max(1, int(budget_bytes // max(per_request, 1.0)))


@dataclass
class _Batch:
    inputs: dict[str, torch.Tensor] | SplitBatch  # right-padded; split (see _split) for the steps
    rows: torch.Tensor  # request index of every sequence
    lookup: torch.Tensor  # subject-last position of every sequence (in the run part once split)
    nll_row: torch.Tensor  # sequence of every scored target token
    nll_pos: torch.Tensor  # position whose logits predict it (in the run part once split)
    nll_tok: torch.Tensor  # the token
    nll_weight: torch.Tensor  # 1 / (n_tokens * n_prompts) of its request
    kl_rows: torch.Tensor  # the KL sequence of each request
    plain_rows: torch.Tensor  # the "{}"-template rewriting sequence of each request
    origin: torch.Tensor | None = None  # each sequence's row in the batch the frozen prefix recorded
    groups: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (sequences, run width) per forward


def _build_batch(adapter: ModelAdapter, requests: Sequence[EditRequest], templates: Sequence[str]) -> _Batch:
    tok = adapter.tok
    seqs, rows, lookup, kl_rows, plain_rows = [], [], [], [], []
    nll_row, nll_pos, nll_tok, nll_weight = [], [], [], []
    for r, req in enumerate(requests):
        tgt = target_ids(tok, req.target_new)
        for t, template in enumerate(templates):
            text_template = template.replace("{}", req.prompt, 1)
            prompt = tok(fill(text_template, req.subject))["input_ids"]
            row = len(seqs)
            if t == 0:
                plain_rows.append(row)
            seqs.append(prompt + tgt[:-1])
            rows.append(r)
            lookup.append(subject_last_index(tok, text_template, req.subject))
            for j, token in enumerate(tgt):
                nll_row.append(row)
                nll_pos.append(len(prompt) - 1 + j)
                nll_tok.append(token)
                nll_weight.append(1.0 / (len(tgt) * len(templates)))
        kl_rows.append(len(seqs))
        seqs.append(tok(fill(KL_PROMPT, req.subject))["input_ids"])
        rows.append(r)
        lookup.append(subject_last_index(tok, KL_PROMPT, req.subject))
    dev = adapter.device
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=dev)  # noqa: E731
    return _Batch(
        inputs=pad_right(seqs, pad_id(tok), dev),
        rows=as_long(rows),
        lookup=as_long(lookup),
        nll_row=as_long(nll_row),
        nll_pos=as_long(nll_pos),
        nll_tok=as_long(nll_tok),
        nll_weight=torch.tensor(nll_weight, dtype=torch.float32, device=dev),
        kl_rows=as_long(kl_rows),
        plain_rows=as_long(plain_rows),
    )


def _split(adapter: ModelAdapter, batch: _Batch, at_subject: bool) -> _Batch:
    """The batch as the steps run it: split at each sequence's subject-last token when
    ``at_subject`` (earlier positions cannot change, their keys and values are cached, and
    positions after the last one a loss reads are dropped), else unsplit; positions become
    positions in the run part."""
    if at_subject:
        starts = batch.lookup
        ends = (batch.lookup + 1).scatter_reduce(0, batch.nll_row, batch.nll_pos + 1, "amax")
        # the cached part's no-grad pass, one forward per group of similar width (>= 1)
        past_groups = length_groups(starts.clamp_min(1), _forward_overhead(adapter))
        inputs = adapter.split(batch.inputs, starts, ends, past_groups)
    else:
        starts = torch.zeros_like(batch.lookup)
        inputs = adapter.split(batch.inputs, starts)
    widths = inputs.attention_mask[:, inputs.cached :].sum(1)
    split = replace(
        batch,
        inputs=inputs,
        lookup=batch.lookup - starts,
        nll_pos=batch.nll_pos - starts[batch.nll_row],
        origin=torch.arange(len(starts), device=starts.device),
    )
    split.groups = length_groups(widths, _forward_overhead(adapter)) if at_subject else [(split.origin, None)]
    return split


# A forward's fixed cost (dispatch, masks, a kernel launch per op) in FLOPs of work: what a
# sequence group must save to be worth its own forward. Measured order of magnitude: ~20 ms
# per forward of a 30-block model on a 2-core CPU (~100 GFLOP/s), a few ms on a GPU.
FORWARD_OVERHEAD_FLOPS = {"cpu": 2e9, "cuda": 5e11}
MAX_GROUPS = 3


def _forward_overhead(adapter: ModelAdapter) -> float:
    """The fixed cost of one more forward in positions' worth of work (one position: about
    24 d^2 FLOPs per block, forward and backward)."""
    per_position = 24 * adapter.hidden_size**2 * adapter.n_layers
    return FORWARD_OVERHEAD_FLOPS.get(adapter.device.type, FORWARD_OVERHEAD_FLOPS["cuda"]) / per_position


def length_groups(
    widths: torch.Tensor, overhead: float, max_groups: int = MAX_GROUPS
) -> list[tuple[torch.Tensor, int]]:
    """Sequences grouped by run width, each group one forward padded to its widest: the
    partition (of the sorted widths, at most ``max_groups`` groups) with the fewest padded
    positions plus ``overhead`` per extra forward. Returns (sequence indices, width) per group."""
    values = sorted(set(widths.tolist()))
    counts = [int((widths == v).sum()) for v in values]

    def cost(cuts: tuple[int, ...]) -> float:
        bounds = (0, *cuts, len(values))
        return sum(sum(counts[a:b]) * values[b - 1] for a, b in zip(bounds, bounds[1:])) + overhead * len(cuts)

    cuts = (c for k in range(max_groups) for c in combinations(range(1, len(values)), k))
    best = min(cuts, key=cost)
    bounds = (0, *best, len(values))
    groups = []
    for a, b in zip(bounds, bounds[1:]):
        member = (widths >= values[a]) & (widths <= values[b - 1])
        groups.append((member.nonzero().squeeze(1), values[b - 1]))
    return groups


@torch.no_grad()
def _initial_states(adapter: ModelAdapter, batch: _Batch, layer: int, points: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each point's output at the subject's last token of the plain prompt: (n x d); the
    forward runs the plain prompts only (right-padded, so they are unchanged by the others)."""
    rows, pos = batch.plain_rows, batch.lookup[batch.plain_rows]
    width = int(batch.inputs["attention_mask"][rows].sum(1).max())
    plain = {name: values[rows, :width] for name, values in batch.inputs.items()}
    acts = adapter.read_points(plain, [f"{p}.{layer}" for p in points])
    plain_rows = torch.arange(len(rows), device=pos.device)
    return {p: acts[f"{p}.{layer}"].to(adapter.device)[plain_rows, pos].float() for p in points}


def _hidden(adapter: ModelAdapter, batch: _Batch, prefix: PrefixRows | None, injected) -> torch.Tensor:
    """Final hidden states of the batch's run positions, one forward per width group (the
    frozen prefix, if any, replays each group's rows and width; ``injected(seqs)`` adds the
    vectors to the sequences ``seqs`` of the batch, None: all)."""
    if len(batch.groups) <= 1:
        if prefix is not None:
            prefix.select(batch.origin)
        with injected(None):
            return adapter.forward_split(batch.inputs)
    size = batch.inputs.input_ids.shape
    hidden = None
    for rows, width in batch.groups:
        if prefix is not None:
            prefix.select(batch.origin[rows], width)
        with injected(rows):
            part = adapter.forward_split(batch.inputs.rows(rows, width))
        if hidden is None:
            hidden = part.new_zeros(*size, part.shape[-1])
        hidden = hidden.index_put((rows[:, None], torch.arange(width, device=rows.device)[None, :]), part)
    return hidden


def _no_vectors(seqs) -> AbstractContextManager:
    return nullcontext()


def _losses(
    adapter: ModelAdapter,
    batch: _Batch,
    n: int,
    init_kl: torch.Tensor | None,
    members: torch.Tensor | None = None,
    prefix: PrefixRows | None = None,
    injected=_no_vectors,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per request, (n,) with zeros for requests not in ``batch``: NLL (mean per-token over
    prompts), KL(p_now || p_init) (not yet weighted by kl_factor), and whether the target is
    the argmax at every scored position of every prompt (PMET's adaptive rule reads it); and
    the KL log-probs of the requests in ``batch`` (``members``, in order; None: all n)."""
    hidden = _hidden(adapter, batch, prefix, injected)
    logits = adapter.logits_at(hidden[batch.nll_row, batch.nll_pos]).float()
    logprobs = torch.log_softmax(logits, dim=-1)
    token_logprob = logprobs.gather(1, batch.nll_tok[:, None]).squeeze(1)
    token_nll = -token_logprob
    nll = torch.zeros(n, device=logits.device).index_add(0, batch.rows[batch.nll_row], token_nll * batch.nll_weight)
    below_max = (token_logprob < logprobs.max(dim=-1).values).float().detach()
    at_argmax = torch.zeros(n, device=logits.device).index_add(0, batch.rows[batch.nll_row], below_max) == 0
    kl_logits = adapter.logits_at(hidden[batch.kl_rows, batch.lookup[batch.kl_rows]]).float()
    kl_logprobs = torch.log_softmax(kl_logits, dim=-1)
    kl = torch.zeros(n, device=logits.device)
    if init_kl is not None:
        init = init_kl if members is None else init_kl[members]
        part = F.kl_div(init, kl_logprobs, log_target=True, reduction="none").sum(-1)
        kl = part if members is None else kl.index_put((members,), part)
    return nll, kl_logprobs, kl, at_argmax


def _select(batch: _Batch, active: torch.Tensor) -> tuple[_Batch, torch.Tensor]:
    """The sub-batch of the ``active`` requests' sequences (request indices kept), and the
    indices of those sequences in ``batch``."""
    keep = active[batch.rows]
    seq = keep.nonzero().squeeze(1)
    renumber = torch.full_like(batch.rows, -1)
    renumber[seq] = torch.arange(len(seq), device=seq.device)
    tokens = keep[batch.nll_row]
    sub = _Batch(
        inputs=batch.inputs.rows(seq),
        rows=batch.rows[seq],
        lookup=batch.lookup[seq],
        nll_row=renumber[batch.nll_row[tokens]],
        nll_pos=batch.nll_pos[tokens],
        nll_tok=batch.nll_tok[tokens],
        nll_weight=batch.nll_weight[tokens],
        kl_rows=renumber[batch.kl_rows[active]],
        plain_rows=renumber[batch.plain_rows[active]],
        origin=batch.origin[seq],
        groups=[(renumber[rows[keep[rows]]], width) for rows, width in batch.groups if bool(keep[rows].any())],
    )
    return sub, seq


def optimise_targets(
    adapter: ModelAdapter,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    layer: int,
    settings: TargetConfig,
    points: Sequence[str] = ("block",),
) -> TargetResult:
    """Optimise one vector per request and point at ``layer``; see the module docstring.

    ``templates`` is the flat list of context templates, "{}" first.
    ``points`` are where vectors are added: "block" (MEMIT) or ("attn", "mlp") (PMET);
    each point has its own norm clamp and decay relative to its own output norm.
    ``settings.reuse_prefix``: blocks before the first one a vector touches run once, not every
    step (their activations cannot change); ``settings.reuse_past``: so do the positions
    before the subject's last token (cached keys and values). The result is the same.
    """
    n = len(requests)
    batch = _build_batch(adapter, requests, templates)
    h_init = _initial_states(adapter, batch, layer, points)
    batch = _split(adapter, batch, settings.reuse_past)
    deltas = {p: torch.zeros_like(h_init[p], requires_grad=True) for p in points}
    frozen_upto = (layer if points == ("block",) else layer - 1) if settings.reuse_prefix else -1
    with frozen_prefix(adapter, batch.inputs, frozen_upto) as prefix:
        steps, loss_init, nll = _adam_loop(adapter, batch, layer, points, settings, h_init, deltas, n, prefix)
    return TargetResult(
        layer=layer,
        points=tuple(points),
        h_init={p: h.detach() for p, h in h_init.items()},
        delta={p: d.detach().clone() for p, d in deltas.items()},
        steps=steps.tolist(),
        loss_init=loss_init.tolist(),
        loss_final=nll.detach().tolist(),
    )


def _injector(adapter: ModelAdapter, batch: _Batch, layer: int, points, deltas):
    """``injected(seqs)``: a context adding each request's vectors at the subject's last token
    of the batch's sequences ``seqs`` (None: all), for a forward on just those."""

    def injected(seqs: torch.Tensor | None) -> ExitStack:
        rows = batch.rows if seqs is None else batch.rows[seqs]
        lookup = batch.lookup if seqs is None else batch.lookup[seqs]
        stack = ExitStack()
        for p in points:
            stack.enter_context(adapter.inject(f"{p}.{layer}", deltas[p], rows, lookup))
        return stack

    return injected


def _adam_loop(adapter, batch, layer, points, settings, h_init, deltas, n, prefix):
    """The optimisation loop proper; returns (steps, initial NLL, NLL when each request stopped).

    A request whose loss falls below ``early_stop_loss`` keeps its vector from then on and,
    with ``drop_stopped``, leaves the forwards: the next steps run on the sub-batch of the
    others' sequences (the frozen prefix replays only their rows)."""
    opt = torch.optim.Adam(list(deltas.values()), lr=settings.lr)
    max_norm = {p: settings.clamp * h_init[p].norm(dim=1) for p in points}
    active = torch.ones(n, dtype=torch.bool, device=adapter.device)
    steps = torch.zeros(n, dtype=torch.long)
    nll_factor = torch.ones(n, device=adapter.device)
    part, members = batch, None  # the sequences run this step, and their requests (None: all)
    init_kl, loss_init = None, None
    final = torch.zeros(n, device=adapter.device)
    for it in range(settings.steps):
        fault_point("target")
        nll, kl_logprobs, kl, at_argmax = _losses(
            adapter, part, n, init_kl, members, prefix, _injector(adapter, part, layer, points, deltas)
        )
        if init_kl is None:
            init_kl = kl_logprobs.detach()
        decay = sum(settings.weight_decay * deltas[p].norm(dim=1) / h_init[p].norm(dim=1) ** 2 for p in points)
        loss = nll_factor * nll + settings.kl_factor * kl + decay
        if loss_init is None:
            loss_init = nll.detach().clone()
        final = torch.where(active, nll.detach(), final)
        active &= loss.detach() >= settings.early_stop_loss
        if settings.adaptive_nll:
            # PMET, in the reference's order: the loss above keeps this step's factor; the
            # next step's factor follows from this step's argmax, and a request whose target
            # is the argmax everywhere stops once its KL is small.
            active &= ~(at_argmax & (kl.detach() < ADAPTIVE_KL_STOP))
            nll_factor = torch.where(at_argmax, ADAPTIVE_NLL_FACTOR, 1.0)
        if not bool(active.any()) or it == settings.steps - 1:
            break
        frozen = {p: deltas[p].detach().clone() for p in points}
        opt.zero_grad()
        (loss * active).sum().backward()
        opt.step()
        steps += active.cpu().long()
        with torch.no_grad():
            for p in points:
                keep = ~active
                deltas[p][keep] = frozen[p][keep]
                norms = deltas[p].norm(dim=1)
                scale = torch.where(norms > max_norm[p], max_norm[p] / norms.clamp_min(1e-12), torch.ones_like(norms))
                deltas[p].mul_(scale[:, None])
        if settings.drop_stopped and int(active.sum()) < (n if members is None else len(members)):
            part, _ = _select(batch, active)
            members = active.nonzero().squeeze(1)
    return steps, loss_init, final
