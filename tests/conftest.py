"""Shared fixtures: offline mode, a private cache, tiny models loaded once per session."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = ("tiny-gpt2", "tiny-gptj", "tiny-llama", "tiny-qwen2")
T = TypeVar("T")

# One BLAS/OpenMP thread per pytest-xdist worker: two workers on two cores, each with its
# own thread pool, would otherwise oversubscribe the cores (OpenMP spin-waits make that far
# slower than one thread each). Set before torch is imported; subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def run_root(tmp_path_factory) -> Path:
    """The folder every process of this test run shares: the base temp folder, or with
    pytest-xdist (``make test`` runs two workers) the one above the workers' own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, parts: dict[str, Callable[[Path], T]]) -> dict[str, T]:
    """``{name: build(folder)}`` for every part, each built once per test run.

    Each part is built by whichever process of the run takes its file lock first; its result
    (JSON-able) is written atomically after the build, and every other process reads it. A
    pytest-xdist worker first builds the parts no other worker is building, then waits on the
    rest, so two workers that need the same reference runs share the work instead of one
    idling. Without xdist this is simply each build in turn.
    """
    from filelock import FileLock, Timeout

    root = run_root(tmp_path_factory)
    results: dict[str, T] = {}

    def take(name: str, timeout: float) -> bool:
        done = root / f"built-{name}.json"
        try:
            with FileLock(str(root / f"built-{name}.lock"), timeout=timeout):
                if not done.exists():
                    folder = root / f"built-{name}"
                    if folder.exists():  # a build that failed in another worker: start afresh
                        shutil.rmtree(folder)
                    folder.mkdir()
                    part = done.with_suffix(".part")
                    part.write_text(json.dumps(parts[name](folder)))
                    part.replace(done)
        except Timeout:
            return False
        results[name] = json.loads(done.read_text())
        return True

    waiting = [name for name in parts if not take(name, timeout=0)]
    for name in waiting:
        take(name, timeout=-1)
    return {name: results[name] for name in parts}


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Statistics and builds go to one cache per test run (shared by its workers) unless
    BLUE_CACHE is set."""
    if "BLUE_CACHE" not in os.environ:
        cache = run_root(tmp_path_factory) / "blue-cache"
        cache.mkdir(exist_ok=True)
        os.environ["BLUE_CACHE"] = str(cache)
    yield


_ADAPTERS: dict = {}


@pytest.fixture(scope="session")
def load_tiny():
    """Load a tiny model by name once per session (CPU, float32)."""
    from blue_cli.models.loading import load_model

    def load(name: str):
        if name not in _ADAPTERS:
            _ADAPTERS[name] = load_model(name, name=name, device="cpu", dtype="float32")
        return _ADAPTERS[name]

    return load


@pytest.fixture()
def fresh_tiny():
    """A freshly loaded tiny model (tests that edit weights must not share one)."""
    from blue_cli.models.loading import load_model

    return lambda name: load_model(name, name=name, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def requests10():
    from blue_cli.datasets.counterfact.records import load_counterfact

    return load_counterfact("bundled", limit=10)


@pytest.fixture
def model_without_tokenizer(tmp_path):
    """A saved model (config + weights of tiny-gpt2) whose tokenizer was never saved."""
    from blue_cli.models.tiny import tiny_model_dir

    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir("tiny-gpt2") / name, folder / name)
    return folder


# -- the CLI in process -----------------------------------------------------------------------


@dataclass
class CliResult:
    """What a ``blue`` command did: exit code and its two streams."""

    code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def invoke_blue(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> CliResult:
    """Run ``blue ARGS`` in this process, from ``cwd``: the Typer app, Hydra's own entry
    point and the job, as the installed command runs them, without a new Python and torch.

    Hydra leaves its logging handlers and its global state behind after a job; both are
    restored here so the next test (or command) starts clean. An exception that is not a
    clean exit propagates, with its traceback, as a test failure.
    """
    from hydra.core.global_hydra import GlobalHydra
    from typer.testing import CliRunner

    from blue_cli import faults
    from blue_cli.cli.commands import app
    from blue_cli.reporting.console import console, err_console

    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    old_cwd = os.getcwd()
    GlobalHydra.instance().clear()
    faults.reset_counts()  # fault points count passes per process: each command starts afresh
    os.chdir(cwd)
    # The consoles read COLUMNS when created (at import); a command gets the width it asks for.
    widths = console.width, err_console.width
    console.width = err_console.width = int((env or {}).get("COLUMNS", 120))
    try:
        try:  # stderr apart from stdout: click < 8.2 needs mix_stderr=False, 8.2 removed the argument
            runner = CliRunner(env=env, mix_stderr=False)
        except TypeError:
            runner = CliRunner(env=env)
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False, prog_name="blue")
    finally:
        console.width, err_console.width = widths
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return CliResult(result.exit_code, result.stdout, result.stderr)


# -- loopback servers -------------------------------------------------------------------------


@contextlib.contextmanager
def counting_server(status: int = 404) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that answers every GET and HEAD with ``status`` and records
    each request path; yields (base url, paths). It stands in for the hub or a data site."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            seen.append(self.path)
            self.send_error(status)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
