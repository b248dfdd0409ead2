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
    paper = {
        "accuracy",
        "faithfulness",
        "completeness",
        "attention_knockout",
        "dcm",
        "dcm_patching",
        "path_patching",
        "minimality",
    } | ({"cmap"} if model == "goat7b" else set())
    # the paper's claims (CMAP on a fine-tune only), and any claim registered beside them, each a registered spec's
    planned = {p.claim for p in plans}
    assert paper <= planned <= set(plan.planned_claims()) and ("cmap" in planned) == (model == "goat7b")
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
    loaded = {
        ("a", "cuda:0", "float32", ()): object(),
        ("b", "cuda:0", "float32", ()): object(),
        ("c", "cpu", "float32", ()): object(),
    }
    monkeypatch.setattr(api, "_LOADED", dict(loaded))
    assert api.release("cuda:0", keep=("a",)) == ["b"]
    assert set(k[0] for k in api._LOADED) == {"a", "c"}


def test_the_batch_size_is_the_models_own(small, toy_tokenizer):
    """A caller naming no batch size runs the model's own (set where a session loads it: the memory plan chooses it
    per model and device), not a process-wide number: another model keeps its own, one nobody set runs the default,
    and a handle, its PeftModel and its module are one model."""
    from mechbench.intervene import batch_size_of, set_batch_size
    from mechbench.models.run_options import DEFAULT_BATCH_SIZE

    model, _ = small
    other = random_llama(n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, seed=3)
    ids = build_dataset(toy_tokenizer, n_examples=5, num_boxes=3, seed=0).input_ids
    full = run(model, ids).last_logits
    calls = []
    handle = model.model.layers[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    set_batch_size(model, 2)
    try:
        assert (batch_size_of(model), batch_size_of(other)) == (2, DEFAULT_BATCH_SIZE)
        torch.testing.assert_close(run(model, ids).last_logits, full)
        assert calls == [2, 2, 1]
        calls.clear()
        run(model, ids, batch_size=4)  # a caller's own batch size wins
        assert calls == [4, 1]
    finally:
        set_batch_size(model, DEFAULT_BATCH_SIZE)
        handle.remove()
    for bad in (0, -1, True):
        with pytest.raises(ValueError):
            set_batch_size(model, bad)
    toy = api.get_model("toy-goat")
    set_batch_size(toy, 7)
    try:
        assert batch_size_of(toy) == batch_size_of(toy.model) == batch_size_of(toy.peft_model) == 7
    finally:
        set_batch_size(toy, DEFAULT_BATCH_SIZE)


def test_a_session_sets_the_batch_size_of_each_model_it_loads(tmp_path):
    """The claims' loader (mechbench.claims.run.load_model) gives the model the session's batch size."""
    from mechbench.claims.run import load_model
    from mechbench.claims.settings import Settings
    from mechbench.intervene import batch_size_of, set_batch_size
    from mechbench.models.run_options import DEFAULT_BATCH_SIZE

    settings = Settings(
        models=("toy-llama",),
        base_model=None,
        baseline_model=None,
        circuits=None,
        device="cpu",
        dtype="float32",
        limit=None,
        seed=0,
        baselines_dir=tmp_path,
        update_baselines=False,
        results_dir=tmp_path,
        require_models=False,
        batch_size=3,
    )
    handle = load_model("toy-llama", settings)
    try:
        assert batch_size_of(handle) == 3
    finally:
        set_batch_size(handle, DEFAULT_BATCH_SIZE)


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


def test_the_wall_time_on_several_gpus_is_list_scheduling_with_the_longest_model_the_floor(capsys):
    from mechbench.cli import main

    assert plan.wall_hours({"a": 3.0, "b": 1.0, "c": 1.0, "d": 1.0}, 1) == (6.0, [["a", "b", "c", "d"]])
    assert plan.wall_hours({"a": 3.0, "b": 1.0, "c": 1.0, "d": 1.0}, 2) == (3.0, [["a"], ["b", "c", "d"]])
    assert plan.wall_hours({"a": 1.0, "b": 3.0}, 4)[0] == 3.0  # more GPUs than models: the longest is the floor
    assert main(["plan", "llama7b", "vicuna7b", "goat7b", "float7b", "--own-circuit", "--gpus", "4"]) in (0, None)
    out = capsys.readouterr().out
    total = float(out.split("in all: ")[1].split(" GPU hours")[0])
    wall = float(out.split("about ")[1].split(" hours of wall")[0])
    assert "pytest -n 4" in out and "floor is the longest model's, goat7b" in out and wall < total
    assert main(["plan", "llama7b", "--gpus", "0"]) == 2 and "--gpus" in capsys.readouterr().err


def test_a_model_wider_than_one_gpu_is_planned_over_the_gpus_a_device_map_needs(capsys):
    from mechbench.cli import main

    # a device map's model holds all its GPUs: it starts when that many are free
    assert plan.wall_hours({"a": 1.0, "b": 2.0, "c": 1.0}, 2, {"b": 2}) == (4.0, [["a", "b", "c"], ["b"]])
    with pytest.raises(ValueError, match="needs 3 GPUs"):
        plan.wall_hours({"a": 1.0}, 2, {"a": 3})
    assert plan.gpus_needed("llama7b", "float32", 80 * plan.GIB)[0] == 1
    k, largest = plan.gpus_needed("llama7b", "float32", 24 * plan.GIB)
    # CMAP holds two 7B models (54 GB in float32), DCM one with its gradients: over 2 x 20.4 GiB usable
    assert k == 3 and largest.device_bytes > 2 * 0.85 * 24 * plan.GIB
    assert main(["plan", "llama7b", "--gpu-gib", "24", "--gpus", "4"]) in (0, None)
    out = capsys.readouterr().out
    assert "does not fit one 24 GiB GPU" in out and "over 3 GPUs with --device cuda --device-map auto" in out
    assert "against 72 GiB" in out and "every claim fits" in out
    assert main(["plan", "llama7b", "--gpu-gib", "24"]) == 2
    assert "needs 3 GPUs of 24 GiB under a device map, and --gpus is 1" in capsys.readouterr().err
