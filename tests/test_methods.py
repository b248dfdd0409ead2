"""Mean ablation, circuit evaluation and path patching against hand-written references on random Llamas."""

import pytest
import torch

from mechbench.circuits import Circuit, HeadGroup
from mechbench.data.counterfactuals import CounterfactualDataset, ablation_prompts, noise_pairs
from mechbench.data.dataset import build_dataset
from mechbench.evaluate import accuracy_on
from mechbench.intervene import Read, run
from mechbench.methods.ablation import (
    circuit_accuracy,
    circuit_keep_mask,
    mean_ablation_patches,
    model_minus_accuracy,
    position_means,
)
from mechbench.methods.path_patching import Receivers, path_patching_scores, top_heads
from tests.helpers import random_llama
from tests.reference_llama import reference_last_logits

LAYERS, HEADS, D = 3, 4, 8


@pytest.fixture(scope="module")
def model():
    return random_llama(n_layers=LAYERS, n_heads=HEADS, n_kv_heads=2, head_dim=D, seed=3)


@pytest.fixture(scope="module")
def pairs(toy_tokenizer):
    return noise_pairs(toy_tokenizer, n_examples=2, num_boxes=2, seed=1)


TOY_CIRCUIT = Circuit(
    "toy",
    {
        "value_fetcher": HeadGroup("value_fetcher", "last", ((2, 1), (1, 3))),
        "pos_transmitter": HeadGroup("pos_transmitter", "last", ((1, 0),)),
        "pos_detector": HeadGroup("pos_detector", "query_label", ((0, 2), (1, 1))),
        "struct_reader": HeadGroup("struct_reader", "prev_query_label", ((0, 0),)),
    },
)


def test_position_means_are_means_of_reads(model, toy_tokenizer):
    ds = ablation_prompts(toy_tokenizer, n_examples=6, num_boxes=2, seed=0)
    reads = run(model, ds.input_ids, read=Read()).reads
    means = position_means(model, ds, batch_size=4)
    assert means.shape == (LAYERS, ds.seq_len, HEADS, D)
    torch.testing.assert_close(means[1], reads[1].mean(0))
    assert len({e.context for e in ds.examples}) == 6 and all(e.query_box == 0 for e in ds.examples)


def test_keep_mask_keeps_each_group_at_its_role_only(toy_tokenizer):
    ds = build_dataset(toy_tokenizer, n_examples=5, num_boxes=3, seed=0)
    keep = circuit_keep_mask(TOY_CIRCUIT, ds, LAYERS, HEADS)
    assert keep.sum().item() == 5 * TOY_CIRCUIT.size()
    i = 2
    assert keep[2, i, ds.positions("last")[i], 1] and not keep[2, i, ds.positions("query_label")[i], 1]
    assert keep[0, i, ds.positions("prev_query_label")[i], 0] and not keep[0, i, ds.positions("last")[i], 0]


def test_circuit_accuracy_equals_reference_ablation(model, toy_tokenizer):
    ds = build_dataset(toy_tokenizer, n_examples=3, num_boxes=2, seed=2)
    means = torch.randn(LAYERS, ds.seq_len, HEADS, D)
    keep = circuit_keep_mask(TOY_CIRCUIT, ds, LAYERS, HEADS)
    got = run(model, ds.input_ids, mean_ablation_patches(means, ~keep)).last_logits
    for i in range(len(ds)):
        patches = [
            (l, "head_out", p, h, means[l, p, h], 1.0)
            for l in range(LAYERS)
            for p in range(ds.seq_len)
            for h in range(HEADS)
            if not keep[l, i, p, h]
        ]
        torch.testing.assert_close(got[i], reference_last_logits(model, ds.input_ids[i], patches), rtol=1e-4, atol=1e-4)


