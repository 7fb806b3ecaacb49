"""Consistency (the reference's ``reference_score``): TF-IDF cosine of generations to Wikipedia.

Per CounterFact case (ROME/MEMIT ``test_generation``): join the case's generated texts
with " ", join the Wikipedia snippets about other subjects that have the relation's
new target (``attribute_snippets.json`` keyed by relation id and target id) with " ",
and take the cosine of their TF-IDF vectors. The vectors use the reference's fixed
vocabulary (``tfidf_vocab.json``, term -> column) and IDF (``idf.npy``), as its
sklearn ``TfidfVectorizer(vocabulary=...)`` with ``idf_`` set does: lowercase, tokens
matching ``(?u)\\b\\w\\w+\\b``, raw in-vocabulary term counts times IDF (sklearn's L2
row normalisation does not change a cosine). The summary prints the mean x 100.

The three files come from the ROME data host (the URLs in ROME's ``dsets/attr_snippets.py``
and ``dsets/tfidf_stats.py``) into ``cache_root()/"data"``, or from local paths. When
they cannot be had (offline, download failed, downloads off), the loader returns
:class:`Unavailable` with a one-line reason, so callers report "unavailable: <reason>"
rather than a made-up 0. A failed download is remembered for an hour in a marker file
beside them (``FAILED_DOWNLOAD_MARKER``): every run of a sweep would otherwise wait on the
same unreachable host again, and each would log its own failure.

Differs from reference: a text with no vocabulary word has cosine 0 here (the
reference divides by a zero norm and gets NaN); a case whose (relation, target) has no
snippets scores NaN with a warning (the reference asserts).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blue_cli.cache import cache_root, write_json_atomic
from blue_cli.download import download_file, offline_requested
from blue_cli.errors import DataError, OfflineError

log = logging.getLogger(__name__)

ROME_DSETS_URL = "https://rome.baulab.info/data/dsets"
SNIPPETS_FILE, IDF_FILE, VOCAB_FILE = "attribute_snippets.json", "idf.npy", "tfidf_vocab.json"
FAILED_DOWNLOAD_MARKER = "consistency_download_failed.json"
"""Beside the files in the cache: the last failed download (base URL, URL, reason, time)."""
FAILED_DOWNLOAD_WINDOW_S = 3600.0
"""How long a failed download stands for the site: runs in that hour say why without connecting."""
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")
"""sklearn's default ``token_pattern``."""

__all__ = [
    "ConsistencyResources",
    "Unavailable",
    "consistency_score",
    "load_consistency_resources",
    "tfidf_cosine",
    "tfidf_vector",
]


@dataclass(frozen=True)
class ConsistencyResources:
    """Snippet texts per (relation_id, target_id), the IDF (V,) and the vocabulary term -> column."""

    snippets: Mapping[tuple[str, str], tuple[str, ...]]
    idf: np.ndarray
    vocab: Mapping[str, int]


@dataclass(frozen=True)
class Unavailable:
    """Consistency cannot be computed; ``reason`` is one line for summary.json and the console."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


def tfidf_vector(text: str, idf: Sequence[float] | np.ndarray, vocab: Mapping[str, int]) -> dict[int, float]:
    """Sparse TF-IDF vector {column: count x idf} of ``text`` (out-of-vocabulary words dropped)."""
    counts = Counter(vocab[t] for t in TOKEN_PATTERN.findall(text.lower()) if t in vocab)
    return {col: n * float(idf[col]) for col, n in counts.items()}


def tfidf_cosine(text_a: str, text_b: str, idf: Sequence[float] | np.ndarray, vocab: Mapping[str, int]) -> float:
    """Cosine of the two texts' TF-IDF vectors; 0 if either has no vocabulary word."""
    a, b = tfidf_vector(text_a, idf, vocab), tfidf_vector(text_b, idf, vocab)
    norm_a = math.sqrt(sum(v * v for v in a.values()))
    norm_b = math.sqrt(sum(v * v for v in b.values()))
    if norm_a == 0 or norm_b == 0:
        return 0.0
    return sum(v * b.get(col, 0.0) for col, v in a.items()) / (norm_a * norm_b)


def consistency_score(
    generations: Sequence[str], relation_id: str, target_new_id: str, resources: ConsistencyResources
) -> float:
    """TF-IDF cosine of the joined generations to the joined snippets for (relation, target)."""
    snippets = resources.snippets.get((relation_id, target_new_id), ())
    if not snippets or not generations:
        log.warning(
            "no %s for relation %r, target %r: consistency is NaN for this case",
            "snippets" if not snippets else "generations",
            relation_id,
            target_new_id,
        )
        return float("nan")
    return tfidf_cosine(" ".join(generations), " ".join(snippets), resources.idf, resources.vocab)


