"""Circuit discovery: each step is path patching with the previous group as receivers; the circuit keeps the
most negative heads past the floor; a stored circuit replaces its measured records and never a published one."""

import json
import shutil

import pytest
import torch

from mechbench.circuits import Circuit, HeadGroup, store_circuit
from mechbench.data.counterfactuals import noise_pairs
from mechbench.errors import MechbenchError
from mechbench.methods.discovery import (
    PAPER_STEPS,
    TOY_STEPS,
    Step,
    discover_circuit,
    random_label_positions,
    select_heads,
)
from mechbench.methods.path_patching import Receivers, path_patching_scores
from tests.helpers import random_llama


@pytest.fixture(scope="module")
def model():
    return random_llama(n_layers=3, n_heads=4, head_dim=8, seed=5)


@pytest.fixture(scope="module")
def pairs(toy_tokenizer):
    return noise_pairs(toy_tokenizer, n_examples=4, num_boxes=3, seed=2)


def test_select_heads_orders_by_score_and_drops_heads_past_the_floor():
    scores = torch.tensor([[0.0, -0.3, 0.1], [-0.02, -0.5, -0.001]])
    assert select_heads(scores, 3) == ((1, 1), (0, 1), (1, 0))
    assert select_heads(scores, 5, min_effect=0.01) == ((1, 1), (0, 1), (1, 0))
    assert select_heads(scores, 5, min_effect=0.1) == ((1, 1), (0, 1))
    assert select_heads(torch.zeros(2, 3), 4) == ()  # all ties at zero: nothing, not arbitrary heads


def test_each_step_patches_into_the_previous_groups_heads(model, pairs):
    found = discover_circuit(
        model,
        pairs,
        "r",
        PAPER_STEPS,
        receiver_k={g: 2 for g in ("value_fetcher", "pos_transmitter", "pos_detector", "struct_reader")},
        seed=3,
    )
    a = path_patching_scores(model, pairs, "last")
    torch.testing.assert_close(found.scores["value_fetcher"], a)
    top_a = select_heads(a, 2)
    b = path_patching_scores(model, pairs, "last", Receivers(top_a, "q", "last"))
    torch.testing.assert_close(found.scores["pos_transmitter"], b)
    c = path_patching_scores(model, pairs, "query_label", Receivers(select_heads(b, 2), "v", "query_label"))
    torch.testing.assert_close(found.scores["pos_detector"], c)
    d = path_patching_scores(
        model,
        pairs,
        "prev_query_label",
        Receivers(select_heads(c, 2), "v", "prev_query_label"),
        corrupt_positions=random_label_positions(pairs, 3),
    )
    torch.testing.assert_close(found.scores["struct_reader"], d)
    circuit = found.circuit
    assert set(circuit.groups) <= {"value_fetcher", "pos_transmitter", "pos_detector", "struct_reader"}
    if "value_fetcher" in circuit.groups and "pos_transmitter" in circuit.groups:
        assert not set(circuit.groups["value_fetcher"].heads) & set(circuit.groups["pos_transmitter"].heads)
    for g in circuit.groups.values():
        assert all(found.scores[g.name][h] < 0 for h in g.heads)


def test_a_step_without_receivers_left_finds_nothing(model, pairs):
    steps = (Step("value_fetcher", "last"), Step("pos_transmitter", "last", "value_fetcher", "q", "last"))
    found = discover_circuit(model, pairs, "r", steps, min_effect=1e9)  # the floor empties the fetchers
    assert found.circuit.groups == {} and not found.scores["pos_transmitter"].any()


def test_toy_steps_have_readers_feed_the_value_fetchers():
    assert [s.group for s in TOY_STEPS] == ["value_fetcher", "pos_transmitter", "struct_reader"]
    assert TOY_STEPS[-1].receiver_group == "value_fetcher" and TOY_STEPS[-1].corrupt == "random_label"


