"""The held-out perplexity text: disjoint from the covariance corpus, and the number it gives."""

from __future__ import annotations

import re

import pytest

from blue_cli.editing.statistics.corpus import BUNDLED_WIKITEXT_PATH
from blue_cli.errors import ConfigError
from blue_cli.evaluation.perplexity import BUNDLED_HELDOUT_PATH, heldout_text, token_windows
from tests.conftest import SHARED

TITLE = re.compile(r"^ = (?!=)(.+?) = $", re.MULTILINE)


def test_heldout_text_shares_no_article_and_no_sentence_with_the_covariance_corpus():
    heldout = BUNDLED_HELDOUT_PATH.read_text(encoding="utf-8")
    corpus = BUNDLED_WIKITEXT_PATH.read_text(encoding="utf-8")
    titles = set(TITLE.findall(heldout))
    assert titles == {"Nerva", "The Hustler ( film )"}
    assert not titles & set(TITLE.findall(corpus))
    sentences = {s.strip() for s in re.split(r" \. ", heldout) if len(s.strip()) > 40}
    assert len(sentences) > 100
    assert not [s for s in sentences if s in corpus]


def test_heldout_text_lies_after_the_covariance_excerpt_in_the_wikitext2_test_split():
    """Both are slices of the same file (shared/data PROVENANCE.md): the excerpt its first
    300 KB, the held-out text its last two articles, so they cannot overlap."""
    source = SHARED / "data" / "wikitext" / "wikitext-2-raw" / "wiki.test.raw"
    if not source.is_file():
        pytest.skip(f"{source} is not on this machine (the check above still holds)")
    text = source.read_bytes().decode("utf-8").replace("\r", "")
    excerpt = BUNDLED_WIKITEXT_PATH.read_text(encoding="utf-8")
    heldout = BUNDLED_HELDOUT_PATH.read_text(encoding="utf-8")
    assert text.startswith(excerpt)
    assert text.endswith(heldout) and len(text) - len(heldout) > len(excerpt)


def test_token_windows():
    ids = list(range(11))
    assert token_windows(ids, 100, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert token_windows(ids, 9, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a last window of one token predicts nothing
    with pytest.raises(ValueError):
        token_windows(ids, 10, 1)


def test_a_missing_text_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="eval.perplexity_text"):
        heldout_text(str(tmp_path / "nope.txt"))
