"""The bundled tiny models load, have the promised shape, and know their facts; the build
package (scripts/tiny_build, on pytest's pythonpath) reproduces them."""

from __future__ import annotations

import math
import os
import shutil

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from blue_cli.errors import ConfigError
from blue_cli.models import tiny
from tiny_build import corpus, quality, train

EXPECTED_CLASS = {
    "tiny-gpt2": "GPT2LMHeadModel",
    "tiny-gptj": "GPTJForCausalLM",
    "tiny-llama": "LlamaForCausalLM",
    "tiny-qwen2": "Qwen2ForCausalLM",
}
# Measured on the committed weights: 0.98-1.00 on the first 50 records (see build_info.json).
MIN_KNOWS_FACTS = 0.85


@pytest.fixture(scope="module")
def loaded():
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            path = tiny.tiny_model_dir(name)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            cache[name] = (model, AutoTokenizer.from_pretrained(path))
        return cache[name]

    return get


@pytest.fixture(scope="module")
def records():
    return corpus.load_counterfact_sample()


def test_registry_names_match_expected():
    assert set(tiny.TINY_MODELS) == set(EXPECTED_CLASS)
    assert all(tiny.is_tiny(n) for n in EXPECTED_CLASS)
    assert not tiny.is_tiny("gpt2-xl")


def test_build_has_one_spec_per_preset():
    assert {n: s.architecture for n, s in train.SPECS.items()} == EXPECTED_CLASS
    assert all(name == spec.name for name, spec in train.SPECS.items())


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_the_build_makes_the_committed_config(name):
    """The build script's config is the committed model's, key for key (a rebuild would
    otherwise change the model's shape or padding without a slow test noticing)."""
    from transformers import AutoConfig

    committed = AutoConfig.from_pretrained(tiny.tiny_model_dir(name))
    ids = {"bos_id": committed.bos_token_id, "eos_id": committed.eos_token_id, "pad_id": committed.pad_token_id}
    built = train.make_config(name, vocab_size=committed.vocab_size, **ids).to_dict()
    saved = committed.to_dict()
    loaded_only = ("dtype", "_name_or_path")  # set when weights are saved and when a folder is read
    assert {k: v for k, v in built.items() if k not in loaded_only} == {
        k: v for k, v in saved.items() if k not in loaded_only
    }


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_committed_copy_is_used(name):
    assert tiny.tiny_model_dir(name) == tiny.COMMITTED_DIR / name


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_loads_with_expected_shape(name, loaded):
    model, tok = loaded(name)
    assert type(model).__name__ == EXPECTED_CLASS[name]
    cfg = model.config
    assert cfg.num_hidden_layers == 6
    assert cfg.hidden_size == 128
    assert cfg.num_attention_heads == 4
    assert model.dtype == torch.float32
    assert len(tok) == cfg.vocab_size == model.get_input_embeddings().weight.shape[0]
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} == {
        cfg.bos_token_id,
        cfg.eos_token_id,
        cfg.pad_token_id,
    }
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok.padding_side == "right"


def test_models_share_one_vocabulary(loaded):
    vocabs = [loaded(name)[1].get_vocab() for name in EXPECTED_CLASS]
    assert all(v == vocabs[0] for v in vocabs[1:])


