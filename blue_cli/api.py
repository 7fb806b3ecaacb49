"""The Python API: edit a model already in memory, then measure it.

    from blue_cli import edit, evaluate
    result = edit(model, tokenizer, requests, method="memit", strategy="blue",
                  overrides=["model.layers=[1,2,3]", "method.target.steps=10"])
    scores = evaluate(result.model, tokenizer, requests)

The edits run through :class:`blue_cli.editing.session.EditSession`, the same code
the ``blue edit`` runner uses; settings compose from the same Hydra config tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from blue_cli.config.overrides import compose_config
from blue_cli.config.registry import dataset_class
from blue_cli.datasets.counterfact.records import parse_record
from blue_cli.datasets.records import EditRequest
from blue_cli.datasets.zsre.records import parse_zsre_record
from blue_cli.editing.session import build_session, seed_everything
from blue_cli.errors import DataError
from blue_cli.evaluation.summary import summarise
from blue_cli.models.adapter import ModelAdapter


@dataclass
class EditResult:
    """The edited model (the same object, edited in place), one diagnostics row per
    batch (as ``batches.jsonl``), and the method's final diagnostics (PRUNE)."""

    model: object
    batches: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def as_requests(records: Sequence[EditRequest | Mapping]) -> list[EditRequest]:
    """EditRequests from EditRequests, CounterFact records or zsRE (MEND) records."""
    out = []
    for index, raw in enumerate(records):
        if isinstance(raw, EditRequest):
            out.append(raw)
        elif isinstance(raw, Mapping) and "requested_rewrite" in raw:
            out.append(parse_record(raw, source="requests", index=index))
        elif isinstance(raw, Mapping) and "src" in raw:
            out.append(parse_zsre_record(raw, source="requests", index=index, case_id=index))
        else:
            raise DataError(f"requests[{index}]: not an EditRequest, a CounterFact record or a zsRE record")
    return out


def _config(method: str, strategy: str, overrides: Sequence[str], dataset: str = "counterfact"):
    return compose_config([f"method={method}", f"strategy={strategy}", f"dataset={dataset}", *overrides])


def edit(
    model,
    tokenizer,
    requests: Sequence[EditRequest | Mapping],
    *,
    method: str = "memit",
    strategy: str = "blue",
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
) -> EditResult:
    """Edit ``model`` in place with ``requests``, in batches of ``batch_size`` (default:
    the config's ``batch_size``), and return it with the per-batch diagnostics.

    ``overrides`` are Hydra overrides as on the command line; ``model.layers`` names the
    critical layers (a preset's, e.g. ``model=gpt2-xl``, or given explicitly), and
    ``stats.*`` the corpus for the covariance statistics (cached as for ``blue edit``).
    """
    cfg = _config(method, strategy, overrides)
    seed_everything(cfg.seed)
    adapter = ModelAdapter(model, tokenizer, name=cfg.model.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    session = build_session(cfg, adapter)
    items = as_requests(requests)
    size = batch_size or cfg.batch_size
    rows = [session.edit_batch(items[i : i + size], i // size) for i in range(0, len(items), size)]
    info = session.apply_evaluated_weights()
    return EditResult(model=model, batches=rows, info=info)


def evaluate(
    model,
    tokenizer,
    requests: Sequence[EditRequest | Mapping],
    *,
    dataset: str = "counterfact",
    overrides: Sequence[str] = (),
) -> dict:
    """The dataset's rates (means over cases) for ``requests`` on ``model`` as it is now."""
    cfg = compose_config([f"dataset={dataset}", *overrides])
    adapter = ModelAdapter(model, tokenizer, name=cfg.model.name)
    evaluator = dataset_class(cfg.dataset.name)(cfg.dataset, cfg.eval, seed=cfg.seed)
    evaluator.prepare()
    return summarise(evaluator.evaluate(adapter, as_requests(requests)))
