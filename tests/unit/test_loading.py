"""model.source checks and offline loading: one-line errors, never a traceback or a minute of retries."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
from collections.abc import Iterator

import huggingface_hub.constants as hub_constants
import pytest

from blue_cli.errors import ConfigError, OfflineError
from blue_cli.models.loading import hub_offline_when_asked, load_model
from blue_cli.models.source import check_model_available, check_model_source, is_hub_id
from blue_cli.models.tiny import tiny_model_dir
from tests.conftest import counting_server


def test_sources_that_exist_are_classified():
    assert check_model_source("tiny-gpt2") == "tiny"
    assert check_model_source(str(tiny_model_dir("tiny-llama"))) == "local"
    assert check_model_source("gpt2") == "hub"
    assert check_model_source("meta-llama/Meta-Llama-3-8B-Instruct") == "hub"


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/gpt-j-6B", "Qwen/Qwen2.5-7B-Instruct", "a.b_c-d/e"])
def test_hub_ids_are_recognised(name):
    assert is_hub_id(name)


@pytest.mark.parametrize(
    "source",
    [
        "../../etc",
        "/nonexistent/model",
        "~/no-such-model-here",
        "a/b/c",
        "owner/../x",
        "https://huggingface.co/gpt2",
        "has space",
        "two--dashes",
        "",
        "/",
        "owner/",
        "-leading-dash",
    ],
)
def test_nonsense_and_traversal_sources_are_one_line_errors(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_model_source(source)
    text = str(err.value)
    assert "\n" not in text and "model.source" in text


def test_an_existing_folder_without_a_model_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    with pytest.raises(ConfigError, match=r"'\.\./\.\.' holds no config\.json"):
        check_model_source("../..")


def test_folder_without_tokenizer_is_one_line_config_error(model_without_tokenizer):
    with pytest.raises(ConfigError, match="holds a model but no tokenizer") as err:
        load_model(str(model_without_tokenizer), device="cpu")
    assert str(model_without_tokenizer) in str(err.value)


def test_damaged_tokenizer_file_is_one_line_config_error(tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir("tiny-gpt2"), folder)
    (folder / "tokenizer.json").write_text("not json {", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot load model") as err:
        load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


@pytest.fixture
def hub_online(monkeypatch, tmp_path):
    """The hub client as on a machine without HF_HUB_OFFLINE, with an empty cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("BLUE_OFFLINE", "1")


def test_blue_offline_makes_a_missing_hub_model_fail_without_a_network_attempt(hub_online, monkeypatch):
    """Fast because no connection is even tried (each would cost retries and timeouts)."""
    import socket

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(OfflineError, match="not in the local Hugging Face cache"):
        load_model("blue-tests/certainly-not-cached", device="cpu")
    assert attempts == []
    assert hub_constants.HF_HUB_OFFLINE is False  # restored after loading


def test_hub_offline_context_sets_and_restores_both_switches(hub_online):
    import os

    with hub_offline_when_asked():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hub_constants.is_offline_mode()
    assert "HF_HUB_OFFLINE" not in os.environ and not hub_constants.is_offline_mode()


def test_availability_check_reads_only_the_local_cache(hub_online, tmp_path):
    with pytest.raises(OfflineError):
        check_model_available("blue-tests/certainly-not-cached")
    snapshot = tmp_path / "hub-cache" / "models--blue-tests--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "hub-cache" / "models--blue-tests--cached" / "refs").mkdir()
    (tmp_path / "hub-cache" / "models--blue-tests--cached" / "refs" / "main").write_text("abc123", encoding="utf-8")
    check_model_available("blue-tests/cached")  # cached: no error
    check_model_available("tiny-gpt2")  # never a hub lookup


# -- an unreachable hub is found with one short probe, not a minute of retries --------------


@pytest.fixture
def hub_uncached(monkeypatch, tmp_path):
    """Online as far as every switch says, with an empty hub cache: a hub model must be fetched."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def connections(monkeypatch):
    """Every outgoing connection attempt, counted where the standard library makes it."""
    import socket

    made: list[tuple] = []
    real = socket.create_connection

    def counted(address, *args, **kwargs):
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    return made


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: a connection to it is refused at once.

    Held bound for the test, so no other process can start listening there meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[int, list, threading.Event]]:
    """A loopback server that accepts connections and never answers; yields (port, accepted, first)."""
    accepted: list[socket.socket] = []
    first = threading.Event()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def accept_all() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # the test closed the server
                return
            accepted.append(conn)
            first.set()

    thread = threading.Thread(target=accept_all, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted, first
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        server.close()
        thread.join()
        for conn in accepted:
            conn.close()


def test_a_refused_hub_fails_at_once_naming_blue_offline(hub_uncached, connections, monkeypatch):
    """A refusal is an answer: no waiting for the (here long) timeout, no second attempt."""
    with refusing_port() as port:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(OfflineError) as err:
            check_model_available("blue-tests/certainly-not-cached", probe_timeout=60)
    text = str(err.value)
    assert "\n" not in text
    assert "'blue-tests/certainly-not-cached'" in text and endpoint in text and "BLUE_OFFLINE=1" in text
    assert "refused" in text.lower()
    assert connections == [("127.0.0.1", port)]


def test_a_hub_that_never_answers_fails_after_one_short_probe(hub_uncached, connections, monkeypatch):
    """The server takes the connection and stays silent: the probe's own timeout ends it."""
    with silent_server() as (port, accepted, first):
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        with pytest.raises(OfflineError) as err:
            check_model_available("blue-tests/certainly-not-cached", probe_timeout=0.5)
        assert first.wait(timeout=30), "the probe never reached the server"
    text = str(err.value)
    assert "\n" not in text and "BLUE_OFFLINE=1" in text and "timed out" in text
    assert connections == [("127.0.0.1", port)]
    assert len(accepted) == 1


def test_a_reachable_hub_lets_the_load_proceed(hub_uncached, connections, monkeypatch):
    """Any HTTP answer, even an error status, means the hub is there: the hub client takes over."""
    with counting_server() as (url, requests):
        monkeypatch.setenv("HF_ENDPOINT", url)
        check_model_available("blue-tests/certainly-not-cached", probe_timeout=5)
    assert len(connections) == 1 and len(requests) == 1


def test_a_hub_answering_a_server_error_is_unreachable(hub_uncached, connections, monkeypatch):
    """A 5xx (a proxy that cannot reach the hub, or a hub outage) would only start the client's retries."""
    with counting_server(502) as (url, requests):
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(OfflineError, match=r"cannot be reached \(HTTP 502 Bad Gateway\).*BLUE_OFFLINE=1"):
            check_model_available("blue-tests/certainly-not-cached", probe_timeout=5)
    assert len(connections) == 1 and requests == ["/"]


def test_offline_mode_never_probes(hub_online, connections, monkeypatch):
    with refusing_port() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        with pytest.raises(OfflineError, match="not in the local Hugging Face cache"):
            check_model_available("blue-tests/certainly-not-cached")
    assert connections == []


def test_load_model_probes_the_hub_before_the_hub_client_retries(hub_uncached, connections, monkeypatch):
    """The Python API and the commands without a preflight load through load_model: the same one probe."""
    with refusing_port() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        with pytest.raises(OfflineError, match="set BLUE_OFFLINE=1 to skip the hub"):
            load_model("blue-tests/certainly-not-cached", device="cpu")
    assert connections == [("127.0.0.1", port)]
