"""Corpora for covariance statistics: bundled WikiText, local files, bad specs, offline Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blue_cli.editing.statistics import corpus
from blue_cli.editing.statistics.corpus import load_corpus, split_articles
from blue_cli.errors import ConfigError, DataError, OfflineError

WIKI = " = Alpha = \n Alpha text .\n = = History = = \n Old alpha .\n = Beta = \n Beta text .\n"


def test_bundled_wikitext_splits_into_articles() -> None:
    docs = load_corpus("wikitext-bundled")
    assert len(docs) > 10
    assert docs[0].startswith("Robert Boulter\n")
    assert all(doc.strip() for doc in docs)
    assert not any(doc.startswith("=") for doc in docs)  # sub-headings stay inside articles
    assert load_corpus("wikitext-bundled") == docs
    assert load_corpus("wikitext-bundled", max_docs=3) == docs[:3]


def test_split_keeps_subheadings_inside_articles() -> None:
    assert split_articles(WIKI) == [
        "Alpha\nAlpha text .\n = = History = = \n Old alpha .",
        "Beta\nBeta text .",
    ]


def test_local_txt_with_headings(tmp_path: Path) -> None:
    path = tmp_path / "wiki.txt"
    path.write_text(WIKI)
    assert len(load_corpus(str(path))) == 2


def test_local_txt_blank_lines_then_chunks(tmp_path: Path) -> None:
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("First para.\n\n  \nSecond para.\n\n\nThird.\n")
    assert load_corpus(str(paragraphs)) == ["First para.", "Second para.", "Third."]
    one_block = tmp_path / "block.txt"
    one_block.write_text(" ".join(["word"] * 2000))  # ~10k chars, no structure
    docs = load_corpus(str(one_block))
    assert 4 <= len(docs) <= 10
    assert all(len(doc) <= 2000 for doc in docs)
    assert " ".join(docs).split() == ["word"] * 2000


def test_local_json_and_jsonl(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n{"text": "  "}\n')
    assert load_corpus(str(jsonl)) == ["one", "two"]
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"text": "a"}, {"text": "b"}, {"text": "c"}]))
    assert load_corpus(str(js), max_docs=2) == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2"):
        load_corpus(str(bad))


def test_unknown_spec_names_value_and_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_corpus("wikipedai")
    message = str(info.value)
    assert "'wikipedai'" in message
    assert all(choice in message for choice in ("wikitext-bundled", "wikipedia", "wikitext"))


def test_hub_connection_error_becomes_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(corpus, "check_hub_reachable", lambda name: None)  # the probe answered
    for spec in ("wikipedia", "wikitext"):
        with pytest.raises(OfflineError, match=r"stats\.corpus=wikitext-bundled \(shipped with blue\) or the path"):
            load_corpus(spec, max_docs=5)


@pytest.mark.parametrize("spec", ["wikipedia", "wikitext"])
def test_a_hub_that_does_not_answer_is_one_line_before_the_datasets_client_retries(monkeypatch, spec) -> None:
    import datasets

    from tests.conftest import counting_server

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the datasets client was asked"))
    with counting_server(status=503) as (url, seen):
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(OfflineError) as info:
            load_corpus(spec, max_docs=5)
    assert len(seen) == 1  # one probe, no retries
    message = str(info.value)
    assert f"could not fetch the {spec} corpus from the Hugging Face Hub (HTTP 503" in message
    assert "stats.corpus=wikitext-bundled" in message and "wiki.test.raw" in message and "\n" not in message


def test_any_readable_text_file_is_a_corpus_whatever_its_suffix(tmp_path: Path) -> None:
    raw = tmp_path / "wiki.test.raw"
    raw.write_text(" = Robert Boulter = \n\n Robert Boulter is an English actor .\n = Ise = \n\n A town .\n")
    assert load_corpus(str(raw)) == ["Robert Boulter\nRobert Boulter is an English actor .", "Ise\nA town ."]


def test_http_client_transport_errors_are_recognised_without_importing_the_client() -> None:
    """httpx (huggingface_hub >= 1) and requests (older) raise their own errors; blue knows
    them by module and name, so neither needs to be a dependency."""
    from blue_cli.editing.statistics.corpus import is_transport_error

    def error_class(module: str, name: str, base: type = Exception) -> type:
        return type(name, (base,), {"__module__": module})

    transport = error_class("httpx._exceptions", "TransportError")
    connect = error_class("httpx._exceptions", "ConnectError", transport)
    assert is_transport_error(connect("refused"))
    assert is_transport_error(error_class("requests.exceptions", "ConnectTimeout")("slow"))
    assert is_transport_error(ConnectionError("down"))
    assert not is_transport_error(error_class("httpx._exceptions", "DecodingError")("bad body"))
    assert not is_transport_error(error_class("mylib", "ConnectError")("not an HTTP client"))
    assert not is_transport_error(ValueError("x"))


@pytest.mark.parametrize("spec", ["wikipedia", "wikitext"])
def test_offline_env_gives_offline_error_quickly(tmp_path: Path, spec: str) -> None:
    """A fresh process, because datasets reads HF_*_OFFLINE only when first imported."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = textwrap.dedent(
        f"""
        from blue_cli.editing.statistics.corpus import load_corpus
        from blue_cli.errors import OfflineError
        try:
            load_corpus({spec!r}, max_docs=10)
        except OfflineError as err:
            print("OFFLINE:", err)
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert "OFFLINE:" in result.stdout, result.stderr[-2000:]
    assert "stats.corpus=" in result.stdout
