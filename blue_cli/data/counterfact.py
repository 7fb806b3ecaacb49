"""Load CounterFact (ROME/MEMIT ``multi_counterfact`` format) into :class:`EditRequest` records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from blue_cli.cache import cache_root
from blue_cli.data.download import download_file
from blue_cli.data.records import EditRequest
from blue_cli.errors import DataError

CANONICAL_URL = "https://rome.baulab.info/data/dsets/multi_counterfact.json"
BUNDLED = "bundled"
BUNDLED_PATH = Path(__file__).resolve().parent.parent / "assets" / "data" / "counterfact_sample.json"
"""300 records (the first of shared ``random_subset_1.json``; CounterFact is MIT) so runs work offline."""

_PROMPT_LISTS = ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts")


def load_counterfact(
    path: str | Path | None,
    *,
    offset: int = 0,
    limit: int | None = None,
    url: str = CANONICAL_URL,
    cache_dir: Path | None = None,
) -> list[EditRequest]:
    """Read edit requests and return ``records[offset:offset + limit]``.

    ``path`` is one of:

    * a JSON file holding a list of CounterFact records;
    * a folder: every ``*.json`` in it, sorted by file name, concatenated in that
      order (e.g. a folder of ``random_subset_*.json`` files);
    * ``"bundled"`` (:data:`BUNDLED`): the 300-record sample shipped in the package;
    * ``None``: the full file from ``url`` cached in ``cache_dir`` (default
      ``cache_root()/"data"``), downloaded and validated on first use.

    Every record is validated (not only the selected ones) so a bad file fails
    before any model time is spent; extra keys are ignored. Duplicate ``case_id``s
    are rejected because results are keyed by them.
    """
    if offset < 0:
        raise DataError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1 or unset, got {limit}")
    files = _resolve_files(path, url=url, cache_dir=cache_dir)
    records: list[EditRequest] = []
    seen: dict[int, str] = {}
    for file in files:
        for index, raw in enumerate(_read_json_list(file, name=str(file))):
            request = parse_record(raw, source=str(file), index=index)
            if request.case_id in seen:
                raise DataError(
                    f"{file}: record {index}: case_id {request.case_id} "
                    f"already appeared in {seen[request.case_id]}"
                )
            seen[request.case_id] = file.name
            records.append(request)
    where = str(files[0]) if len(files) == 1 else f"{len(files)} files in {files[0].parent}"
    if not records:
        raise DataError(f"{where} holds no records")
    if offset >= len(records):
        raise DataError(
            f"offset {offset} is past the end: {where} holds {len(records)} records "
            f"(valid offsets 0..{len(records) - 1})"
        )
    stop = None if limit is None else offset + limit
    return records[offset:stop]


def validate_counterfact_file(path: Path, *, name: str | None = None) -> None:
    """Raise DataError unless ``path`` is a non-empty JSON list of valid records.

    Used on downloads before they enter the cache; ``name`` is what messages call
    the file (e.g. its URL instead of a temp path).
    """
    label = name or str(path)
    records = _read_json_list(Path(path), name=label)
    if not records:
        raise DataError(f"{label}: holds no records")
    for index, raw in enumerate(records):
        parse_record(raw, source=label, index=index)


def parse_record(raw: Any, *, source: str, index: int) -> EditRequest:
    """Convert one raw CounterFact dict, or raise a one-line DataError naming file and index."""

    def fail(problem: str) -> DataError:
        return DataError(f"{source}: record {index}: {problem}")

    if not isinstance(raw, dict):
        raise fail(f"expected an object, got {type(raw).__name__}")
    rewrite = _field(raw, "requested_rewrite", dict, fail)
    case_id = _field(raw, "case_id", int, fail)
    subject = _field(rewrite, "subject", str, fail, "requested_rewrite.")
    prompt = _field(rewrite, "prompt", str, fail, "requested_rewrite.")
    targets = []
    for key in ("target_new", "target_true"):
        target = _field(rewrite, key, dict, fail, "requested_rewrite.")
        text = _field(target, "str", str, fail, f"requested_rewrite.{key}.")
        if not text.strip():
            raise fail(f"requested_rewrite.{key}.str is empty")
        targets.append(text)
    if "{}" not in prompt:
        raise fail(f"requested_rewrite.prompt {prompt!r} has no '{{}}' placeholder for the subject")
    if not subject.strip():
        raise fail("requested_rewrite.subject is empty")
    lists = []
    for key in _PROMPT_LISTS:
        value = _field(raw, key, list, fail)
        if not all(isinstance(item, str) for item in value):
            raise fail(f"{key} must be a list of strings")
        lists.append(tuple(value))
    return EditRequest(case_id, subject, prompt, targets[0], targets[1], *lists)


def _field(obj: dict, key: str, kind: type, fail: Any, prefix: str = "") -> Any:
    """Fetch ``obj[key]`` and check its type (bool is not accepted as int)."""
    if key not in obj:
        raise fail(f"missing key '{prefix}{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise fail(f"'{prefix}{key}' should be {kind.__name__}, got {type(value).__name__}")
    return value


def _resolve_files(path: str | Path | None, *, url: str, cache_dir: Path | None) -> list[Path]:
    """Map the ``path`` argument to the concrete JSON files to read, downloading if needed."""
    if path is None:
        folder = Path(cache_dir) if cache_dir is not None else cache_root() / "data"
        dest = folder / (Path(urlparse(url).path).name or "multi_counterfact.json")
        if not dest.is_file():
            download_file(url, dest, validate=lambda tmp: validate_counterfact_file(tmp, name=url))
        return [dest]
    if str(path) == BUNDLED:
        path = BUNDLED_PATH
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
        if not files:
            raise DataError(f"folder {path} contains no *.json files")
        return files
    if not path.is_file():
        raise DataError(f"CounterFact file not found: {path}")
    return [path]


def _read_json_list(path: Path, *, name: str) -> list:
    """Parse a JSON file that must hold a list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"CounterFact file not found: {name}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {name}: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{name} is not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise DataError(f"{name} should hold a JSON list of records, got {type(data).__name__}")
    return data