def test_store_circuit_replaces_measured_records_and_keeps_published_ones(tmp_path):
    from mechbench.baselines import DEFAULT_DIR

    shutil.copy(DEFAULT_DIR / "circuits.json", tmp_path / "circuits.json")
    c1 = Circuit(
        "mine",
        {
            "value_fetcher": HeadGroup("value_fetcher", "last", ((1, 2),)),
            "struct_reader": HeadGroup("struct_reader", "prev_query_label", ((0, 1),)),
        },
    )
    store_circuit(c1, "test", tmp_path)
    c2 = Circuit("mine", {"value_fetcher": HeadGroup("value_fetcher", "last", ((1, 3), (2, 0)))})
    diff = store_circuit(c2, "test", tmp_path)
    assert "[[1, 2]] -> [[1, 3], [2, 0]]" in diff and "- circuits" in diff
    assert Circuit.load("mine", tmp_path) == c2
    assert Circuit.load("llama7b", tmp_path).groups["struct_reader"].heads[0] == (8, 21)
    with pytest.raises(MechbenchError, match="published"):
        store_circuit(
            Circuit("llama7b", {"value_fetcher": HeadGroup("value_fetcher", "last", ((0, 0),))}), "x", tmp_path
        )
    records = json.loads((tmp_path / "circuits.json").read_text())["records"]
    assert sum(r["circuit"] == "mine" for r in records) == 1


# --- progress, checkpoints and resuming; circuit files (mechbench discover on a model with no circuit yet) ---

from dataclasses import replace as _replace  # noqa: E402

from mechbench.methods.discovery import discover  # noqa: E402
from mechbench.models.registry import CIRCUITS  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    from mechbench.api import get_model

    return get_model("toy-llama")


SMALL = _replace(CIRCUITS["toy-llama"].discovery, n_pairs=12)


class Stop(Exception):
    pass


def test_an_interrupted_discovery_resumes_to_the_same_circuit_and_scores(toy, tmp_path):
    whole = discover(toy, "toy-llama", SMALL)
    lines = []

    def log_then_stop(msg):
        lines.append(msg)
        if msg.startswith("pos_transmitter: saved"):
            raise Stop  # killed after the second step was saved

    with pytest.raises(Stop):
        discover(toy, "toy-llama", SMALL, log=log_then_stop, cache_dir=tmp_path)
    assert any("sender runs" in m and "left" in m for m in lines)  # progress inside a step
    resumed_lines = []
    resumed = discover(toy, "toy-llama", SMALL, log=resumed_lines.append, cache_dir=tmp_path)
    assert "value_fetcher: resumed from the checkpoint" in resumed_lines
    assert "pos_transmitter: resumed from the checkpoint" in resumed_lines
    assert not any(m.startswith("struct_reader: resumed") for m in resumed_lines)  # the unfinished step ran
    assert resumed.circuit == whole.circuit
    for group in whole.scores:
        assert torch.equal(resumed.scores[group], whole.scores[group])
    again = []  # a finished discovery is read back whole: the second claim that needs it runs nothing
    discover(toy, "toy-llama", SMALL, log=again.append, cache_dir=tmp_path)
    assert all("sender runs" not in m for m in again)


def test_a_checkpoint_of_other_settings_or_weights_is_not_reused(toy, tmp_path):
    discover(toy, "toy-llama", SMALL, cache_dir=tmp_path)
    lines = []
    discover(toy, "toy-llama", _replace(SMALL, seed=21), log=lines.append, cache_dir=tmp_path)
    assert not any("resumed" in m for m in lines) and any("starting fresh" in m for m in lines)
    other = _replace(toy, fingerprint=dict(toy.fingerprint, weights_sha256="0" * 64))
    lines = []
    discover(other, "toy-llama", SMALL, log=lines.append, cache_dir=tmp_path)
    assert not any("resumed" in m for m in lines)


