"""Stdlib-only downloads that either produce a complete, validated file or nothing at all."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from blue_cli import DISTRIBUTION, __version__
from blue_cli.cache import atomic_path
from blue_cli.errors import BlueError, DataError, OfflineError

_CHUNK = 1 << 20
_TRUE = {"1", "true", "yes", "on"}


def offline_requested() -> bool:
    """True when ``BLUE_OFFLINE`` asks us never to touch the network."""
    return os.environ.get("BLUE_OFFLINE", "").strip().lower() in _TRUE


def download_file(
    url: str,
    dest: Path,
    *,
    validate: Callable[[Path], None] | None = None,
    timeout: float = 30,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` and return ``dest``.

    The body is streamed to a temp file beside ``dest``, checked with ``validate``
    and only then renamed into place, so an interrupted or invalid download never
    leaves a file that a later run would trust. ``progress(bytes_done, total)`` is
    called after every chunk (``total`` is None when the server does not say).
    """
    dest = Path(dest)
    by_hand = f"to work offline, put the file at {dest} by hand"
    if offline_requested():
        raise OfflineError(f"BLUE_OFFLINE is set, so {url} was not downloaded; {by_hand}")
    request = urllib.request.Request(url, headers={"User-Agent": f"{DISTRIBUTION}/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_path(dest) as tmp:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            with tmp.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            if total is not None and done < total:
                raise OfflineError(f"download of {url} stopped after {done} of {total} bytes; {by_hand}")
            if validate is not None:
                _run_validate(validate, tmp, url)
    except urllib.error.HTTPError as err:
        raise DataError(f"could not download {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err.__class__.__name__
        raise OfflineError(f"could not download {url} ({reason}); {by_hand}") from err
    return dest


def _run_validate(validate: Callable[[Path], None], tmp: Path, url: str) -> None:
    """Turn any validator failure into a DataError that names the URL, not the temp file."""
    try:
        validate(tmp)
    except BlueError as err:
        raise DataError(f"downloaded {url} is not valid: {err}") from err
    except Exception as err:  # a validator bug or parse error still means "do not keep it"
        raise DataError(f"downloaded {url} is not valid: {err.__class__.__name__}: {err}") from err
