"""Fluency (n-gram entropy) and consistency (TF-IDF cosine) on hand-made inputs with known answers.

The snippet, IDF and vocabulary files are written into tmp_path by the tests; no ROME
download is needed (or attempted, except against a closed loopback port).
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from blue_cli.datasets.counterfact.consistency import (
    FAILED_DOWNLOAD_MARKER,
    FAILED_DOWNLOAD_WINDOW_S,
    SNIPPETS_FILE,
    ConsistencyResources,
    Unavailable,
    consistency_score,
    load_consistency_resources,
    tfidf_cosine,
    tfidf_vector,
)
from blue_cli.errors import DataError
from blue_cli.evaluation.fluency import fluency, ngram_entropy, text_entropy, words
from tests.conftest import counting_server

# --- fluency ---------------------------------------------------------------------


def test_words_split_punctuation_and_clitics() -> None:
    assert words("I don't like John's cats, really.") == [
        "I", "do", "n't", "like", "John", "'s", "cats", ",", "really", ".",
    ]  # fmt: skip


def test_entropy_of_a_b_a_b_by_hand() -> None:
    tokens = ["a", "b", "a", "b"]
    # bigrams ab, ba, ab -> p = (2/3, 1/3): H2 = -(2/3 log2 2/3 + 1/3 log2 1/3) = log2 3 - 2/3
    h2 = math.log2(3) - 2 / 3
    # trigrams aba, bab -> p = (1/2, 1/2): H3 = 1 bit
    assert ngram_entropy(tokens, 2) == pytest.approx(h2)
    assert ngram_entropy(tokens, 3) == pytest.approx(1.0)
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert expected == pytest.approx(0.9727653, abs=1e-7)
    assert text_entropy("a b a b") == pytest.approx(expected)


def test_fluency_is_the_mean_over_texts_and_short_texts_score_zero() -> None:
    # "x y z": one bigram kind each... bigrams xy, yz -> H2 = 1; one trigram -> H3 = 0.
    assert text_entropy("x y z") == pytest.approx((2 / 3 * 1.0 + 0.0) / 2)
    assert text_entropy("hello") == 0.0  # no bigrams at all, as the reference's empty sum
    assert fluency(["a b a b", "x y z"]) == pytest.approx(((2 / 3 * (math.log2(3) - 2 / 3) + 4 / 3) / 2 + 1 / 3) / 2)
    assert math.isnan(fluency([]))


def test_repetition_lowers_fluency() -> None:
    varied = "the cat sat on the mat while a dog slept under an old wooden table"
    repeated = "the cat the cat the cat the cat the cat the cat the cat the cat"
    assert text_entropy(repeated) < text_entropy(varied)


# --- TF-IDF cosine -----------------------------------------------------------------

VOCAB = {"apple": 0, "banana": 1, "cherry": 2}
IDF = np.array([1.0, 2.0, 3.0])


def test_tfidf_vector_counts_lowercased_vocabulary_words_of_two_or_more_chars() -> None:
    # "a" is one character (sklearn's \b\w\w+\b drops it); "kiwi" is not in the vocabulary.
    assert tfidf_vector("Apple APPLE banana kiwi a", IDF, VOCAB) == {0: 2.0, 1: 2.0}


def test_tfidf_cosine_by_hand() -> None:
    # a = [2*1, 1*2, 0] = [2, 2, 0]; b = [0, 1*2, 1*3] = [0, 2, 3]
    # cos = 4 / (sqrt(8) * sqrt(13))
    got = tfidf_cosine("Apple apple banana kiwi", "banana, cherry! a", IDF, VOCAB)
    assert got == pytest.approx(4 / math.sqrt(8 * 13))
    assert tfidf_cosine("apple", "apple apple", IDF, VOCAB) == pytest.approx(1.0)
    assert tfidf_cosine("apple", "cherry", IDF, VOCAB) == 0.0
    assert tfidf_cosine("nothing known", "apple", IDF, VOCAB) == 0.0  # zero vector: 0, not NaN


# --- resources ---------------------------------------------------------------------


def _write_resources(folder: Path, idf=IDF, vocab=VOCAB) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    snippets = [
        {"relation_id": "P1", "target_id": "Q9", "samples": [{"text": "Cherry cherry.", "name": "S1"}]},
        {"relation_id": "P2", "target_id": "Q9", "samples": [{"text": "apple", "name": "S2"}]},
        {"relation_id": "P1", "target_id": "Q9", "samples": [{"text": "banana", "name": "S3"}]},
    ]
    paths = (folder / "attribute_snippets.json", folder / "idf.npy", folder / "tfidf_vocab.json")
    paths[0].write_text(json.dumps(snippets), encoding="utf-8")
    np.save(paths[1], np.asarray(idf))
    paths[2].write_text(json.dumps(vocab), encoding="utf-8")
    return paths


def test_local_files_give_a_number_computed_by_hand(tmp_path: Path) -> None:
    snip, idf, vocab = _write_resources(tmp_path / "local")
    res = load_consistency_resources(snip, idf, vocab, download=False)
    assert isinstance(res, ConsistencyResources)
    # Both P1/Q9 entries are joined: "Cherry cherry. banana" -> [0, 1*2, 2*3] = [0, 2, 6].
    assert res.snippets[("P1", "Q9")] == ("Cherry cherry.", "banana")
    # Generations joined: "apple banana" + " " + "banana" -> [1, 2*2, 0] = [1, 4, 0].
    score = consistency_score(["apple banana", "banana"], "P1", "Q9", res)
    assert score == pytest.approx(8 / (math.sqrt(17) * math.sqrt(40)))
    assert math.isnan(consistency_score(["apple"], "P1", "Q404", res))


def test_cached_files_are_found_without_paths(tmp_path: Path) -> None:
    _write_resources(tmp_path / "cache")
    res = load_consistency_resources(download=False, cache_dir=tmp_path / "cache")
    assert isinstance(res, ConsistencyResources) and res.vocab == VOCAB


def test_download_from_a_base_url_fills_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    _write_resources(tmp_path / "served")
    cache = tmp_path / "cache"
    res = load_consistency_resources(cache_dir=cache, base_url=(tmp_path / "served").as_uri())
    assert isinstance(res, ConsistencyResources)
    assert sorted(p.name for p in cache.iterdir()) == ["attribute_snippets.json", "idf.npy", "tfidf_vocab.json"]


def test_nothing_local_and_no_downloads_is_unavailable_not_zero(tmp_path: Path) -> None:
    res = load_consistency_resources(download=False, cache_dir=tmp_path / "empty")
    assert isinstance(res, Unavailable)
    assert "attribute_snippets.json" in res.reason and "downloads are off" in res.reason
    assert str(res).startswith("unavailable: ") and "\n" not in str(res)


def test_unreachable_host_is_unavailable_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cache = tmp_path / "cache"
    connects = []
    real_connect = socket.create_connection

    def counted(*args, **kwargs):
        connects.append(args[0])
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    res = load_consistency_resources(cache_dir=cache, base_url=f"http://127.0.0.1:{port}/data/dsets", timeout=5)
    assert connects == [("127.0.0.1", port)]  # one refused connection, no retries, the other files not tried
    assert isinstance(res, Unavailable)
    assert f"http://127.0.0.1:{port}/data/dsets/attribute_snippets.json" in res.reason
    assert [p.name for p in cache.iterdir()] == [FAILED_DOWNLOAD_MARKER]  # no partial file, only the marker


def test_blue_offline_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    res = load_consistency_resources(cache_dir=tmp_path / "cache")
    assert isinstance(res, Unavailable) and "BLUE_OFFLINE" in res.reason


def test_bad_or_missing_given_files_are_user_errors(tmp_path: Path) -> None:
    snip, idf, vocab = _write_resources(tmp_path / "ok")
    with pytest.raises(DataError, match="consistency file not found: .*nope.npy"):
        load_consistency_resources(snip, tmp_path / "nope.npy", vocab)
    _, short_idf, _ = _write_resources(tmp_path / "short", idf=np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="'cherry' has column 2 but .* holds 2 IDF values"):
        load_consistency_resources(snip, short_idf, vocab)
    bad_snip = tmp_path / "bad.json"
    bad_snip.write_text(json.dumps([{"relation_id": "P1", "samples": []}]), encoding="utf-8")
    with pytest.raises(DataError, match="bad.json: entry 0: needs string 'relation_id', 'target_id'"):
        load_consistency_resources(bad_snip, idf, vocab)


def test_counterfact_records_carry_the_ids_that_key_the_snippets(tmp_path: Path) -> None:
    from blue_cli.datasets.counterfact.records import BUNDLED, BUNDLED_PATH, load_counterfact

    first = load_counterfact(BUNDLED, limit=1)[0]
    assert (first.relation_id, first.target_new_id) == ("P127", "Q6346")
    raw = json.loads(BUNDLED_PATH.read_text(encoding="utf-8"))[:1]
    del raw[0]["requested_rewrite"]["relation_id"]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    assert load_counterfact(path)[0].relation_id == ""  # optional: only consistency needs it
    raw[0]["requested_rewrite"]["target_new"]["id"] = 6346
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(DataError, match="record 0: 'requested_rewrite.target_new.id' should be str, got int"):
        load_counterfact(path)


# --- a failed download is remembered, not retried by every run -------------------------


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_a_failed_download_is_not_retried_by_the_next_run(tmp_path: Path, online: None) -> None:
    cache = tmp_path / "cache"
    with counting_server(404) as (url, requests):
        first = load_consistency_resources(cache_dir=cache, base_url=url, timeout=5)
        assert requests == ["/attribute_snippets.json"]
        second = load_consistency_resources(cache_dir=cache, base_url=url, timeout=5)
        assert requests == ["/attribute_snippets.json"]  # no second request
    assert isinstance(first, Unavailable) and isinstance(second, Unavailable)
    marker = cache / FAILED_DOWNLOAD_MARKER
    assert first.reason in second.reason and str(marker) in second.reason and "delete it to retry" in second.reason
    assert "\n" not in str(second)
    assert json.loads(marker.read_text())["url"] == f"{url}/attribute_snippets.json"


def test_the_marker_lapses_after_its_window_and_a_success_clears_it(tmp_path: Path, online: None) -> None:
    served, cache = tmp_path / "served", tmp_path / "cache"
    served.mkdir()
    base = served.as_uri()
    assert isinstance(load_consistency_resources(cache_dir=cache, base_url=base), Unavailable)
    _write_resources(served)  # the site is back, but within the window nobody looks
    assert isinstance(load_consistency_resources(cache_dir=cache, base_url=base), Unavailable)
    assert not (cache / SNIPPETS_FILE).exists()
    marker = cache / FAILED_DOWNLOAD_MARKER
    record = json.loads(marker.read_text())
    record["time"] -= FAILED_DOWNLOAD_WINDOW_S + 1
    marker.write_text(json.dumps(record), encoding="utf-8")
    assert isinstance(load_consistency_resources(cache_dir=cache, base_url=base), ConsistencyResources)
    assert not marker.exists()


def test_a_marker_for_another_site_or_blue_offline_changes_nothing(tmp_path: Path, online: None, monkeypatch) -> None:
    cache = tmp_path / "cache"
    with counting_server(404) as (url, requests):
        load_consistency_resources(cache_dir=cache, base_url=url, timeout=5)
        with counting_server(404) as (other, other_requests):
            load_consistency_resources(cache_dir=cache, base_url=other, timeout=5)
        assert other_requests == ["/attribute_snippets.json"]
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    res = load_consistency_resources(cache_dir=tmp_path / "never-online")
    assert isinstance(res, Unavailable) and "BLUE_OFFLINE" in res.reason
    assert not (tmp_path / "never-online").exists()  # a refusal is not a failure to remember
