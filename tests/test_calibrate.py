"""The false-alarm audit's machinery: seeds run as separate pytest processes and tallied per claim test; a
planted change silences the named heads in a saved copy."""

import torch

from mechbench.calibrate import plant, planted_heads, run_seeds, table


def test_seeds_are_run_and_tallied_per_claim_test(tmp_path):
    failures = run_seeds("toy-llama", [1, 2], tmp_path, ["-k", "test_accuracy", "--limit=70"], log=lambda m: None)
    assert list(failures) == ["test_accuracy::test_accuracy[toy-llama]"]
    assert failures["test_accuracy::test_accuracy[toy-llama]"] in ([], [1], [2], [1, 2])
    for seed in (1, 2):
        lines = (tmp_path / f"seed-{seed}" / "results.jsonl").read_text().splitlines()
        assert any(f'"seed": {seed}' in line for line in lines)  # each seed really ran with its own seed
    assert "| `test_accuracy::test_accuracy[toy-llama]` |" in table(failures, 2)


def test_a_planted_change_zeroes_exactly_the_named_heads(tmp_path):
    from mechbench.api import get_model
    from mechbench.models.loading import load_model

    path = plant("toy-llama", "readers", tmp_path)
    original, planted = get_model("toy-llama"), load_model(str(path))
    d = original.shape.head_dim
    for layer in range(original.shape.n_layers):
        w0 = original.model.model.layers[layer].self_attn.o_proj.weight
        w1 = planted.model.model.layers[layer].self_attn.o_proj.weight
        for head in range(original.shape.n_heads):
            cols = slice(head * d, (head + 1) * d)
            if (layer, head) in planted_heads("toy-llama", "readers"):
                assert not w1[:, cols].any()
            else:
                assert torch.equal(w0[:, cols], w1[:, cols])


def test_a_plant_silences_the_leading_heads_of_the_circuit_evaluated_on_the_model(tmp_path):
    """The plant is read from the circuit the suites evaluate on the model (a fine-tune: its base's), never a fixed
    list: on toy-llama and its fine-tunes the toy circuit's four leading readers and fetchers; on a model evaluated
    with another circuit, that circuit's heads; a circuit without the group is refused with its groups."""
    import json

    import pytest

    from mechbench.circuits import Circuit
    from mechbench.errors import MechbenchError

    toy = Circuit.load("toy-llama")
    for model in ("toy-llama", "toy-goat", "toy-vicuna"):
        # the layer of the group's strongest head, its first four heads there: the audit's plants
        assert planted_heads(model, "readers") == ((0, 3), (0, 1), (0, 4), (0, 2))
        assert planted_heads(model, "fetchers") == toy.groups["value_fetcher"].heads[:4]
    other = {
        "name": "other",
        "groups": {"struct_reader": {"role": "prev_query_label", "heads": [[1, 5], [0, 7], [1, 2]]}},
    }
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    assert planted_heads("toy-llama", "readers", circuit=str(path)) == ((1, 5), (1, 2))
    with pytest.raises(MechbenchError, match="no value_fetcher group.*struct_reader"):
        planted_heads("toy-llama", "fetchers", circuit=str(path))


def test_a_run_that_judges_no_claim_is_an_error_not_an_empty_table(tmp_path):
    import pytest

    from mechbench.errors import MechbenchError

    with pytest.raises(MechbenchError, match="pytest judged no claim"):
        run_seeds("toy-llama", [1], tmp_path, ["-k", "no_such_claim"], log=lambda m: None)
    with pytest.raises(MechbenchError, match="no claim suites at"):
        run_seeds("toy-llama", [1], tmp_path, suites=tmp_path / "nowhere", log=lambda m: None)


def test_a_plant_of_an_adapter_model_silences_the_merged_heads(tmp_path):
    """toy-goat is a LoRA fine-tune: the plant merges the adapters first, so the saved copy is a plain model whose
    silenced heads write nothing (zeroing the base weight alone left the adapters' B @ A columns), and whose other
    heads are the fine-tune's merged weights."""
    import copy

    from mechbench.api import get_model
    from mechbench.calibrate import _merged
    from mechbench.models.loading import load_model

    path = plant("toy-goat", "readers", tmp_path, "toy-llama")
    assert not any("lora" in f.name for f in path.iterdir())
    original, planted = get_model("toy-goat"), load_model(str(path))
    merged = _merged(copy.deepcopy(original.model))
    silenced = planted_heads("toy-goat", "readers", "toy-llama")
    d = original.shape.head_dim
    changed = 0
    for layer in range(original.shape.n_layers):
        o0 = original.model.model.layers[layer].self_attn.o_proj
        w0 = merged.model.layers[layer].self_attn.o_proj.weight
        w1 = planted.model.model.layers[layer].self_attn.o_proj.weight
        assert type(w1) is torch.nn.Parameter and not hasattr(
            planted.model.model.layers[layer].self_attn.o_proj, "base_layer"
        )
        changed += int(hasattr(o0, "base_layer"))
        for head in range(original.shape.n_heads):
            cols = slice(head * d, (head + 1) * d)
            if (layer, head) in silenced:
                assert not w1[:, cols].any()
            else:
                torch.testing.assert_close(w0[:, cols], w1[:, cols])
    assert changed, "toy-goat has no LoRA o_proj here: the test no longer tests a merge"
