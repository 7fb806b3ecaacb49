"""Data loading: CounterFact and zsRE edit requests, downloads and text corpora for covariance statistics."""

from blue_cli.data.corpus import CORPUS_CHOICES, load_corpus
from blue_cli.data.counterfact import (
    BUNDLED,
    BUNDLED_PATH,
    CANONICAL_URL,
    load_counterfact,
    validate_counterfact_file,
)
from blue_cli.data.download import download_file
from blue_cli.data.records import EditRequest
from blue_cli.data.zsre import load_zsre, validate_zsre_file

__all__ = [
    "BUNDLED",
    "BUNDLED_PATH",
    "CANONICAL_URL",
    "CORPUS_CHOICES",
    "EditRequest",
    "download_file",
    "load_corpus",
    "load_counterfact",
    "load_zsre",
    "validate_counterfact_file",
    "validate_zsre_file",
]