def test_cli_discover_writes_where_told_and_its_scores_file_is_a_circuit_file(tmp_path, capsys):
    from mechbench.cli import main

    scores = tmp_path / "found.json"
    assert (
        main(
            [
                "discover",
                "toy-llama",
                "--pairs",
                "12",
                "--name",
                "my-circuit",
                "--store",
                "--baselines-dir",
                str(tmp_path / "b"),
                "--work-dir",
                str(tmp_path / "w"),
                "--scores",
                str(scores),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "sender runs" in err and "saved to" in err
    assert list((tmp_path / "w").glob("my-circuit-*.json"))
    stored = Circuit.load("my-circuit", tmp_path / "b")
    from_file = Circuit.load(str(scores))
    assert from_file.name == "my-circuit" and from_file.groups == stored.groups


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"name": "c"}', "no groups"),
        ('{"name": "c", "groups": {"value_fetcher": {"role": "last", "heads": [[1]]}}}', "[layer, head] pairs"),
        ('{"name": "c", "groups": {"value_fetcher": {"role": "first", "heads": [[1, 2]]}}}', "not one of the roles"),
        ('{"groups": {"value_fetcher": {"role": "last", "heads": [[1, 2]]}}}', "no circuit name"),
        ('{"name": "c", "groups": ', "not valid JSON"),
    ],
)
def test_a_malformed_circuit_file_names_the_file_and_the_format(tmp_path, content, problem):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(MechbenchError) as e:
        Circuit.load(str(path))
    assert problem in str(e.value) and str(path) in str(e.value)


def test_discovery_states_each_scores_sampling_error_and_its_cut(toy):
    """Per-pair scores give each head's cluster-robust error; the cut is the score a head had to beat."""
    from mechbench.data.counterfactuals import noise_pairs
    from mechbench.stats import cluster_se

    found = discover(toy, "toy-llama", SMALL)
    pairs = noise_pairs(toy.tokenizer, SMALL.n_pairs, seed=SMALL.seed)
    per_pair = path_patching_scores(toy, pairs, "last", per_pair=True)
    assert per_pair.shape[-1] == SMALL.n_pairs
    torch.testing.assert_close(per_pair.mean(-1), found.scores["value_fetcher"], rtol=1e-5, atol=1e-7)
    layer, head = found.circuit.groups["value_fetcher"].heads[0]
    assert float(found.se["value_fetcher"][layer, head]) == pytest.approx(
        cluster_se(per_pair[layer, head].double().numpy(), pairs.base.clusters().numpy()), rel=1e-4
    )
    k = dict(SMALL.circuit_k)["value_fetcher"]
    cut = found.cut("value_fetcher", k, SMALL.min_effect)
    assert cut <= -SMALL.min_effect
    assert all(found.scores["value_fetcher"][h] <= cut for h in found.circuit.groups["value_fetcher"].heads)


def test_recall_within_margin_misses_a_silenced_head_and_keeps_the_rest(toy):
    """Power of the path-patching claim: a circuit head whose output is zeroed scores ~0, far above the cut, so
    it is not found; the other heads still are."""
    import copy

    from mechbench.models.loading import ModelHandle

    found = discover(toy, "toy-llama", SMALL)
    k = dict(SMALL.circuit_k)["value_fetcher"]
    heads = found.circuit.groups["value_fetcher"].heads
    assert found.recall(heads, "value_fetcher", k, SMALL.min_effect) == 1.0
    layer, head = heads[0]
    planted = copy.deepcopy(toy.model)
    d = toy.shape.head_dim
    with torch.no_grad():
        planted.model.layers[layer].self_attn.o_proj.weight[:, head * d : (head + 1) * d] = 0
    handle = ModelHandle(toy.name, toy.spec, planted, toy.tokenizer, toy.shape, toy.fingerprint, None)
    again = discover(handle, "toy-llama", SMALL, fixed_receivers=found.circuit)
    assert abs(float(again.scores["value_fetcher"][layer, head])) < 1e-6
    recall = again.recall(heads, "value_fetcher", k, SMALL.min_effect)
    assert recall < 1.0 and recall >= (len(heads) - 2) / len(heads)
