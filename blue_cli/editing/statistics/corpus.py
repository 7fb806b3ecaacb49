"""Text corpora whose hidden states give the key covariance used by MEMIT-style edits."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from blue_cli import ASSETS_DIR
from blue_cli.errors import ConfigError, DataError, OfflineError

BUNDLED_WIKITEXT = "wikitext-bundled"
BUNDLED_WIKITEXT_PATH = ASSETS_DIR / "data" / "wikitext_excerpt.txt"
CORPUS_CHOICES = (BUNDLED_WIKITEXT, "wikipedia", "wikitext")
CHUNK_CHARS = 2000
WIKIPEDIA_SEED = 1
_STREAM_BUFFER = 10_000

# A top-level WikiText heading: " = Title = ". Sub-headings (" = = Career = = ") do not match.
_HEADING = re.compile(r"^[ \t]*= (?!=)(.+?) =[ \t]*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def load_corpus(spec: str, *, max_docs: int | None = None) -> list[str]:
    """Return documents for ``spec``, in a deterministic order, at most ``max_docs`` of them.

    ``spec`` is ``"wikitext-bundled"`` (an excerpt shipped with the package, works
    offline), ``"wikipedia"`` or ``"wikitext"`` (Hugging Face Hub datasets), or the path
    of any readable text file (split into articles; WikiText's ``wiki.test.raw`` as it is)
    or a ``.json``/``.jsonl`` file (one ``"text"`` field per record). Local corpora keep file order; Wikipedia is
    shuffled with seed 1 so a prefix is a fair sample.
    """
    if max_docs is not None and max_docs < 1:
        raise ConfigError(f"max_docs must be >= 1 or unset, got {max_docs}")
    if spec == BUNDLED_WIKITEXT:
        docs = split_articles(BUNDLED_WIKITEXT_PATH.read_text(encoding="utf-8"))
    elif spec == "wikipedia":
        return _load_wikipedia(max_docs)
    elif spec == "wikitext":
        docs = _load_wikitext103()
    else:
        docs = _load_local(spec)
    return docs[:max_docs] if max_docs is not None else docs


def iter_corpus(spec: str, *, max_docs: int | None = None) -> Iterator[str]:
    """Documents of ``spec`` one at a time, in :func:`load_corpus`'s order.

    Wikipedia streams from the Hub (:func:`stream_texts` over a streaming dataset), so
    a consumer that stops early (statistics stop at ``stats.samples`` windows) never
    downloads more than it reads; local and bundled corpora are read as by load_corpus.
    """
    if spec != "wikipedia":
        yield from load_corpus(spec, max_docs=max_docs)
        return
    check_hub_reachable(spec)
    import datasets

    try:
        stream = datasets.load_dataset("wikimedia/wikipedia", "20231101.en", split="train", streaming=True)
        stream = stream.shuffle(seed=WIKIPEDIA_SEED, buffer_size=_STREAM_BUFFER)
        yield from stream_texts(stream, max_docs)
    except Exception as err:
        if not is_transport_error(err):
            raise
        raise _offline_error("wikipedia", err) from err


def stream_texts(rows: Iterable[Any], max_docs: int | None = None, field: str = "text") -> Iterator[str]:
    """The non-empty ``field`` of each row of a (streaming) dataset, read lazily, ``max_docs`` at most."""
    count = 0
    for row in rows:
        if max_docs is not None and count >= max_docs:
            return
        text = row.get(field) if isinstance(row, dict) else None
        if isinstance(text, str) and text.strip():
            count += 1
            yield text


def split_articles(text: str) -> list[str]:
    """Split raw text into documents: at top-level WikiText headings, else blank lines, else 2000-char chunks."""
    heads = list(_HEADING.finditer(text))
    if heads:
        docs = [text[: heads[0].start()]]
        ends = [h.start() for h in heads[1:]] + [len(text)]
        for head, end in zip(heads, ends):
            body = text[head.end() : end]
            docs.append(head.group(1).strip() + "\n" + body.strip())
    else:
        docs = _BLANK_LINES.split(text)
        if len([d for d in docs if d.strip()]) <= 1:
            docs = _chunk(text.strip(), CHUNK_CHARS)
    return [d.strip() for d in docs if d.strip()]


def _chunk(text: str, size: int) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters, breaking at whitespace when possible."""
    pieces = []
    while len(text) > size:
        cut = text.rfind(" ", size // 2, size)
        cut = cut if cut > 0 else size
        pieces.append(text[:cut])
        text = text[cut:].lstrip()
    pieces.append(text)
    return pieces


def _load_local(spec: str) -> list[str]:
    """Read a local corpus file; anything that is not one is a config mistake."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"unknown corpus {spec!r}: choose one of {', '.join(CORPUS_CHOICES)} "
            "or give the path of an existing text file (.json/.jsonl: records with a 'text' field)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read corpus file {path}: {err}") from err
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append(_parse_json(line, f"{path} line {number}"))
        return _texts(rows, path, "line", start=1)
    if path.suffix.lower() == ".json":
        rows = _parse_json(text, str(path))
        if not isinstance(rows, list):
            raise DataError(f"{path} should hold a JSON list of records with a 'text' field")
        return _texts(rows, path, "record", start=0)
    return split_articles(text)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON: {err}") from err


def _texts(rows: Iterable[Any], path: Path, unit: str, *, start: int) -> list[str]:
    """Pull the ``text`` field out of every record, dropping empty ones."""
    docs = []
    for number, row in enumerate(rows, start=start):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path}: {unit} {number} has no string 'text' field")
        if row["text"].strip():
            docs.append(row["text"])
    return docs


# The HTTP clients under datasets/huggingface_hub (httpx, or requests in older releases)
# raise their own transport errors; they are recognised by module, not imported here.
_TRANSPORT_MODULES = ("httpx", "httpcore", "requests", "urllib3", "aiohttp")
_TRANSPORT_WORDS = ("Connect", "Timeout", "Transport")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the Hub could not be reached' across datasets/hub versions."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:
        pass
    return tuple(errors)


def is_transport_error(err: BaseException) -> bool:
    """Whether ``err`` is a connection or timeout error of an HTTP client library."""
    if isinstance(err, _network_errors()):
        return True
    return any(
        cls.__module__.split(".")[0] in _TRANSPORT_MODULES and any(w in cls.__name__ for w in _TRANSPORT_WORDS)
        for cls in type(err).__mro__
    )


LOCAL_CORPUS_HINT = (
    f"pass a local corpus: stats.corpus={BUNDLED_WIKITEXT} (shipped with blue) or the path of a text file "
    "(e.g. WikiText's wiki.test.raw)"
)


def _offline_error(name: str, err: BaseException | str) -> OfflineError:
    reason = err if isinstance(err, str) else err.__class__.__name__
    return OfflineError(f"could not fetch the {name} corpus from the Hugging Face Hub ({reason}); {LOCAL_CORPUS_HINT}")


def check_hub_reachable(name: str) -> None:
    """Before a hub corpus is read: offline, or a hub that does not answer one short probe, is
    one line naming local corpora, instead of the datasets client's minute of retry lines."""
    from blue_cli.models.source import hub_endpoint, hub_offline, probe_hub

    if hub_offline():
        raise _offline_error(name, "offline mode is set")
    reason = probe_hub(hub_endpoint())
    if reason is not None:
        raise _offline_error(name, reason)


def _load_wikipedia(max_docs: int | None) -> list[str]:
    """English Wikipedia, shuffled with seed 1.

    With ``max_docs`` the dataset is streamed (shard order and a 10k-document buffer
    shuffled with the seed) so a small sample does not download the ~20 GB dump.
    """
    check_hub_reachable("wikipedia")
    import datasets

    name = "wikimedia/wikipedia"
    try:
        if max_docs is None:
            ds = datasets.load_dataset(name, "20231101.en", split="train")
            return list(ds.shuffle(seed=WIKIPEDIA_SEED)["text"])
        stream = datasets.load_dataset(name, "20231101.en", split="train", streaming=True)
        stream = stream.shuffle(seed=WIKIPEDIA_SEED, buffer_size=_STREAM_BUFFER)
        return [row["text"] for row in stream.take(max_docs)]
    except Exception as err:
        if not is_transport_error(err):
            raise
        raise _offline_error("wikipedia", err) from err


def _load_wikitext103() -> list[str]:
    """WikiText-103 train, whose rows are lines, rejoined and split into articles."""
    check_hub_reachable("wikitext")
    import datasets

    try:
        ds = datasets.load_dataset("Salesforce/wikitext", "wikitext-103-raw-v1", split="train")
    except Exception as err:
        if not is_transport_error(err):
            raise
        raise _offline_error("wikitext", err) from err
    return split_articles("".join(ds["text"]))