def test_ablating_nothing_is_the_full_model_and_everything_in_the_circuit_is_kept(model, toy_tokenizer):
    ds = build_dataset(toy_tokenizer, n_examples=14, num_boxes=2, seed=4)
    means = position_means(model, ablation_prompts(toy_tokenizer, 10, num_boxes=2, seed=1))
    full = accuracy_on(model, ds)
    assert model_minus_accuracy(model, {}, ds, means) == full
    everything = {
        role: {(l, h) for l in range(LAYERS) for h in range(HEADS)}
        for role in ("last", "query_label", "prev_query_label")
    }
    whole = Circuit("all", {r: HeadGroup(r, r, tuple(sorted(hs))) for r, hs in everything.items()})
    # the circuit of every head at every role still ablates all other positions: equal to ablating those
    others = ~circuit_keep_mask(whole, ds, LAYERS, HEADS)
    from mechbench.methods.ablation import ablated_accuracy

    assert circuit_accuracy(model, whole, ds, means) == ablated_accuracy(model, ds, means, others)
    with pytest.raises(Exception, match="outside a model"):
        circuit_accuracy(model, Circuit.load("llama7b"), ds, means)


def _reference_scores(model, pairs, sender_role, receivers=None, corrupt_positions=None):
    clean, corrupt = pairs.base, pairs.source
    scores = torch.zeros(LAYERS, HEADS)
    for i in range(len(pairs)):
        rec_c, rec_x = {}, {}
        clean_logits = reference_last_logits(model, clean.input_ids[i], record=rec_c)
        reference_last_logits(model, corrupt.input_ids[i], record=rec_x)
        target = pairs.target_ids[i]
        p_clean = clean_logits.softmax(-1)[target]
        sp = int(clean.positions(sender_role)[i])
        cp = int((corrupt.positions(sender_role) if corrupt_positions is None else corrupt_positions)[i])
        S = clean.seq_len
        for layer in range(LAYERS):
            for head in range(HEADS):
                patches = [
                    (l, "head_out", p, h, rec_c[(l, "head_out")][p, h], 1.0)
                    for l in range(layer + 1, LAYERS)
                    for p in range(sp, S)
                    for h in range(HEADS)
                ]
                patches.insert(0, (layer, "head_out", sp, head, rec_x[(layer, "head_out")][cp, head], 1.0))
                rec = {}
                logits = reference_last_logits(model, clean.input_ids[i], patches, record=rec)
                if receivers is not None:
                    rp = int(clean.positions(receivers.role)[i])
                    group = HEADS // model.config.num_key_value_heads
                    rpatches = []
                    for l, h in receivers.heads:
                        unit = h if receivers.component == "q" else h // group
                        rpatches.append(
                            (l, receivers.component, rp, unit, rec[(l, receivers.component)][rp, unit], 1.0)
                        )
                    logits = reference_last_logits(model, clean.input_ids[i], rpatches)
                scores[layer, head] += (logits.softmax(-1)[target] - p_clean) / p_clean
    return scores / len(pairs)


