"""Model registry and loading: names, specs, errors, adapters, GQA shapes, fingerprints."""

import subprocess
import sys

import pytest
import torch

from mechbench.errors import ModelLoadError, UnknownModelError, UnsupportedArchitectureError
from mechbench.models import load_model, resolve
from mechbench.models.registry import REGISTRY, zoo_dir
from tests.helpers import save_random_llama


def test_registry_names_the_papers_models_with_their_ids():
    assert resolve("vicuna7b").weights == "AlekseyKorshuk/vicuna-7b"
    assert resolve("float7b").weights == "nikhil07prakash/float-7b"
    goat = resolve("goat7b")
    assert goat.adapter == "tiedong/goat-lora-7b" and goat.weights == resolve("llama7b").weights
    assert resolve("toy-goat").weights == zoo_dir("toy-llama") and resolve("toy-goat").adapter == zoo_dir("toy-goat")
    # resolving keeps the rest of the spec: the model a fine-tune is compared with stays a registered name
    assert goat.base == "llama7b" and resolve("toy-goat").base == "toy-llama" and resolve("llama7b").base is None


def test_env_override_points_a_name_and_its_dependents_at_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHBENCH_MODEL_LLAMA7B", str(tmp_path))
    assert resolve("llama7b").weights == str(tmp_path)
    assert resolve("goat7b").weights == str(tmp_path)  # the model under Goat's adapter follows Llama's override


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownModelError) as err:
        resolve("no-such-model")
    assert "'no-such-model'" in str(err.value) and all(name in str(err.value) for name in REGISTRY)


def test_hub_ids_and_adapter_specs_resolve(tmp_path):
    assert resolve("org/model").weights == "org/model"
    spec = resolve("llama7b+tiedong/goat-lora-7b")
    assert spec.weights == resolve("llama7b").weights and spec.adapter == "tiedong/goat-lora-7b"


def test_missing_weights_name_the_id_and_how_to_provide_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from mechbench.models import loading

    loading._hub_reachable.cache_clear()
    with pytest.raises(ModelLoadError) as err:
        load_model("float7b")
    msg = str(err.value)
    assert (
        "nikhil07prakash/float-7b" in msg
        and "hf download nikhil07prakash/float-7b" in msg
        and "MECHBENCH_MODEL_FLOAT7B" in msg
    )
    with pytest.raises(ModelLoadError, match="MECHBENCH_MODEL_LLAMA7B"):  # Goat's missing base names its own variable
        load_model("goat7b")
    loading._hub_reachable.cache_clear()


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_llama_family_with_grouped_query_attention_loads(tmp_path, n_kv_heads):
    path = save_random_llama(tmp_path, n_heads=4, n_kv_heads=n_kv_heads)
    handle = load_model(str(path))
    s = handle.shape
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim) == (2, 4, n_kv_heads, 8)
    assert handle.layers[0].self_attn.o_proj.in_features == s.n_heads * s.head_dim
    assert handle.fingerprint["weights_sha256"] == load_model(str(path)).fingerprint["weights_sha256"]


def test_non_llama_architectures_are_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*llama"):
        load_model(str(tmp_path))


def test_pickled_weights_need_explicit_permission(tmp_path):
    path = save_random_llama(tmp_path, safe=False)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        load_model(str(path))
    assert load_model(str(path), allow_pickle=True).shape.n_layers == 2


def test_fingerprint_changes_with_any_weight(tmp_path):
    path = save_random_llama(tmp_path)
    a = load_model(str(path))
    b = load_model(str(path))
    with torch.no_grad():
        b.model.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3
    from mechbench.models.loading import weights_hash

    assert weights_hash(a.model) != weights_hash(b.model)
    assert a.fingerprint["config_sha256"] == b.fingerprint["config_sha256"]


def test_lora_adapter_loads_unmerged_with_unchanged_module_paths(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = save_random_llama(tmp_path / "base")
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)
    ids = torch.randint(4, 100, (2, 9))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits
    from mechbench.intervene import run

    # the engine takes a PeftModel as it is (it runs the base model with the LoRA layers injected)
    torch.testing.assert_close(run(peft_model, ids).last_logits, expected[:, -1], rtol=0, atol=1e-5)
    for ref in (f"{base_dir}+{adapter_dir}", str(adapter_dir)):  # explicit spec, and the adapter dir naming its base
        handle = load_model(ref)
        assert handle.spec.adapter == str(adapter_dir)
        o_proj = handle.model.model.layers[0].self_attn.o_proj  # same path as a plain model; LoRA wrapped in place
        assert hasattr(o_proj, "lora_A")
        with torch.no_grad():
            got = handle.model(ids).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert not torch.allclose(got, plain, atol=1e-3)
        assert handle.fingerprint["adapter"] == str(adapter_dir)


def test_suite_rejects_an_unknown_model_name_with_a_message():
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/", "--model=no-such-model", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "unknown model 'no-such-model'" in run.stderr + run.stdout and "toy-llama" in run.stderr + run.stdout


def test_a_bin_only_directory_loads_through_the_stated_opt_in(tmp_path, capsys):
    """The error names the flag exactly as typed, and the flag works (CLI; pytest's --allow-pickle takes the same
    path through mechbench.claims.run.load_model -> get_model)."""
    from mechbench.cli import main

    path = save_random_llama(tmp_path / "bin-only", safe=False)
    assert main(["accuracy", str(path), "--n", "7"]) == 2
    err = capsys.readouterr().err
    assert "--allow-pickle" in err and "allow_pickle=True" in err
    assert main(["accuracy", str(path), "--n", "7", "--allow-pickle"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_the_dtype_asked_for_is_the_dtype_loaded_and_fingerprinted(tmp_path, monkeypatch):
    """A model asked for in bfloat16 holds bfloat16 parameters and its fingerprint says bfloat16 (a fingerprint that
    names the dtype asked for over float32 weights hides the fault); the default stays the paper's float32. Both
    routes: load_model and get_model (the CLI's and the pytest plugin's)."""
    from mechbench import api

    monkeypatch.setattr(api, "_LOADED", {})  # the process-wide handle cache: this test's models leave with it
    path = str(save_random_llama(tmp_path))
    for route, handle, want in [
        ("load_model bfloat16", load_model(path, dtype="bfloat16"), torch.bfloat16),
        ("load_model torch.bfloat16", load_model(path, dtype=torch.bfloat16), torch.bfloat16),
        ("get_model bf16", api.get_model(path, dtype="bf16"), torch.bfloat16),
        ("get_model default", api.get_model(path), torch.float32),
    ]:
        assert {p.dtype for p in handle.model.parameters()} == {want}, route
        assert handle.fingerprint["dtype"] == str(want).removeprefix("torch."), (route, handle.fingerprint["dtype"])