def load_consistency_resources(
    snippets_path: str | Path | None = None,
    idf_path: str | Path | None = None,
    vocab_path: str | Path | None = None,
    *,
    download: bool = True,
    cache_dir: Path | None = None,
    base_url: str = ROME_DSETS_URL,
    timeout: float = 30,
) -> ConsistencyResources | Unavailable:
    """Load the snippets, IDF and vocabulary, or say why they are unavailable.

    A path that is given must exist (else DataError: a typo should fail before model
    time). A path left ``None`` means the file of that name in ``cache_dir`` (default
    ``cache_root()/"data"``), downloaded from ``base_url`` when missing and ``download``
    is on. A failed or forbidden download (``BLUE_OFFLINE``) gives :class:`Unavailable`;
    after a failure, calls within ``FAILED_DOWNLOAD_WINDOW_S`` give the same reason
    without connecting (:func:`_fetch`).
    """
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "data"
    wanted = ((snippets_path, SNIPPETS_FILE, _check_snippets), (idf_path, IDF_FILE, _check_idf))
    wanted += ((vocab_path, VOCAB_FILE, _check_vocab),)
    paths: list[Path] = []
    for given, name, check in wanted:
        if given is not None:
            path = Path(given).expanduser()
            if not path.is_file():
                raise DataError(f"consistency file not found: {path} (expected ROME's {name})")
            paths.append(path)
            continue
        dest = folder / name
        if not dest.is_file():
            if not download:
                return Unavailable(f"{name} is not in {folder} and downloads are off")
            failed = _fetch(base_url, name, check, dest, timeout)
            if failed is not None:
                return failed
        paths.append(dest)
    snippets = _check_snippets(paths[0], str(paths[0]))
    idf = _check_idf(paths[1], str(paths[1]))
    vocab = _check_vocab(paths[2], str(paths[2]))
    bad = [term for term, col in vocab.items() if col >= len(idf)]
    if bad:
        raise DataError(
            f"{paths[2]}: term {bad[0]!r} has column {vocab[bad[0]]} but {paths[1]} holds {len(idf)} IDF values"
        )
    return ConsistencyResources(snippets=snippets, idf=idf, vocab=vocab)


def _fetch(base_url: str, name: str, check, dest: Path, timeout: float) -> Unavailable | None:
    """Download ``name`` from ``base_url`` into ``dest``: None on success, else why not.

    A failure (network, HTTP status, invalid file) is written to the marker beside
    ``dest`` and stands for ``base_url`` for ``FAILED_DOWNLOAD_WINDOW_S``; a success
    removes it. ``BLUE_OFFLINE`` is a refusal, not a failure, and leaves no marker.
    """
    marker = dest.parent / FAILED_DOWNLOAD_MARKER
    known = None if offline_requested() else _recent_failure(marker, base_url)
    if known is not None:
        return known
    url = f"{base_url.rstrip('/')}/{name}"
    try:
        download_file(url, dest, validate=lambda tmp, c=check, u=url: c(tmp, u), timeout=timeout)
    except (OfflineError, DataError) as err:
        if not offline_requested():
            write_json_atomic(marker, {"base_url": base_url, "url": url, "reason": str(err), "time": time.time()})
        return Unavailable(str(err))
    marker.unlink(missing_ok=True)
    return None


def _recent_failure(marker: Path, base_url: str) -> Unavailable | None:
    """The marker's failure as :class:`Unavailable` while it is recent and for ``base_url``, else None."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        when, reason, url = float(record["time"]), str(record["reason"]), record["base_url"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as err:
        log.info("ignoring unreadable download marker %s (%s)", marker, err)
        return None
    age = time.time() - when
    if url != base_url or not 0 <= age < FAILED_DOWNLOAD_WINDOW_S:
        return None
    retry = time.strftime("%H:%M", time.localtime(when + FAILED_DOWNLOAD_WINDOW_S))
    return Unavailable(
        f"{reason} [failed {age / 60:.0f} min ago, not retried before {retry}: {marker}; delete it to retry]"
    )


def _read_json(path: Path, name: str) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {name}: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{name} is not valid JSON: {err}") from err


def _check_snippets(path: Path, name: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """Parse ``attribute_snippets.json``: [{relation_id, target_id, samples: [{text}]}]."""
    data = _read_json(path, name)
    if not isinstance(data, list):
        raise DataError(f"{name} should hold a JSON list of snippet groups, got {type(data).__name__}")
    grouped: dict[tuple[str, str], list[str]] = {}
    for index, group in enumerate(data):
        ok = isinstance(group, dict) and isinstance(group.get("samples"), list)
        ok = ok and isinstance(group.get("relation_id"), str) and isinstance(group.get("target_id"), str)
        if not ok:
            raise DataError(f"{name}: entry {index}: needs string 'relation_id', 'target_id' and a list 'samples'")
        texts = grouped.setdefault((group["relation_id"], group["target_id"]), [])
        for sample in group["samples"]:
            if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
                raise DataError(f"{name}: entry {index}: every sample needs a string 'text'")
            texts.append(sample["text"])
    return {key: tuple(texts) for key, texts in grouped.items()}


def _check_idf(path: Path, name: str) -> np.ndarray:
    """Load ``idf.npy``: a 1-D array of finite floats."""
    try:
        idf = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{name} is not a numpy .npy array: {err}") from err
    if idf.ndim != 1 or not np.issubdtype(idf.dtype, np.number) or not np.isfinite(idf).all():
        raise DataError(f"{name} should hold a 1-D array of finite numbers, got shape {idf.shape}, {idf.dtype}")
    return idf.astype(np.float64)


def _check_vocab(path: Path, name: str) -> dict[str, int]:
    """Load ``tfidf_vocab.json``: {term: column >= 0}."""
    data = _read_json(path, name)
    if not isinstance(data, dict):
        raise DataError(f"{name} should hold a JSON object term -> column, got {type(data).__name__}")
    for term, col in data.items():
        if not isinstance(col, int) or isinstance(col, bool) or col < 0:
            raise DataError(f"{name}: term {term!r} has column {col!r}; columns must be integers >= 0")
    return data
