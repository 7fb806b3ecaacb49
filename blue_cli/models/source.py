"""What ``model.source`` may be, checked without torch before a run folder exists.

A source is a bundled tiny preset, a local folder holding a saved model and its
tokenizer, or a hub id (``name`` or ``owner/name``). Anything else (``../../etc``, a
URL, a typo'd path) is refused in one line here instead of surfacing later as a
transformers traceback, or as a minute of hub retries for a name the hub cannot have.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from blue_cli.download import offline_requested
from blue_cli.errors import ConfigError, OfflineError
from blue_cli.models.tiny import is_tiny

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


def check_model_source(source: str) -> str:
    """Return ``"tiny"``, ``"local"`` or ``"hub"`` for a usable source, else raise ConfigError."""
    if is_tiny(source):
        return "tiny"
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
            f"model.source '{source}' is neither a folder holding a model nor a hub id "
            "(give a tiny model name, an existing folder, or owner/name)"
        )
    return "hub"


def check_model_available(source: str, revision: str | None = None) -> None:
    """Offline, refuse at once a hub model that is not in the local cache (no network calls)."""
    if check_model_source(source) != "hub" or not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, "config.json", revision=revision)
    if not isinstance(found, str):
        raise OfflineError(offline_message(source))
