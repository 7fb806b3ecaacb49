"""GGUF sources: a GGUF file written here from tiny-llama loads with exactly its weights and
tokenizer, is converted once into the cache, and an edit of it exports as a plain HF folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from blue_cli.errors import ConfigError
from blue_cli.models import gguf as gguf_module
from blue_cli.models.gguf import SOURCE_INFO, converted_dir, gguf_file_of
from blue_cli.models.loading import load_model
from blue_cli.models.source import check_model_available, check_model_source
from blue_cli.models.tiny import tiny_model_dir
from tests.conftest import invoke_blue
from tests.gguf_files import write_llama_gguf

PROMPTS = ("The mother tongue of Danielle Darrieux is", "Toyota's headquarters are in 1999, said x")


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_dir("tiny-llama")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def gguf_file(tiny_llama, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    return write_llama_gguf(tiny_llama[0], tiny_model_dir("tiny-llama"), folder / "tiny-llama.f32.gguf")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_gguf_file_loads_with_the_weights_and_tokenizer_it_was_written_from(tiny_llama, gguf_file):
    model, tok = tiny_llama
    adapter = load_model(str(gguf_file), device="cpu", dtype="float32")
    source, loaded = model.state_dict(), adapter.model.state_dict()
    assert set(loaded) == set(source)
    for name, tensor in source.items():  # float32 in, float32 out: bit for bit (q/k un-permuted)
        assert torch.equal(loaded[name], tensor), name
    for prompt in PROMPTS:
        assert adapter.tok(prompt).input_ids == tok(prompt).input_ids
    assert type(adapter.model).__name__ == "LlamaForCausalLM"


def test_the_conversion_is_cached_by_the_files_sha256_and_not_redone(gguf_file, monkeypatch):
    load_model(str(gguf_file), device="cpu", dtype="float32")
    folder = converted_dir(sha256(gguf_file), "float32")
    info = json.loads((folder / SOURCE_INFO).read_text())
    assert info["sha256"] == sha256(gguf_file) and info["file"] == gguf_file.name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "_convert", no_conversion)
    again = load_model(str(gguf_file.parent), device="cpu", dtype="float32")  # the folder holding it: same file
    assert again.model.config.num_hidden_layers == 6


def test_a_failed_conversion_leaves_nothing_that_a_later_load_trusts(tiny_llama, tmp_path, monkeypatch):
    path = write_llama_gguf(tiny_llama[0], tiny_model_dir("tiny-llama"), tmp_path / "other.gguf")
    with path.open("ab") as handle:  # another file (other hash), same tensors: the padding after them
        handle.write(b"\0" * 32)
    folder = converted_dir(sha256(path), "float32")
    stale = folder.with_name(f".{folder.name}.999999.partial")
    stale.mkdir(parents=True)  # what a killed conversion leaves
    (stale / "model.safetensors").write_bytes(b"half")

    def broken(model):
        raise RuntimeError("killed half-way")

    monkeypatch.setattr(gguf_module, "_forget_quantizer", broken)
    with pytest.raises(ConfigError, match="killed half-way"):
        load_model(str(path), device="cpu", dtype="float32")
    assert not folder.exists() and not list(folder.parent.glob(f".{folder.name}.*"))
    monkeypatch.undo()
    adapter = load_model(str(path), device="cpu", dtype="float32")
    assert torch.equal(adapter.rewrite_weight(2), tiny_llama[0].model.layers[2].mlp.down_proj.weight)


def test_gguf_sources_are_recognised_before_torch_and_ambiguity_is_one_line(gguf_file, tmp_path):
    assert check_model_source(str(gguf_file)) == "gguf"
    assert gguf_file_of(str(gguf_file.parent)) == gguf_file
    assert gguf_file_of(str(tiny_model_dir("tiny-llama"))) is None  # a saved model folder is not a GGUF one
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"y")
    with pytest.raises(ConfigError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\): name one of them"):
        check_model_source(str(tmp_path))


def test_without_the_gguf_packages_a_gguf_source_is_one_line_naming_the_extra(gguf_file, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the gguf extra \(gguf missing\): pip install .*\[gguf\]"):
        check_model_available(str(gguf_file))


def test_an_edit_of_a_gguf_model_exports_as_a_folder_plain_transformers_loads(gguf_file, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    args = ["edit", "model=tiny-llama", f"model.source={gguf_file}", "num_edits=2", "batch_size=2"]
    args += ["method.target.steps=3", "stats.samples=40", "eval.generation=false", "eval.wild=false"]
    args += ["eval.perplexity_tokens=0", "strategy=blue", f"hydra.run.dir={run}"]
    result = invoke_blue(args, cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    result = invoke_blue(["export", str(run), "--out", str(tmp_path / "hf")], cwd=tmp_path)
    assert result.code == 0, result.stderr[-3000:]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    original = tiny_llama[0]
    changed = [
        layer
        for layer in range(6)
        if not torch.equal(
            exported.model.layers[layer].mlp.down_proj.weight, original.model.layers[layer].mlp.down_proj.weight
        )
    ]
    assert changed == [1, 3]  # blue writes the first and last critical layers of tiny-llama, [1, 2, 3]
    assert torch.equal(exported.model.embed_tokens.weight, original.model.embed_tokens.weight)