def test_path_patching_without_receivers_equals_reference(model, pairs):
    got = path_patching_scores(model, pairs, "last", batch_size=3)
    torch.testing.assert_close(got, _reference_scores(model, pairs, "last"), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(got, path_patching_scores(model, pairs, "last", fast=False), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("component, role, sender_role", [("q", "last", "last"), ("v", "query_label", "query_label")])
def test_path_patching_with_receivers_equals_reference(model, pairs, component, role, sender_role):
    receivers = Receivers(((2, 1), (1, 3)), component, role)
    got = path_patching_scores(model, pairs, sender_role, receivers, batch_size=1)  # batches of one: positions per row
    torch.testing.assert_close(got, _reference_scores(model, pairs, sender_role, receivers), rtol=1e-3, atol=1e-5)
    assert (got[2] == 0).all()  # nothing above the top layer receives
    slow = path_patching_scores(model, pairs, sender_role, receivers, batch_size=2, fast=False)
    torch.testing.assert_close(got, slow, rtol=1e-4, atol=1e-6)


def test_structure_readers_send_their_value_from_a_random_label_of_the_corrupted_prompt(model, pairs):
    """The structure-reader step as discovery runs it: the sender's corrupted value is read in the corrupted prompt
    at a random box label's position (random_label_positions), not at the clean prompt's position."""
    from mechbench.methods.discovery import random_label_positions

    corrupt = random_label_positions(pairs, seed=0)
    for elsewhere in (pairs.base, pairs.source):  # the clean prompt's position, the corrupted prompt's own role's
        assert (corrupt != elsewhere.positions("prev_query_label")).any()  # else the test could not tell them apart
    receivers = Receivers(((2, 1), (1, 3)), "v", "prev_query_label")
    got = path_patching_scores(model, pairs, "prev_query_label", receivers, corrupt_positions=corrupt, batch_size=1)
    expected = _reference_scores(model, pairs, "prev_query_label", receivers, corrupt_positions=corrupt)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)


def test_path_patching_with_the_clean_prompt_as_corruption_scores_zero(model, pairs):
    same = CounterfactualDataset("same", pairs.base, pairs.base, pairs.target_ids)
    assert path_patching_scores(model, same, "last").abs().max() < 1e-5
    scores = torch.tensor([[0.1, -0.5, 0.0, 0.2], [-0.2, 0.3, -0.9, 0.0], [0.0, 0.0, 0.0, -0.1]])
    assert top_heads(scores, 3) == ((1, 2), (0, 1), (1, 0))


def test_knockout_edges_point_at_their_roles_and_block_in_the_reference(model, toy_tokenizer):
    from mechbench.intervene import Knockout
    from mechbench.methods.knockout import EDGES, edge_positions, knockout_accuracy

    ds = build_dataset(toy_tokenizer, n_examples=3, num_boxes=2, seed=6)
    q, k = edge_positions(ds, "last->correct_object")
    assert torch.equal(ds.input_ids[torch.arange(3), k], ds.answer_ids) and (q == ds.seq_len - 1).all()
    for edge in EDGES:
        q, k = edge_positions(ds, edge, seed=1)
        assert (k < q).all() and (k >= 1).all()
    q, k = edge_positions(ds, "query_label->prev_query_label")
    got = run(model, ds.input_ids, knockouts=[Knockout(1, q, k)]).last_logits
    for i in range(3):
        ref = reference_last_logits(model, ds.input_ids[i], knockouts=[(1, int(q[i]), int(k[i]))])
        torch.testing.assert_close(got[i], ref, rtol=1e-4, atol=1e-4)
    # blocking from past the last layer blocks nothing
    assert knockout_accuracy(model, ds, "last->query_label", LAYERS) == accuracy_on(model, ds)


def test_cmap_carries_the_donors_head_outputs_into_the_base(toy_tokenizer):
    """CMAP puts the donor's values at the role positions (read back from the patched base run), and a donor
    identical to the base changes nothing. (Patching every head everywhere from an attention-only fine-tune
    reproduces it exactly: test_engine.py.)"""
    from mechbench.methods.cmap import cmap_accuracy, cmap_patches

    base = random_llama(n_layers=LAYERS, n_heads=HEADS, head_dim=D, seed=8)
    donor = random_llama(n_layers=LAYERS, n_heads=HEADS, head_dim=D, seed=8)
    with torch.no_grad():
        for layer in donor.model.layers:
            layer.self_attn.v_proj.weight.mul_(-2.0)
    ds = build_dataset(toy_tokenizer, n_examples=4, num_boxes=2, seed=0)
    every = [HeadGroup(f"{r}", r, tuple((l, h) for l in range(LAYERS) for h in range(HEADS))) for r in ("last",)]
    patches = cmap_patches(donor, every, ds)
    assert [p.layer for p in patches] == list(range(LAYERS)) and all(p.positions.shape == (4, 1) for p in patches)
    last = ds.positions("last")[:, None]
    donor_reads = run(donor, ds.input_ids, read=Read(positions=last)).reads
    patched_reads = run(base, ds.input_ids, patches, read=Read(positions=last)).reads
    for layer in range(LAYERS):
        torch.testing.assert_close(patched_reads[layer], donor_reads[layer])
    # with the donor == base, CMAP changes nothing
    assert cmap_accuracy(base, base, every, ds) == accuracy_on(base, ds)


def test_dcm_finds_the_head_that_carries_the_target(toy_tokenizer):
    """A planted mechanism: patching head (1, 2) at the last token from the source makes the base predict the
    target exactly when the other heads are left alone; DCM must select it and only it."""
    from mechbench.methods.dcm import masked_accuracy, train_dcm

    model = random_llama(n_layers=2, n_heads=4, head_dim=D, seed=9)
    with torch.no_grad():  # make head (1, 2) dominate the logits, so patching it moves the prediction
        model.model.layers[1].self_attn.o_proj.weight[:, 2 * D : 3 * D] *= 40
    cf = noise_pairs(toy_tokenizer, n_examples=120, num_boxes=2, seed=3)
    # target: what the base predicts with only head (1, 2) patched from the source
    group = HeadGroup("g", "last", ((0, 1), (1, 0), (1, 2), (1, 3)))
    only = torch.tensor([1.0, 1.0, 0.0, 1.0])
    from mechbench.methods import dcm as dcm_module

    reads = dcm_module.source_values(model, cf, "last", [0, 1], 50)
    logits = run(
        model, cf.base.input_ids, dcm_module._patches(group, 1 - only, cf.base.positions("last"), reads, slice(None))
    ).last_logits
    moved = (logits.argmax(-1) != run(model, cf.base.input_ids).last_logits.argmax(-1)).nonzero().flatten()
    planted = CounterfactualDataset("planted", cf.base, cf.source, logits.argmax(-1)).subset(moved[:48])
    assert len(planted) == 48 and masked_accuracy(model, group, planted, only) == 1.0
    assert masked_accuracy(model, group, planted, torch.ones(4)) == 0.0  # unpatched, never the target
    train, val, test = planted.split([24, 12, 12])
    result = train_dcm(model, group, train, val, test, lam=0.01, epochs=6, batch_size=8, validate_every=1)
    assert (1, 2) in result.heads and result.test_accuracy >= 0.75


def test_groups_trained_together_are_each_what_training_it_alone_gives(toy_tokenizer):
    """train_dcm_groups shares the batches' clean runs between groups; each group's mask, heads and test numbers
    must be those of training that group alone (its own optimizer, the same seeded batch order), whether its
    patches start early (layer 0, the query label) or late (layer 1, the last token)."""
    from mechbench.methods.dcm import train_dcm, train_dcm_groups

    model = random_llama(n_layers=2, n_heads=4, head_dim=D, seed=4)
    noise = noise_pairs(toy_tokenizer, n_examples=40, num_boxes=2, seed=5)
    # the target is the source's answer, so moving a head towards the source pays and the masks move
    pairs = CounterfactualDataset("to-source", noise.base, noise.source, noise.source.answer_ids)
    train, val, test = pairs.split([24, 8, 8])
    groups = [HeadGroup("late", "last", ((1, 0), (1, 3))), HeadGroup("early", "query_label", ((0, 1), (1, 2)))]
    options = dict(lam=0.001, lr=0.3, epochs=2, batch_size=8, validate_every=1, seed=2)
    together = train_dcm_groups(model, groups, train, val, test, **options)
    for group, joint in zip(groups, together):
        alone = train_dcm(model, group, train, val, test, **options)
        torch.testing.assert_close(joint.mask, alone.mask, rtol=1e-4, atol=1e-5)
        assert joint.heads == alone.heads and torch.equal(joint.test_correct, alone.test_correct)
        assert joint.val_accuracy == alone.val_accuracy
    assert any(not torch.equal(r.mask, torch.ones(2)) for r in together)  # masks moved: not two inits compared


def test_completeness_of_the_whole_model_is_exact(model, toy_tokenizer):
    """With K = nothing removed twice over, F(C \\ K) is the circuit's accuracy and F(M \\ K) the model's;
    for a group K, both sides ablate exactly K's heads at K's role on top of their own ablation."""
    from mechbench.methods.ablation import completeness

    ds = build_dataset(toy_tokenizer, n_examples=14, num_boxes=2, seed=4)
    means = position_means(model, ablation_prompts(toy_tokenizer, 10, num_boxes=2, seed=1))
    result = completeness(model, TOY_CIRCUIT, ds, means, "entire_group", group="pos_detector")
    k = {"query_label": set(TOY_CIRCUIT.groups["pos_detector"].heads)}
    assert result.model_minus_k == [model_minus_accuracy(model, k, ds, means)]
    assert result.circuit_minus_k == [
        circuit_accuracy(
            model, TOY_CIRCUIT.without({"pos_detector": set(TOY_CIRCUIT.groups["pos_detector"].heads)}), ds, means
        )
    ]
    sampled = completeness(model, TOY_CIRCUIT, ds, means, iterations=3, seed=1)
    assert len(sampled.incompleteness) == 3 and all(0 <= x <= 1 for x in sampled.incompleteness)
    assert sampled.circuit_minus_k == completeness(model, TOY_CIRCUIT, ds, means, iterations=3, seed=1).circuit_minus_k


def test_cmap_head_sets_are_the_papers_dcm_heads_where_stored():
    from mechbench.methods.cmap import cmap_head_sets

    goat = cmap_head_sets(Circuit.load("goat7b"))
    assert {g: len(s) for g, s in goat.items()} == {
        "value_fetcher": 56,
        "pos_transmitter": 15,
        "pos_detector": 18,
        "struct_reader": 39,
    }  # docs/paper.md §7
    assert goat["pos_detector"].role == "query_label"
    toy = Circuit.load("toy-llama")
    assert cmap_head_sets(toy) == toy.groups  # no DCM run stored: the whole groups


def test_minimality_before_after_are_circuit_accuracies_without_k(model, toy_tokenizer):
    from mechbench.methods.minimality import HeadSignificance, head_significance, prune

    ds = build_dataset(toy_tokenizer, n_examples=6, num_boxes=2, seed=4)
    means = position_means(model, ablation_prompts(toy_tokenizer, n_examples=6, num_boxes=2, seed=0))
    group = TOY_CIRCUIT.groups["pos_detector"]  # two heads at the query label

    def f(removed):
        return circuit_accuracy(
            model, TOY_CIRCUIT, ds, means, also_ablate={group.role: set(removed)} if removed else None
        )

    # fraction 0: K is empty, so before = F(C) and after = F(C \ {v})
    for s, v in zip(head_significance(model, TOY_CIRCUIT, "pos_detector", ds, means, fraction=0.0), group.heads):
        assert (s.head, s.before, s.after) == (v, f([]), f([v]))
    # fraction 0.5 of two heads: K is the other head, so before = F(C \ {u}) and after = F(C \ group)
    for s, v in zip(head_significance(model, TOY_CIRCUIT, "pos_detector", ds, means, fraction=0.5), group.heads):
        other = [u for u in group.heads if u != v]
        assert (s.before, s.after) == (f(other), f(group.heads))
    sig = [HeadSignificance("pos_detector", (0, 2), 0.5, 0.4), HeadSignificance("pos_detector", (1, 1), 0.5, 0.5)]
    assert sig[0].relative_drop == pytest.approx(0.25) and sig[1].relative_drop == 0
    pruned = prune(TOY_CIRCUIT, {"pos_detector": sig}, threshold=0.01)
    assert (
        pruned.groups["pos_detector"].heads == ((0, 2),)
        and pruned.groups["value_fetcher"] == TOY_CIRCUIT.groups["value_fetcher"]
    )
    assert "pos_detector" not in prune(TOY_CIRCUIT, {"pos_detector": sig}, threshold=1.0).groups


def test_dcm_source_reads_of_several_roles_in_one_pass_equal_one_pass_each(model, pairs):
    from mechbench.methods.dcm import masked_correct, patched_correct, source_values, source_values_at

    both = source_values_at(model, pairs, ("last", "prev_query_label"), [0, 1, 2])
    for role in ("last", "prev_query_label"):
        single = source_values(model, pairs, role, [0, 1, 2])
        for layer in (0, 1, 2):
            torch.testing.assert_close(both[role][layer], single[layer])
    # and several groups patched through one shared prefix per batch score as one full run each
    groups = [HeadGroup("g", "prev_query_label", ((0, 1), (2, 3))), HeadGroup("h", "last", ((1, 0), (2, 2), (2, 3)))]
    shared = patched_correct(model, groups, pairs, both, batch_size=1)
    for g, correct in zip(groups, shared):
        assert torch.equal(correct, masked_correct(model, g, pairs, torch.zeros(len(g.heads))))


def test_minimality_k_stops_at_the_first_peer_that_does_not_expose_the_head():
    """The paper's rule: K takes the peers in order of pair drop, at most k of them, and stops at the first
    whose pair drop is <= 0 (ties keep the group's order)."""
    from mechbench.methods.minimality import entangled_peers

    drops = {(0, 1): 0.2, (0, 2): 0.0, (1, 0): 0.1, (1, 1): -0.1, (1, 2): 0.1}
    heads = [(0, 0), *drops]
    assert entangled_peers((0, 0), heads, drops.get, k=4) == ((0, 1), (1, 0), (1, 2))
    assert entangled_peers((0, 0), heads, drops.get, k=2) == ((0, 1), (1, 0))
    assert entangled_peers((0, 0), heads, drops.get, k=4, stop_rule=False) == ((0, 1), (1, 0), (1, 2), (0, 2))
    assert entangled_peers((1, 1), heads, lambda u: -1.0, k=3) == ()


def test_group_minimality_resamples_with_k_chosen_again(model, toy_tokenizer):
    """The group's drop is the mean of its heads' before - after, with an interval around it; a resample that
    weighs every example once chooses the K of the whole sample (the reselection is the same rule)."""
    from mechbench.methods.minimality import GroupAblations, entangled_peers, group_minimality, head_significance

    ds = build_dataset(toy_tokenizer, n_examples=28, num_boxes=2, seed=4)
    means = position_means(model, ablation_prompts(toy_tokenizer, n_examples=6, num_boxes=2, seed=0))
    circuit = Circuit(
        "toy",
        dict(
            TOY_CIRCUIT.groups, pos_detector=HeadGroup("pos_detector", "query_label", ((0, 2), (1, 1), (2, 0), (0, 3)))
        ),
    )
    heads = head_significance(model, circuit, "pos_detector", ds, means)
    measured = group_minimality(model, circuit, "pos_detector", ds, means, n_boot=60, seed=1)
    assert [(s.head, s.before, s.after) for s in measured.heads] == [(s.head, s.before, s.after) for s in heads]
    assert measured.drop.value == pytest.approx(sum(s.before - s.after for s in heads) / 4)
    assert measured.drop.lo <= measured.drop.value <= measured.drop.hi and measured.se >= 0
    f = GroupAblations(model, circuit, "pos_detector", ds, means)
    ones = torch.ones(len(ds)).numpy()
    group = circuit.groups["pos_detector"].heads
    for s in heads:
        again = entangled_peers(s.head, group, lambda u: f.accuracy({u}, ones) - f.accuracy({u, s.head}, ones), k=2)
        assert again == s.entangled
