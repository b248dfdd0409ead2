"""``mechbench.zoo.convert``: toy-llama rewritten as a Qwen2 and as a Mistral model computes the same function, so
a "new base" mechbench has never seen has known right answers: it loads through mechbench's loader (tokenizer
included: the Qwen2 tokenizer swap of transformers 5 is undone), its logits are toy-llama's, the task's words stay
single tokens, and its accuracy is toy-llama's exactly."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from mechbench.api import accuracy, get_model
from mechbench.data.dataset import build_dataset
from mechbench.models.registry import zoo_dir
from mechbench.zoo.convert import ConversionError, convert, main

FAMILIES = ("qwen2", "mistral")
TOY_LLAMA = Path(zoo_dir("toy-llama"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """toy-llama as each family: qwen2 through convert(), mistral through the command line."""
    root = tmp_path_factory.mktemp("converted")
    convert(zoo_dir("toy-llama"), root / "qwen2", "qwen2")
    assert main([zoo_dir("toy-llama"), str(root / "mistral"), "--family", "mistral"]) == 0
    return {family: root / family for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_converted_model_is_of_the_family_with_the_source_s_settings(converted, family):
    config, source = (json.loads((d / "config.json").read_text()) for d in (converted[family], TOY_LLAMA))
    assert config["model_type"] == family and config["sliding_window"] is None
    for key in ("rms_norm_eps", "rope_parameters", "tie_word_embeddings", "head_dim", "num_key_value_heads"):
        assert config[key] == source[key], key
    if family == "qwen2":
        assert config["use_sliding_window"] is False and set(config["layer_types"]) == {"full_attention"}
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (converted[family] / name).read_bytes() == (TOY_LLAMA / name).read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_converted_model_loads_and_computes_toy_llama_s_function(converted, family):
    from safetensors import safe_open

    llama, other = get_model("toy-llama"), get_model(str(converted[family]))
    assert other.model.config.model_type == family and type(other.model).__name__.lower().startswith(family)
    if family == "qwen2":  # the biases mechbench's engine must carry through its q/k/v sites: all zero
        with safe_open(str(converted[family] / "model.safetensors"), framework="pt") as f:
            biases = [k for k in f.keys() if k.endswith("_proj.bias")]
            assert len(biases) == 3 * llama.shape.n_layers and all(not f.get_tensor(k).any() for k in biases)
    # the tokenizer loads as saved (transformers 5 would swap in Qwen2Tokenizer) and keeps the task's words single
    assert type(other.tokenizer).__name__ == type(llama.tokenizer).__name__
    assert other.fingerprint["tokenizer_sha256"] == llama.fingerprint["tokenizer_sha256"]
    dataset = build_dataset(other.tokenizer, n_examples=14)
    assert len(dataset.vocabulary.objects) == 85 and len(dataset.vocabulary.labels) == 26
    assert torch.equal(dataset.input_ids, build_dataset(llama.tokenizer, n_examples=14).input_ids)
    with torch.no_grad():
        want, got = llama.model(dataset.input_ids).logits, other.model(dataset.input_ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_converted_model_s_accuracy_is_toy_llama_s(converted, family):
    assert accuracy(str(converted[family]), n_examples=70) == accuracy("toy-llama", n_examples=70)


def test_transformers_own_tokenizer_class_for_qwen2_splits_the_task_and_the_refusal_says_so(converted):
    """The swap the loader undoes, as transformers does it (AutoTokenizer on the converted directory), and the
    refusal it would give: the class loaded, how the first object is split, the fixes."""
    from mechbench.errors import TokenizationError

    swapped = transformers.AutoTokenizer.from_pretrained(converted["qwen2"])
    if type(swapped).__name__ != "Qwen2Tokenizer":
        pytest.skip(f"this transformers loads {type(swapped).__name__} for a qwen2 directory: no swap to show")
    with pytest.raises(TokenizationError) as e:
        build_dataset(swapped, n_examples=7)
    msg = str(e.value)
    assert "85 objects are not a single token" in msg and "class Qwen2Tokenizer" in msg
    assert str(converted["qwen2"]) in msg and "' book' -> ['b', 'o', 'o', 'k']" in msg
    assert "--tokenizer DIR|ID" in msg and "--drop-multi-token" in msg


def test_the_converted_model_takes_another_directory_s_tokenizer(converted):
    handle = get_model(str(converted["qwen2"]), tokenizer=zoo_dir("toy-llama"))
    assert handle.fingerprint["tokenizer"] == zoo_dir("toy-llama")
    assert handle.fingerprint["tokenizer_sha256"] == get_model("toy-llama").fingerprint["tokenizer_sha256"]


def test_what_cannot_be_converted_is_refused(converted, tmp_path):
    with pytest.raises(ConversionError, match="model_type llama"):
        convert(converted["qwen2"], tmp_path / "again", "mistral")
    with pytest.raises(ConversionError, match="expected one of qwen2, mistral"):
        convert(zoo_dir("toy-llama"), tmp_path / "x", "gemma")
    with pytest.raises(ConversionError, match="output directory is the source"):
        convert(converted["qwen2"], converted["qwen2"], "qwen2")
    source = tmp_path / "biased"
    source.mkdir()
    config = json.loads((TOY_LLAMA / "config.json").read_text()) | {"mlp_bias": True}
    (source / "config.json").write_text(json.dumps(config))
    (source / "model.safetensors").write_bytes((TOY_LLAMA / "model.safetensors").read_bytes())
    with pytest.raises(ConversionError, match="mlp_bias"):
        convert(source, tmp_path / "y", "qwen2")
