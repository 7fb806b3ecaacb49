"""The bundled tiny models (GPT-2, GPT-J, Llama, Qwen2): names and committed folders.

Each has 6 layers of width 128 and was trained on CPU on a WikiText-2 excerpt mixed with
fact sentences from the bundled CounterFact sample, so it knows those facts through the
subject (numbers in each folder's ``build_info.json``). The runtime only loads the
committed copies in ``blue_cli/assets/tiny/<name>``; training them is the build's job
(``scripts/tiny_build``, run by ``make tiny-models``), never done at run time.
"""

from __future__ import annotations

from pathlib import Path

from blue_cli import ASSETS_DIR
from blue_cli.errors import ConfigError

TINY_MODELS = ("tiny-gpt2", "tiny-gptj", "tiny-llama", "tiny-qwen2")
COMMITTED_DIR = ASSETS_DIR / "tiny"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
REBUILD_COMMAND = "make tiny-models"


def is_tiny(name: str) -> bool:
    """Whether ``name`` is one of the bundled tiny models."""
    return name in TINY_MODELS


def tiny_model_dir(name: str) -> Path:
    """The committed folder of tiny model ``name``, loadable with ``from_pretrained``.

    Raises ConfigError for an unknown name, or when committed files are missing (a partial
    checkout, say): rebuilding takes minutes, so it is left to ``make tiny-models``.
    """
    if not is_tiny(name):
        raise ConfigError(f"unknown tiny model {name!r}; valid names: {', '.join(TINY_MODELS)}")
    folder = COMMITTED_DIR / name
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"tiny model {name!r} is missing {', '.join(missing)} in {folder}; rebuild it with `{REBUILD_COMMAND}`"
        )
    return folder