def test_llama_tokenizer_prepends_bos_and_gpt2_does_not(loaded):
    _, llama_tok = loaded("tiny-llama")
    ids = llama_tok("The Eiffel Tower is in")["input_ids"]
    assert ids[0] == llama_tok.bos_token_id
    assert ids.count(llama_tok.bos_token_id) == 1
    for name in ("tiny-gpt2", "tiny-gptj", "tiny-qwen2"):
        _, tok = loaded(name)
        ids = tok("The Eiffel Tower is in")["input_ids"]
        assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
        assert ids == llama_tok("The Eiffel Tower is in", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_heldout_loss_well_below_uniform(name, loaded):
    model, tok = loaded(name)
    _, held = corpus.split_wikitext(corpus.WIKITEXT_FILE.read_text(encoding="utf-8"))
    loss = quality.heldout_loss(model, tok, held[:30])
    assert loss < math.log(len(tok)) - 1.5, loss


@pytest.fixture(scope="module")
def scores(loaded, records):
    cache: dict[str, dict] = {}

    def get(name: str):
        if name not in cache:
            model, tok = loaded(name)
            cache[name] = quality.fact_scores(model, tok, records[:50], paraphrases=False)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_knows_the_facts(name, scores):
    result = scores(name)
    assert result["rewrite_rate"] >= MIN_KNOWS_FACTS, result
    assert result["median_p_true"] > 0.3, result


def test_knows_the_facts_under_paraphrase(loaded, records):
    model, tok = loaded("tiny-gpt2")
    result = quality.fact_scores(model, tok, records[:20])
    assert result["paraphrase_rate"] >= MIN_KNOWS_FACTS, result


def test_facts_go_through_the_subject(loaded, records, scores):
    """With another record's subject in the prompt, the true object loses its edge."""
    model, tok = loaded("tiny-llama")
    real = scores("tiny-llama")
    control = quality.fact_scores(model, tok, corpus.subject_swapped(records[:50]))
    assert control["rewrite_rate"] < real["rewrite_rate"] - 0.2, (real, control)
    assert control["median_p_true"] < real["median_p_true"] / 10, (real, control)


@pytest.mark.parametrize("name", list(EXPECTED_CLASS))
def test_loaded_tokenizer_encodes_like_its_tokenizer_json(name, loaded, records):
    """AutoTokenizer may rebuild the pipeline (it does for qwen2); it must encode the same."""
    from tokenizers import Tokenizer

    _, tok = loaded(name)
    raw = Tokenizer.from_file(str(tiny.tiny_model_dir(name) / "tokenizer.json"))
    texts = corpus.fact_sentences(records[:20])
    texts.append("In 1999, Zoë's café sold 12,345 crêpes.\n  Tabs\tand  spaces")
    for text in texts:
        assert tok(text)["input_ids"] == raw.encode(text).ids, text


def test_unknown_name_raises_config_error():
    with pytest.raises(ConfigError) as err:
        tiny.tiny_model_dir("tiny-bert")
    message = str(err.value)
    assert "\n" not in message
    for name in EXPECTED_CLASS:
        assert name in message
    with pytest.raises(ConfigError):
        train.build_tiny_model("tiny-bert", tiny.COMMITTED_DIR / "never-created")


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.json"])
def test_missing_committed_file_raises_config_error(tmp_path, monkeypatch, missing):
    """The runtime never trains: a partial checkout names the file and the rebuild command."""
    shutil.copytree(tiny.COMMITTED_DIR / "tiny-llama", tmp_path / "tiny-llama")
    (tmp_path / "tiny-llama" / missing).unlink()
    monkeypatch.setattr(tiny, "COMMITTED_DIR", tmp_path)
    monkeypatch.setenv("BLUE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as err:
        tiny.tiny_model_dir("tiny-llama")
    message = str(err.value)
    assert "\n" not in message
    assert missing in message and "tiny-llama" in message and "make tiny-models" in message
    assert not (tmp_path / "cache").exists()  # nothing was built on the side


def test_missing_committed_folder_raises_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny, "COMMITTED_DIR", tmp_path / "absent")
    with pytest.raises(ConfigError, match="make tiny-models"):
        tiny.tiny_model_dir("tiny-gpt2")


@pytest.mark.slow
def test_build_is_deterministic(tmp_path):
    a = train.build_tiny_model("tiny-gpt2", tmp_path / "a", steps=3)
    b = train.build_tiny_model("tiny-gpt2", tmp_path / "b", steps=3)
    assert a["final_train_loss"] == b["final_train_loss"]
    wa = load_file(str(tmp_path / "a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    tok_a, tok_b = (tmp_path / d / "tokenizer.json" for d in "ab")
    assert tok_a.read_bytes() == tok_b.read_bytes()
    train.build_tiny_model("tiny-gpt2", tmp_path / "c", steps=3, seed=1)
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.slow
def test_rebuild_reproduces_committed_tokenizer(tmp_path):
    train.build_tiny_model("tiny-qwen2", tmp_path / "q", steps=1)
    built = (tmp_path / "q" / "tokenizer.json").read_bytes()
    assert built == (tiny.COMMITTED_DIR / "tiny-qwen2" / "tokenizer.json").read_bytes()
