"""Downloads against a loopback HTTP server: success, validation, HTTP and network failures."""

from __future__ import annotations

import functools
import json
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blue_cli.datasets.counterfact.records import BUNDLED_PATH, load_counterfact
from blue_cli.download import download_file
from blue_cli.errors import DataError, OfflineError


class _Server:
    def __init__(self, root: Path, base: str, hits: list[str]) -> None:
        self.root, self.base, self.hits = root, base, hits


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    """Serve a tmp folder on 127.0.0.1 and record every requested path."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    root = tmp_path / "served"
    root.mkdir()
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield _Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success_reports_progress(server: _Server, tmp_path: Path) -> None:
    payload = b"x" * 3_000_000
    (server.root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    seen: list[tuple[int, int | None]] = []
    assert download_file(f"{server.base}/blob.bin", dest, progress=lambda d, t: seen.append((d, t))) == dest
    assert dest.read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload))
    assert _leftovers(dest.parent) == ["blob.bin"]


def test_validation_failure_leaves_no_file(server: _Server, tmp_path: Path) -> None:
    (server.root / "data.json").write_text("not json")
    dest = tmp_path / "out" / "data.json"

    def validate(path: Path) -> None:
        json.loads(path.read_text())

    with pytest.raises(DataError, match="data.json is not valid"):
        download_file(f"{server.base}/data.json", dest, validate=validate)
    assert _leftovers(dest.parent) == []


def test_http_404_is_data_error(server: _Server, tmp_path: Path) -> None:
    url = f"{server.base}/missing.json"
    with pytest.raises(DataError, match="404") as info:
        download_file(url, tmp_path / "missing.json")
    assert url in str(info.value)
    assert not (tmp_path / "missing.json").exists()


def test_closed_port_is_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "f.json"
    with pytest.raises(OfflineError) as info:
        download_file(f"http://127.0.0.1:{port}/f.json", dest, timeout=5)
    message = str(info.value)
    assert f"127.0.0.1:{port}/f.json" in message and str(dest) in message and "\n" not in message
    assert _leftovers(tmp_path) == []


def test_blue_offline_never_touches_network(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (server.root / "f.json").write_text("[]")
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    with pytest.raises(OfflineError, match="BLUE_OFFLINE"):
        download_file(f"{server.base}/f.json", tmp_path / "f.json")
    assert server.hits == []


def test_load_counterfact_downloads_validates_and_caches(server: _Server, tmp_path: Path) -> None:
    (server.root / "multi_counterfact.json").write_bytes(BUNDLED_PATH.read_bytes())
    cache = tmp_path / "cache"
    url = f"{server.base}/multi_counterfact.json"
    first = load_counterfact(None, cache_dir=cache, url=url, limit=3)
    assert len(first) == 3 and first[0].case_id == 20962
    assert (cache / "multi_counterfact.json").is_file()
    assert server.hits == ["/multi_counterfact.json"]
    second = load_counterfact(None, cache_dir=cache, url=url, offset=299)
    assert len(second) == 1
    assert server.hits == ["/multi_counterfact.json"]


def test_load_counterfact_rejects_invalid_download(server: _Server, tmp_path: Path) -> None:
    bad = json.loads(BUNDLED_PATH.read_text())[:3]
    del bad[1]["requested_rewrite"]["prompt"]
    (server.root / "multi_counterfact.json").write_text(json.dumps(bad))
    cache = tmp_path / "cache"
    url = f"{server.base}/multi_counterfact.json"
    with pytest.raises(DataError, match=r"record 1: missing key 'requested_rewrite.prompt'") as info:
        load_counterfact(None, cache_dir=cache, url=url)
    assert url in str(info.value)
    assert _leftovers(cache) == []
