"""CounterFact: probability rates, and generations scored for fluency and consistency."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from blue_cli.config.registry import register_dataset
from blue_cli.config.schema import DatasetConfig
from blue_cli.datasets.base import EditDataset
from blue_cli.datasets.counterfact.records import CANONICAL_URL, load_counterfact

log = logging.getLogger(__name__)


@dataclass
class CounterfactConfig(DatasetConfig):
    """``snippets_path``/``idf_path``/``vocab_path``: ROME's consistency files; unset means
    the cache, downloaded there when missing and ``consistency_download`` is on."""

    name: str = "counterfact"
    url: str = CANONICAL_URL
    snippets_path: Optional[str] = None
    idf_path: Optional[str] = None
    vocab_path: Optional[str] = None
    consistency_download: bool = True


@register_dataset("counterfact", config=CounterfactConfig)
class CounterFact(EditDataset):
    """Efficacy, generalization and specificity from teacher-forced NLLs (the reference's
    mcf metrics); with ``eval.generation``, per case the fluency (weighted bi/tri-gram
    entropy) and consistency (TF-IDF cosine with Wikipedia snippets) of top-k
    generations on the record's generation prompts."""

    def __init__(self, cfg, eval_cfg, seed=0):
        super().__init__(cfg, eval_cfg, seed)
        self.resources = None

    def read(self, limit):
        return load_counterfact(self.cfg.path, offset=self.cfg.offset, limit=limit, url=self.cfg.url)

    def prepare(self):
        from blue_cli.datasets.counterfact.consistency import Unavailable, load_consistency_resources

        if not self.eval_cfg.generation:
            return {}
        self.resources = load_consistency_resources(
            self.cfg.snippets_path, self.cfg.idf_path, self.cfg.vocab_path, download=self.cfg.consistency_download
        )
        if isinstance(self.resources, Unavailable):
            log.warning("consistency %s", self.resources)
            return {"consistency_unavailable": self.resources.reason}
        return {}

    def evaluate(self, adapter, requests, progress=None):
        from blue_cli.datasets.counterfact.generation import Sampling, evaluate_generation
        from blue_cli.datasets.counterfact.metrics import evaluate_counterfact

        cases = evaluate_counterfact(adapter, requests, progress=progress)
        if self.eval_cfg.generation:
            ev = self.eval_cfg
            generated = evaluate_generation(
                adapter,
                requests,
                resources=self.resources,
                every_n_cases=ev.generation_every_n_cases,
                sampling=Sampling(
                    max_length=ev.generation_length,
                    top_k=ev.generation_top_k,
                    seed=self.seed,
                    batch_size=ev.generation_batch_size,
                ),
            )
            by_id = {c["case_id"]: c for c in cases}
            for row in generated:
                by_id[row["case_id"]].update({k: v for k, v in row.items() if k != "case_id"})
        return cases
