"""zsRE (MEND eval split): token accuracy of the new answer, its paraphrase, and NQ neighbours."""

from __future__ import annotations

from dataclasses import dataclass

from blue_cli.config.registry import register_dataset
from blue_cli.config.schema import DatasetConfig
from blue_cli.datasets.base import EditDataset
from blue_cli.datasets.zsre.records import CANONICAL_URL, load_zsre


@dataclass
class ZsreConfig(DatasetConfig):
    name: str = "zsre"
    url: str = CANONICAL_URL


@register_dataset("zsre", config=ZsreConfig)
class Zsre(EditDataset):
    """Rates are the reference's: efficacy = rewrite-question token accuracy, generalization =
    paraphrase, specificity = the NQ question's gold-answer accuracy (not agreement with
    the pre-edit model)."""

    def read(self, limit):
        return load_zsre(self.cfg.path, offset=self.cfg.offset, limit=limit, url=self.cfg.url)

    def evaluate(self, adapter, requests, progress=None):
        from blue_cli.datasets.zsre.metrics import evaluate_zsre

        return evaluate_zsre(adapter, requests, progress=progress)
