"""Finding and reading record files: shared by every dataset loader (CounterFact, zsRE).

One place decides what a ``path`` argument means (bundled sample, file, folder of
``*.json``, or ``None`` = download into the cache), how a JSON list is read, how
``offset``/``limit`` select records and how a file is validated, so all datasets behave
the same way; a dataset brings its :class:`RecordFormat` (its name, files and parser).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from blue_cli.cache import cache_root
from blue_cli.download import download_file
from blue_cli.errors import DataError

BUNDLED = "bundled"
MAX_TEXT_CHARS = 2000
"""Longest prompt, subject or target a record may hold: real records are under 300
characters, and a runaway one (a 10 MB prompt) would otherwise be tokenized and run
through the model, allocating tens of GB, before anything failed."""
T = TypeVar("T")


@dataclass(frozen=True)
class RecordFormat:
    """One dataset's files: ``label`` names it in messages, ``bundled_path`` is its offline
    sample, ``default_name`` its cached download's name when the URL gives none, and
    ``parse(raw, source, index, position)`` turns one record (``index`` in its file,
    ``position`` in the whole input) into an edit request or raises a one-line DataError."""

    label: str
    bundled_path: Path
    default_name: str
    parse: Callable[[Any, str, int, int], Any]


def load_records(
    fmt: RecordFormat, path: str | Path | None, *, offset: int, limit: int | None, url: str, cache_dir: Path | None
) -> list:
    """Every record of the files ``path`` means (see :func:`resolve_files`), parsed and checked
    before any is returned, then ``records[offset:offset + limit]``. Results are keyed by
    ``case_id``, so a repeated one is refused."""
    check_range(offset, limit)
    files = resolve_files(
        path,
        url=url,
        cache_dir=cache_dir,
        bundled_path=fmt.bundled_path,
        default_name=fmt.default_name,
        label=fmt.label,
        validate=lambda tmp, name: validate_records(fmt, tmp, name=name),
    )
    records: list = []
    seen: dict[int, str] = {}
    for file in files:
        for index, raw in enumerate(read_json_list(file, name=str(file), label=fmt.label)):
            request = fmt.parse(raw, str(file), index, len(records))
            if request.case_id in seen:
                raise DataError(
                    f"{file}: record {index}: case_id {request.case_id} already appeared in {seen[request.case_id]}"
                )
            seen[request.case_id] = file.name
            records.append(request)
    return select_range(records, offset, limit, describe_files(files))


def validate_records(fmt: RecordFormat, path: Path, *, name: str | None = None) -> None:
    """Raise DataError unless ``path`` is a non-empty JSON list of valid records. Used on
    downloads before they enter the cache; ``name`` is what messages call the file (e.g. its
    URL instead of a temporary path)."""
    label = name or str(path)
    records = read_json_list(Path(path), name=label, label=fmt.label)
    if not records:
        raise DataError(f"{label}: holds no records")
    for index, raw in enumerate(records):
        fmt.parse(raw, label, index, index)


def check_range(offset: int, limit: int | None) -> None:
    """Reject a negative offset or a limit below 1 before any file is read."""
    if offset < 0:
        raise DataError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1 or unset, got {limit}")


def select_range(records: Sequence[T], offset: int, limit: int | None, where: str) -> list[T]:
    """``records[offset:offset + limit]``, or a DataError when there is nothing to select."""
    if not records:
        raise DataError(f"{where} holds no records")
    if offset >= len(records):
        raise DataError(
            f"offset {offset} is past the end: {where} holds {len(records)} records "
            f"(valid offsets 0..{len(records) - 1})"
        )
    stop = None if limit is None else offset + limit
    return list(records[offset:stop])


def describe_files(files: Sequence[Path]) -> str:
    """How messages name the input: the file, or "N files in <folder>"."""
    return str(files[0]) if len(files) == 1 else f"{len(files)} files in {files[0].parent}"


def resolve_files(
    path: str | Path | None,
    *,
    url: str,
    cache_dir: Path | None,
    bundled_path: Path,
    default_name: str,
    label: str,
    validate: Callable[[Path, str], None],
) -> list[Path]:
    """Map a loader's ``path`` argument to the JSON files to read, downloading if needed.

    ``None`` means the file named by ``url``'s last path part (else ``default_name``)
    in ``cache_dir`` (default ``cache_root()/"data"``), fetched and checked with ``validate(tmp, url)``
    on first use; ``"bundled"`` means ``bundled_path``; a folder means its ``*.json``
    files sorted by name. ``label`` names the dataset in messages ("CounterFact").
    """
    if path is None:
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "data"
        dest = folder / (Path(urlparse(url).path).name or default_name)
        if not dest.is_file():
            download_file(url, dest, validate=lambda tmp: validate(tmp, url))
        return [dest]
    if str(path) == BUNDLED:
        path = bundled_path
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
        if not files:
            raise DataError(f"folder {path} contains no *.json files")
        return files
    if not path.is_file():
        raise DataError(f"{label} file not found: {path}")
    return [path]


def read_json_list(path: Path, *, name: str, label: str) -> list:
    """Parse a JSON file that must hold a list; ``name`` is how messages call it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{label} file not found: {name}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {name}: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{name} is not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise DataError(f"{name} should hold a JSON list of records, got {type(data).__name__}")
    return data


def field(obj: dict, key: str, kind: type, fail: Callable[[str], Exception], prefix: str = "") -> Any:
    """Fetch ``obj[key]`` and check its type (bool is not accepted as int).

    ``fail(problem)`` builds the error, so the message names the record's file and index.
    """
    if key not in obj:
        raise fail(f"missing key '{prefix}{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise fail(f"'{prefix}{key}' should be {kind.__name__}, got {type(value).__name__}")
    return value


def check_lengths(texts: dict[str, Any], fail: Callable[[str], Exception]) -> None:
    """Reject any text (or item of a list of texts) longer than :data:`MAX_TEXT_CHARS`.

    Run before any other check that quotes the text, so no message repeats a huge value.
    """
    for key, value in texts.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str) and len(item) > MAX_TEXT_CHARS:
                where = f"{key}[{i}]" if isinstance(value, (list, tuple)) else key
                raise fail(f"'{where}' is {len(item)} characters long (at most {MAX_TEXT_CHARS} allowed)")
