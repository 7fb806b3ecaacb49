"""model.source checks and offline loading: one-line errors, never a traceback or a minute of retries."""

from __future__ import annotations

import shutil

import huggingface_hub.constants as hub_constants
import pytest

from blue_cli.errors import ConfigError, OfflineError
from blue_cli.models.loading import hub_offline_when_asked, load_model
from blue_cli.models.source import check_model_available, check_model_source, is_hub_id
from blue_cli.models.tiny import tiny_model_dir


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
