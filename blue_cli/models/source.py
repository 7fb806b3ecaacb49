"""What ``model.source`` may be, checked without torch before a run folder exists.

A source is a bundled tiny preset, a model fetched from the package index (packaged.py),
a local folder holding a saved model and its tokenizer, a GGUF file (or a folder holding
one; see gguf.py), or a hub id (``name`` or ``owner/name``). Anything else (``../../etc``, a
URL, a typo'd path) is refused in one line here instead of surfacing later as a
transformers traceback, or as a minute of hub retries for a name the hub cannot have.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

from blue_cli.download import offline_requested
from blue_cli.errors import ConfigError, OfflineError
from blue_cli.models.gguf import check_gguf_packages, gguf_file_of
from blue_cli.models.packaged import fetched_file, is_packaged
from blue_cli.models.tiny import is_tiny

log = logging.getLogger(__name__)

# One short look at the hub before a download: the hub client's own retries and
# timeouts spend about a minute (and print a warning per retry) on an unreachable hub.
HUB_PROBE_TIMEOUT_S = 3.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"

# The hub's own rule: letters, digits, '-', '_', '.', at most 96 characters a part,
# no '--' or '..' (see huggingface_hub's validate_repo_id).
_HUB_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")

# Any of these next to config.json means a tokenizer was saved with the model.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def is_hub_id(source: str) -> bool:
    """Whether ``source`` is spelled like a hub repository id."""
    return bool(_HUB_ID.match(source)) and "--" not in source and ".." not in source


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1 or ".." in source


def hub_offline() -> bool:
    """True when neither blue (``BLUE_OFFLINE``) nor the hub client (``HF_HUB_OFFLINE``) may use the network."""
    hf = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return offline_requested() or hf


def offline_message(source: str) -> str:
    return (
        f"model '{source}' is not in the local Hugging Face cache and the hub cannot be reached "
        "(download it on a connected machine, or set model.source to a local folder)"
    )


def unreachable_message(source: str, endpoint: str, reason: str) -> str:
    return (
        f"model '{source}' is not in the local Hugging Face cache and the hub at {endpoint} cannot be reached "
        f"({reason}); download it on a connected machine or set model.source to a local folder, "
        "and set BLUE_OFFLINE=1 to skip the hub"
    )


def hub_endpoint() -> str:
    """The hub the client would use: ``HF_ENDPOINT`` (a mirror, or a test's loopback server), else huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_HUB_ENDPOINT


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is already an answer: following it could only add a second host to wait for."""

    def redirect_request(self, *args, **kwargs):
        return None


def probe_hub(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """One HEAD request to ``endpoint``: None when the hub answers, else why it did not.

    Any HTTP status below 500 counts as reachable (the hub client then reports a missing
    or gated model itself); a 5xx, often a proxy that cannot reach the hub, does not.
    Nothing is retried, and the whole probe gets ``2 * timeout``: it runs in a daemon
    thread because the socket timeout bounds neither the name lookup (the system
    resolver's own retries) nor the sum over a host's several addresses.
    """
    outcome: list[str | None] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_head(endpoint, timeout)), name="blue-hub-probe", daemon=True
    )
    worker.start()
    worker.join(2 * timeout)
    return outcome[0] if outcome else f"no answer, timed out after {2 * timeout:g} s"


def _head(endpoint: str, timeout: float) -> str | None:
    """The probe's request itself (``timeout`` for the connection and for the answer)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(endpoint + "/", method="HEAD")
    try:
        with opener.open(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} {err.reason}" if err.code >= 500 else None
    except urllib.error.URLError as err:
        return _reason(err.reason, timeout)
    except (OSError, http.client.HTTPException) as err:
        return _reason(err, timeout)


def _reason(err: object, timeout: float) -> str:
    """A few words for why a probe failed: a timeout, a refusal, a name that does not resolve."""
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"no answer, timed out after {timeout:g} s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return "host name does not resolve"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def check_model_source(source: str) -> str:
    """Return ``"tiny"``, ``"packaged"``, ``"local"``, ``"gguf"`` or ``"hub"`` for a usable
    source, else raise ConfigError."""
    if is_tiny(source):
        return "tiny"
    if is_packaged(source):
        return "packaged"
    if gguf_file_of(source) is not None:
        return "gguf"
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.source folder '{source}' holds no config.json, so it is not a saved model")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"model.source folder '{source}' holds a model but no tokenizer "
                f"(expected one of {', '.join(TOKENIZER_FILES)}; save the tokenizer into the same folder)"
            )
        return "local"
    if _looks_like_path(source) or not is_hub_id(source):
        raise ConfigError(
            f"model.source '{source}' is neither a folder holding a model, a .gguf file nor a hub id "
            "(give a tiny model name, an existing folder or .gguf file, or owner/name)"
        )
    return "hub"


def check_model_available(
    source: str, revision: str | None = None, *, probe_timeout: float = HUB_PROBE_TIMEOUT_S
) -> None:
    """Refuse at once, in one line, a hub model that is not cached and cannot be fetched.

    Offline (``BLUE_OFFLINE``, ``HF_HUB_OFFLINE``) the local cache alone decides and no
    connection is tried. Online, a model that must be downloaded costs one probe of the
    hub (``probe_hub``): unreachable, the run stops here instead of in the hub client's
    minute of retries; reachable, loading goes on as before.
    """
    kind = check_model_source(source)
    if kind == "packaged":
        fetched_file(source)  # fetched, or a line naming the fetch command
    if kind in ("gguf", "packaged"):
        check_gguf_packages()
    if kind != "hub":
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json", revision=revision), str):
        return
    if hub_offline():
        raise OfflineError(offline_message(source))
    endpoint = hub_endpoint()
    reason = probe_hub(endpoint, probe_timeout)
    if reason is not None:
        raise OfflineError(unreachable_message(source, endpoint, reason))
    log.info("model '%s' is not cached; the hub at %s answers, so it will be downloaded", source, endpoint)
