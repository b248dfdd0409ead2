"""The tokenizer a model is measured with: ``--tokenizer`` (``load_model(tokenizer=...)``) loads another directory's
or hub id's and fingerprints it; a bad one is refused naming the option; a family's tokenizer class that
transformers 5 swaps in for a directory's own tokenizer (Qwen2's) is undone, and one that reproduces the saved
tokenizer (a real Qwen or Llama tokenizer) is kept; the single-token refusal names the class and the split."""

import json

import pytest
import transformers

from mechbench.errors import ModelLoadError, TokenizationError
from mechbench.models.loading import chosen_options, load_model, load_tokenizer, tokenizer_hash


def _toy_backend() -> dict:
    from mechbench.zoo.tokenizer import build_tokenizer

    return json.loads(build_tokenizer(_cache=False).backend_tokenizer.to_str())


def _fast(backend: dict):
    from tokenizers import Tokenizer

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(backend)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def _config_dir(path, family: str, vocab_size: int):
    """A directory with only a tiny ``family`` config.json: what AutoTokenizer reads the model type from."""
    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
    config_class(
        vocab_size=vocab_size, hidden_size=16, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32
    ).save_pretrained(path)
    return path


def test_chosen_options_takes_the_tokenizer():
    assert chosen_options(tokenizer="/some/dir") == {"tokenizer": "/some/dir"}
    assert chosen_options(tokenizer=None) == {}


def test_a_chosen_tokenizer_is_loaded_instead_of_the_model_s_own_and_fingerprinted(tmp_path):
    backend = _toy_backend()
    vocab = backend["model"]["vocab"]
    vocab["fig"], vocab["pot"] = vocab["pot"], vocab["fig"]  # the same words, two ids swapped: another tokenizer
    other = _fast(backend)
    other.save_pretrained(tmp_path / "tok")
    own = load_model("toy-llama")
    chosen = load_model("toy-llama", tokenizer=str(tmp_path / "tok"))
    assert chosen.tokenizer.get_vocab() == other.get_vocab() != own.tokenizer.get_vocab()
    assert chosen.fingerprint["tokenizer_sha256"] == tokenizer_hash(chosen.tokenizer)
    assert chosen.fingerprint["tokenizer_sha256"] != own.fingerprint["tokenizer_sha256"]
    assert chosen.fingerprint["tokenizer"] == str(tmp_path / "tok") and "tokenizer" not in own.fingerprint
    assert chosen.fingerprint["weights_sha256"] == own.fingerprint["weights_sha256"]


def _a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    return str(tmp_path / "f.txt")


def _empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    return str(tmp_path / "empty")


@pytest.mark.parametrize(
    "where, message",
    [
        (lambda t: str(t / "no-such-dir"), "the directory does not exist"),
        (lambda t: "./no/such/tokenizer/dir", "the directory does not exist"),
        (_empty_dir, "the directory holds no tokenizer"),
        (_a_file, "a file, not a tokenizer directory"),
        (lambda t: "no-such-org/no-such-tokenizer", "cannot load a tokenizer from it"),
    ],
)
def test_a_bad_tokenizer_is_refused_naming_the_option(tmp_path, monkeypatch, where, message):
    import mechbench.models.loading as loading

    monkeypatch.setattr(loading, "_hub_reachable", lambda: False)  # a hub id not in the cache: offline, no retries
    with pytest.raises(ModelLoadError, match=message) as e:
        load_model("toy-llama", tokenizer=where(tmp_path))
    assert "--tokenizer" in str(e.value) and "save_pretrained" in str(e.value)


def test_the_single_token_refusal_names_the_class_and_the_split(tmp_path):
    """A tokenizer that splits one of the paper's objects ("fig" -> "f" "##ig"): the refusal names its class, where it
    was loaded from, how the word was split, and the fixes."""
    from tokenizers import Tokenizer, models

    from mechbench.data.dataset import build_dataset

    backend = _toy_backend()
    vocab = backend["model"]["vocab"]
    vocab["f"], vocab["##ig"] = vocab.pop("fig"), max(vocab.values()) + 1
    wordpiece = Tokenizer.from_str(json.dumps(backend))
    wordpiece.model = models.WordPiece(vocab, unk_token="<unk>")
    _fast(json.loads(wordpiece.to_str())).save_pretrained(tmp_path / "tok")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    with pytest.raises(TokenizationError) as e:
        build_dataset(tokenizer, n_examples=7)
    msg = str(e.value)
    assert "1 objects are not a single token" in msg and "'fig'" in msg
    assert f"class {type(tokenizer).__name__}" in msg and str(tmp_path / "tok") in msg
    assert "' fig' -> ['f', '##ig']" in msg
    assert "--tokenizer DIR|ID" in msg and "--drop-multi-token" in msg and "drop_multi_token=True" in msg


def _byte_level_bpe():
    """A tiny Qwen-style tokenizer (byte-level BPE with Qwen2's pipeline), trained on the task's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mechbench.models.loading import _probe_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tok.train_from_iterator(_probe_texts() * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return transformers.Qwen2Tokenizer(vocab=model["vocab"], merges=merges)


@pytest.mark.parametrize("declared", ["Qwen2Tokenizer", "PreTrainedTokenizerFast"])
def test_a_qwen_tokenizer_in_a_qwen2_directory_loads_as_before(tmp_path, declared):
    """Transformers forces Qwen2Tokenizer for a qwen2 directory; a Qwen tokenizer is what it reproduces, so the
    loader keeps it, whatever class the directory declares."""
    directory = _config_dir(tmp_path / "m", "qwen2", 700)
    qwen = _byte_level_bpe()
    qwen.save_pretrained(directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": declared}))
    auto, ours = transformers.AutoTokenizer.from_pretrained(directory), load_tokenizer(str(directory))
    assert type(auto).__name__ == type(ours).__name__ == "Qwen2Tokenizer"
    assert ours.get_vocab() == auto.get_vocab() == qwen.get_vocab()
    text = "Box A contains the book"
    assert ours(text)["input_ids"] == auto(text)["input_ids"] == qwen(text)["input_ids"]


def test_the_paper_s_llama_tokenizer_in_a_qwen2_directory_loads_as_saved(tmp_path, llama_tokenizer):
    """The swap hits a SentencePiece tokenizer too: Qwen2Tokenizer rebuilds LLaMA's vocabulary as byte-level BPE
    and splits the task's words; the loader loads the declared LlamaTokenizer, as a llama directory does."""
    tokenizer = transformers.LlamaTokenizer.from_pretrained(llama_tokenizer.name_or_path)
    text = "the bicycle Box A"
    for family in ("llama", "qwen2"):
        directory = _config_dir(tmp_path / family, family, 32000)
        tokenizer.save_pretrained(directory)
        loaded = load_tokenizer(str(directory))
        assert type(loaded).__name__ == "LlamaTokenizer"
        assert (
            loaded(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    swapped = transformers.AutoTokenizer.from_pretrained(tmp_path / "qwen2")
    if type(swapped).__name__ == "LlamaTokenizer":
        pytest.skip("this transformers no longer swaps in Qwen2Tokenizer for a qwen2 directory")
    assert (
        swapped(text, add_special_tokens=False)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]
    )
