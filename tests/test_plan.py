"""The memory and time plan (mechbench.plan): its terms against the engine's real tensors, and every claim of
the paper's models within an 80 GB GPU."""

import pytest
import torch

from mechbench import api, plan
from mechbench.data.dataset import build_dataset
from mechbench.intervene import Read, capture_prefix, run
from tests.helpers import random_llama


@pytest.fixture(scope="module")
def small():
    model = random_llama(n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8)
    return model, plan.Shape.from_config(model.config.to_dict())


def test_parameter_count_from_the_config_is_the_models(small):
    model, shape = small
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    assert plan.shape_of("llama7b").n_params == 6_738_415_616  # LLaMA-1 7B, as published
    toy = api.get_model("toy-llama")
    assert plan.shape_of("toy-llama").n_params == toy.fingerprint["n_parameters"]
    goat = plan.shape_of("toy-goat")
    lora = sum(p.numel() for n, p in api.get_model("toy-goat").model.named_parameters() if "lora_" in n)
    assert goat.adapter_params == lora


def test_prefix_and_read_terms_are_the_bytes_the_engine_holds(small, toy_tokenizer):
    model, shape = small
    ids = build_dataset(toy_tokenizer, n_examples=5, num_boxes=3, seed=0).input_ids
    batch, seq = ids.shape
    prefix = capture_prefix(model, ids)
    held = sum(t.numel() * t.element_size() for t in prefix.hidden + prefix.keys + prefix.values)
    # the plan counts the L + 1 hidden states HF returns (the last one is let go after the capture)
    assert plan.prefix_bytes(shape, batch, seq, 4) == held + batch * seq * shape.d_model * 4
    reads = run(model, ids, read=Read()).reads
    assert plan.read_bytes(shape, batch, seq) == sum(r.numel() * r.element_size() for r in reads.values())


@pytest.mark.parametrize("model", ["llama7b", "goat7b"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_claim_fits_an_80_gb_gpu_with_headroom(model, dtype):
    plans = plan.plan(model, dtype, batch_size=50) + plan.plan(model, dtype, batch_size=50, circuit=model)
    assert {p.claim for p in plans} == {"accuracy", "faithfulness", "completeness", "attention_knockout", "dcm",
                                        "dcm_patching", "path_patching", "minimality"} | ({"cmap"} if model == "goat7b" else set())
    for p in plans:
        assert p.fits(80 * plan.GIB), f"{model} {dtype} {p.claim}: {p.device_bytes / plan.GIB:.1f} GiB"
    if model == "goat7b":  # CMAP holds the fine-tune and its base at once
        cmap = next(p for p in plans if p.claim == "cmap")
        assert cmap.device_bytes > 2 * plan.weights_bytes(plan.shape_of(model), plan.DTYPE_BYTES[dtype])


def test_the_plan_runs_what_the_suites_run():
    """Under the Llama circuit a fine-tune gets no DCM, path patching or minimality (they run on the circuit's
    own model); the base gets no CMAP."""
    default = {p.claim for p in plan.plan("goat7b")}
    assert not default & {"dcm", "path_patching", "minimality"} and "cmap" in default
    assert "cmap" not in {p.claim for p in plan.plan("llama7b")}
    own = {p.claim: p for p in plan.plan("goat7b", circuit="goat7b")}
    assert own["minimality"].gpu_seconds > {p.claim: p for p in plan.plan("llama7b")}["minimality"].gpu_seconds


def test_batch_size_is_the_largest_that_fits():
    assert plan.choose_batch_size("llama7b", "float32", 80 * plan.GIB) == 100
    tight = plan.choose_batch_size("goat7b", "float32", 60 * plan.GIB)  # CMAP holds two 25 GiB models
    assert 1 <= tight < 100
    assert all(p.fits(60 * plan.GIB) for p in plan.plan("goat7b", "float32", tight))
    assert not all(p.fits(60 * plan.GIB) for p in plan.plan("goat7b", "float32", tight + 1))
    assert plan.resolve_batch_size("auto", "cpu", "float32", ["toy-llama"]) == 50
    assert plan.resolve_batch_size("8", "cpu", "float32", []) == 8


def test_releasing_a_device_keeps_only_the_named_models(monkeypatch):
    loaded = {("a", "cuda:0", "float32", ()): object(), ("b", "cuda:0", "float32", ()): object(),
              ("c", "cpu", "float32", ()): object()}
    monkeypatch.setattr(api, "_LOADED", dict(loaded))
    assert api.release("cuda:0", keep=("a",)) == ["b"]
    assert set(k[0] for k in api._LOADED) == {"a", "c"}


def test_the_engine_default_batch_size_is_the_sessions(small, toy_tokenizer):
    from mechbench.intervene import engine

    model, _ = small
    ids = build_dataset(toy_tokenizer, n_examples=5, num_boxes=3, seed=0).input_ids
    full = run(model, ids).last_logits
    calls = []
    handle = model.model.layers[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    engine.set_default_batch_size(2)
    try:
        torch.testing.assert_close(run(model, ids).last_logits, full)
    finally:
        engine.set_default_batch_size(50)
        handle.remove()
    assert calls == [2, 2, 1]
    with pytest.raises(ValueError):
        engine.set_default_batch_size(0)


def test_fast_path_shares_follow_where_the_runs_start():
    """Sorted path-patching batches recompute less than one batch from the earliest position and never more; a
    random K's share lies between its groups' and the whole forward's; a role at a fixed distance from the end
    gains nothing from sorting."""
    from mechbench import plan

    one_batch = plan._sorted_span("prev_query_label", 54, n=50, batch=50)
    assert one_batch == plan._span("prev_query_label", 54)
    assert plan._sorted_span("prev_query_label", 54, n=300, batch=50) < one_batch
    assert plan._sorted_span("last", 54, n=300, batch=50) == plan._span("last", 54)
    circuit = plan._stored_circuit("llama7b")
    share = plan.random_k_share(circuit, 32, 54)
    assert plan._span("prev_query_label", 54) * 0.5 < share < 1.0
    assert plan.random_k_share(None, 32, 54) == 1.0
