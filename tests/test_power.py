"""Power of the method tests: planted mechanisms on which a wrongly wired method gives different numbers.

Each method is checked against what it should compute, written out plainly here (loops over examples, heads
and positions) on top of the hand-written reference forward of ``tests/reference_llama.py``. Random models never
do the task, so their accuracies are 0 whatever a method does; to see a method's wiring and its aggregates
anyway, most tests replace the ``top1_correct`` a method imported by a :class:`LogitOracle`: it recognises
which of the expected interventions produced the logits the method hands it (to float tolerance), checks the
targets, and answers with correctness designed by the test. A method that reads the wrong model, role,
position, layer or head produces logits the oracle does not know; one that reduces or orders the per-example
correctness wrongly returns numbers that differ from the design.
"""

import math
import random
from dataclasses import replace
from itertools import combinations

import pytest
import torch

from mechbench.circuits import Circuit, HeadGroup
from mechbench.data.counterfactuals import CounterfactualDataset, ablation_prompts, desiderata_pairs
from mechbench.data.dataset import build_dataset
from mechbench.evaluate import accuracy_on, correct_on, top1_correct
from mechbench.intervene import Read, run
from mechbench.methods import ablation, cmap, dcm, knockout
from mechbench.methods.ablation import (
    Completeness,
    Faithfulness,
    circuit_accuracy,
    circuit_correct,
    circuit_keep_mask,
    completeness,
    faithfulness,
    mean_ablation_patches,
    model_minus_accuracy,
    model_minus_correct,
    position_means,
    random_circuit,
)
from mechbench.methods.minimality import HeadSignificance, head_significance
from tests.helpers import random_llama
from tests.reference_llama import reference_last_logits

LAYERS, HEADS, D = 3, 4, 8
ROLES = ("last", "query_label", "prev_query_label")

# A circuit spread over all three layers and all three roles, with two groups at the last token and one head
# ((1, 0)) at two roles. (Heads at earlier roles sit below the top layer: nothing reads the top layer there.)
CIRCUIT = Circuit(
    "planted",
    {
        "value_fetcher": HeadGroup("value_fetcher", "last", ((2, 1), (1, 3), (0, 2))),
        "pos_transmitter": HeadGroup("pos_transmitter", "last", ((1, 0),)),
        "pos_detector": HeadGroup("pos_detector", "query_label", ((1, 0), (0, 3), (1, 1))),
        "struct_reader": HeadGroup("struct_reader", "prev_query_label", ((0, 0), (1, 2), (0, 1))),
    },
)


# --- fixtures and plain helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The reference forward is many tiny matrix products: one thread is faster than two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def strong_llama(seed):
    """A random Llama with its weights scaled up (attention x4, the rest x3), so that every head at every
    role moves the last logits by far more than float error (a head in the top layer at an earlier position
    still cannot: nothing reads it)."""
    model = random_llama(n_layers=LAYERS, n_heads=HEADS, n_kv_heads=2, head_dim=D, seed=seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" not in name:
                weight.mul_(4.0 if "self_attn" in name else 3.0)
    return model


@pytest.fixture(scope="module")
def model():
    return strong_llama(21)


@pytest.fixture(scope="module")
def donor():
    return strong_llama(22)


@pytest.fixture(scope="module")
def ds(toy_tokenizer):
    """Three prompts of three boxes querying boxes 0, 1, 2: the earlier query label sits at a different token
    in each, and the query label, the last token and the earlier label are all different positions."""
    data = build_dataset(toy_tokenizer, n_examples=3, num_boxes=3, seed=5)
    assert data.positions("prev_query_label").unique().numel() == 3
    return data


@pytest.fixture(scope="module")
def means(ds):
    """Arbitrary ablation values (large, so every ablation moves the logits)."""
    return torch.randn(LAYERS, ds.seq_len, HEADS, D, generator=torch.Generator().manual_seed(0))


def head_outs(model, ids) -> dict[int, torch.Tensor]:
    """The reference's head outputs (o_proj inputs) per layer, [S, heads, D]."""
    record = {}
    reference_last_logits(model, ids, record=record)
    return {layer: record[(layer, "head_out")] for layer in range(LAYERS)}


def pos(dataset, role, i) -> int:
    return int(dataset.positions(role)[i])


def reference_mean_ablated(model, dataset, means, ablated_sites) -> torch.Tensor:
    """[N, vocab]: the reference with the head outputs at ``ablated_sites(i)`` ((layer, position, head)) set to
    ``means[layer, position, head]``."""
    rows = []
    for i in range(len(dataset)):
        patches = [(l, "head_out", p, h, means[l, p, h], 1.0) for (l, p, h) in sorted(ablated_sites(i))]
        rows.append(reference_last_logits(model, dataset.input_ids[i], patches))
    return torch.stack(rows)


def all_sites(dataset):
    return {(l, p, h) for l in range(LAYERS) for p in range(dataset.seq_len) for h in range(HEADS)}


def circuit_sites(dataset, i, groups, removed=None) -> set:
    """Sites a circuit keeps in example i: each group's heads at its role's position, less ``removed``
    ({role: heads}) at those roles' positions."""
    kept = {(l, pos(dataset, g.role, i), h) for g in groups for (l, h) in g.heads}
    gone = {(l, pos(dataset, role, i), h) for role, heads in (removed or {}).items() for (l, h) in heads}
    return kept - gone


def reference_circuit_logits(model, dataset, means, groups, removed=None):
    """F(C \\ removed) logits: everything but the circuit's kept sites mean-ablated."""
    return reference_mean_ablated(
        model, dataset, means, lambda i: all_sites(dataset) - circuit_sites(dataset, i, groups, removed)
    )


def reference_model_minus_logits(model, dataset, means, removed):
    """F(M \\ removed) logits: only ``removed`` ({role: heads}) mean-ablated at those roles' positions."""
    return reference_mean_ablated(
        model,
        dataset,
        means,
        lambda i: {(l, pos(dataset, role, i), h) for role, heads in removed.items() for (l, h) in heads},
    )


def bools(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


class LogitOracle:
    """Stands in for ``top1_correct``: names the expected intervention whose logits it is handed (to float
    tolerance), records that name (or 'unexpected logits', or the name with 'wrong targets'), and answers with
    the correctness the test designed for that intervention."""

    def __init__(self):
        self.expected: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.calls: list[str] = []

    def expect(self, name: str, logits: torch.Tensor, targets: torch.Tensor, correct: torch.Tensor) -> None:
        logits = logits.detach().float().cpu()
        for other, seen, _, _ in self.expected:
            if seen.shape == logits.shape and (seen - logits).abs().max() < 1e-3:
                raise AssertionError(f"test setup: {name!r} and {other!r} give the same logits")
        self.expected.append((name, logits, targets.clone(), correct.clone()))

    def __call__(self, logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        logits = logits.detach().float().cpu()
        for name, seen, targets, correct in self.expected:
            if seen.shape == logits.shape and torch.allclose(logits, seen, rtol=1e-5, atol=2e-5):
                self.calls.append(name if torch.equal(target_ids.cpu(), targets) else f"{name} with wrong targets")
                return correct.clone()
        # a method that scores batch by batch (the engine's run_many with a score) hands over consecutive rows: the
        # batch starting at row 0 names the intervention, the later ones must continue it
        for name, seen, targets, correct in self.expected:
            n = len(logits)
            for start in range(len(seen) - n + 1) if seen.shape[1:] == logits.shape[1:] and n < len(seen) else ():
                if torch.allclose(logits, seen[start : start + n], rtol=1e-5, atol=2e-5):
                    if not torch.equal(target_ids.cpu(), targets[start : start + n]):
                        self.calls.append(f"{name} with wrong targets")
                    elif start == 0:
                        self.calls.append(name)
                    return correct[start : start + n].clone()
        self.calls.append("unexpected logits")
        return torch.zeros(len(logits), dtype=torch.bool)


@pytest.fixture
def oracle(monkeypatch):
    o = LogitOracle()
    for module in (ablation, cmap, dcm, knockout):
        monkeypatch.setattr(module, "top1_correct", o)
    return o


# --- evaluate.py ---------------------------------------------------------------------------------------


def test_top1_correct_compares_each_rows_argmax_with_its_target():
    """Guards against an argmax over the wrong axis, argmin, or a comparison with the wrong targets."""
    logits = torch.tensor(
        [[0.0, 3.0, 1.0, -1.0, 0.5], [2.0, 0.0, 1.0, 4.0, 0.0], [0.0, 0.0, 0.1, -5.0, 0.0], [9.0, 1.0, 1.0, 1.0, 8.0]]
    )
    assert top1_correct(logits, torch.tensor([1, 3, 0, 0])).tolist() == [True, True, False, True]
    assert top1_correct(logits, torch.tensor([4, 3, 2, 1])).tolist() == [False, True, True, False]


def test_accuracy_on_is_the_share_of_examples_whose_argmax_is_the_answer(model, toy_tokenizer):
    """Answers set to the reference's own argmax on three of four prompts: correct_on must be exactly those
    rows and accuracy 3/4 (guards against reading the wrong position, summing, or another reduction)."""
    data = build_dataset(toy_tokenizer, n_examples=4, num_boxes=2, seed=1)
    argmax = torch.stack([reference_last_logits(model, data.input_ids[i]).argmax() for i in range(4)])
    answers = argmax.clone()
    answers[1] = (argmax[1] + 1) % model.config.vocab_size
    data = replace(data, answer_ids=answers)
    assert correct_on(model, data, batch_size=3).tolist() == [True, False, True, True]
    assert accuracy_on(model, data, batch_size=3) == pytest.approx(0.75)


# --- cmap.py -------------------------------------------------------------------------------------------


CMAP_GROUPS = [
    HeadGroup("value_fetcher", "last", ((2, 1), (1, 3))),
    HeadGroup("pos_transmitter", "last", ((1, 0), (2, 1))),
    HeadGroup("pos_detector", "query_label", ((0, 3), (1, 0))),
    HeadGroup("struct_reader", "prev_query_label", ((1, 1), (0, 2), (1, 3))),
]


def test_cmap_puts_the_donors_head_outputs_at_each_groups_role_into_the_base(model, donor, ds, oracle):
    """The logits CMAP scores are the base model's with the donor's outputs of each group's heads at that
    group's role position; its accuracy is the mean of the designed correctness. Guards against base and donor
    swapped, reads or patches at another role or position, off-by-one layers, the wrong heads, a group dropped
    where two share a role, and the wrong answers or reduction."""

    def cross_patched(receiver, sender):
        """The reference logits of ``receiver`` with ``sender``'s outputs of every group's heads at its role."""
        out = []
        for i in range(len(ds)):
            outs = head_outs(sender, ds.input_ids[i])
            patches = [
                (l, "head_out", pos(ds, g.role, i), h, outs[l][pos(ds, g.role, i), h], 1.0)
                for g in CMAP_GROUPS
                for (l, h) in g.heads
            ]
            out.append(reference_last_logits(receiver, ds.input_ids[i], patches))
        return torch.stack(out)

    oracle.expect("donor -> base", cross_patched(model, donor), ds.answer_ids, bools(True, False, True))
    # the base's outputs patched into the donor: what a swapped wiring would score
    reversed_logits = cross_patched(donor, model)
    oracle.expect("base -> donor", reversed_logits, ds.answer_ids, bools(False, True, True))

    assert cmap.cmap_correct(model, donor, CMAP_GROUPS, ds, batch_size=2).tolist() == [True, False, True]
    circuit = Circuit("c", {g.name: g for g in CMAP_GROUPS})
    assert cmap.cmap_accuracy(model, donor, circuit, ds) == pytest.approx(2 / 3)
    assert oracle.calls == ["donor -> base", "donor -> base"]


# --- dcm.py --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def positional(toy_tokenizer):
    """Pairs whose source queries another box than the base: the earlier query label sits at different tokens
    in base and source, and the target (the base's object at the source's box) is not the base's answer."""
    pairs = desiderata_pairs(toy_tokenizer, "positional", n_pairs=3, num_boxes=3, seed=4)
    assert (pairs.base.positions("prev_query_label") != pairs.source.positions("prev_query_label")).all()
    assert (pairs.target_ids != pairs.base.answer_ids).all()
    return pairs


def test_dcm_source_values_are_the_source_prompts_head_outputs_at_the_sources_role_positions(model, positional):
    """Guards against reading the base prompts, the base's positions, another role, a role's slot mixed up
    among several roles, or other layers."""
    pairs = positional
    refs = [head_outs(model, pairs.source.input_ids[i]) for i in range(len(pairs))]
    got = dcm.source_values_at(model, pairs, ("prev_query_label", "last", "query_label"), [0, 2])
    single = dcm.source_values(model, pairs, "prev_query_label", [1])
    assert set(got) == set(ROLES) and set(single) == {1}
    for role in ROLES:
        assert set(got[role]) == {0, 2}
        for layer in (0, 2):
            expected = torch.stack([refs[i][layer][pos(pairs.source, role, i)][None] for i in range(len(pairs))])
            torch.testing.assert_close(got[role][layer], expected, rtol=1e-4, atol=1e-5)
    expected = torch.stack([refs[i][1][pos(pairs.source, "prev_query_label", i)][None] for i in range(len(pairs))])
    torch.testing.assert_close(single[1], expected, rtol=1e-4, atol=1e-5)


DCM_GROUP = HeadGroup("struct_reader", "prev_query_label", ((1, 1), (0, 3), (1, 0), (0, 1), (1, 2)))


def test_dcm_masked_correct_patches_the_rounded_zero_heads_from_the_source_into_the_base(model, positional, oracle):
    """Mask [0.2, 0.9, 0.4, 0.1, 0.7] rounds to patching (1, 1), (1, 0) and (0, 1) fully, from the source's
    earlier-label token into the base's; the targets are the desideratum's. Guards against alpha = mask instead
    of 1 - mask, no rounding, the mask's entries mapped to the wrong heads, source and base or their positions
    swapped, another role, the base's answers instead of the targets, and a wrong reduction (also through
    patched_correct, which shares one clean prefix per batch between groups)."""
    pairs = positional
    mask = torch.tensor([0.2, 0.9, 0.4, 0.1, 0.7])
    patched = [h for h, m in zip(DCM_GROUP.heads, mask.tolist()) if m < 0.5]
    assert patched == [(1, 1), (1, 0), (0, 1)]
    expected, clean = [], []
    for i in range(len(pairs)):
        source = head_outs(model, pairs.source.input_ids[i])
        sp, bp = pos(pairs.source, DCM_GROUP.role, i), pos(pairs.base, DCM_GROUP.role, i)
        patches = [(l, "head_out", bp, h, source[l][sp, h], 1.0) for (l, h) in patched]
        expected.append(reference_last_logits(model, pairs.base.input_ids[i], patches))
        clean.append(reference_last_logits(model, pairs.base.input_ids[i]))
    oracle.expect("rounded mask", torch.stack(expected), pairs.target_ids, bools(False, True, True))
    oracle.expect("nothing patched", torch.stack(clean), pairs.target_ids, bools(True, False, False))

    assert dcm.masked_correct(model, DCM_GROUP, pairs, mask, batch_size=2).tolist() == [False, True, True]
    same_rounding = torch.tensor([0.45, 0.6, 0.3, 0.05, 0.8])
    assert dcm.masked_accuracy(model, DCM_GROUP, pairs, same_rounding) == pytest.approx(2 / 3)
    assert dcm.masked_accuracy(model, DCM_GROUP, pairs, torch.ones(5)) == pytest.approx(1 / 3)
    reads = dcm.source_values_at(model, pairs, (DCM_GROUP.role,), [0, 1, 2])
    selected = HeadGroup("selected", DCM_GROUP.role, tuple(patched))  # what DCM selected, patched whole
    assert dcm.patched_correct(model, [selected], pairs, reads, batch_size=2)[0].tolist() == [False, True, True]
    assert oracle.calls == ["rounded mask", "rounded mask", "nothing patched", "rounded mask"]


def test_train_dcm_selects_the_planted_head_and_scores_the_rounded_mask_on_the_test_split(toy_tokenizer, monkeypatch):
    """Planted: head (1, 2) amplified, so patching it alone at the last token from the source moves the base's
    prediction; targets are those moved predictions. The sources carry an extra segment, so their last token is
    not the base's. Two test targets are set to the unpatched prediction, so the test accuracy (6/8) is not
    the validation accuracy (1). Every training batch must patch each base prompt with its own source's head
    outputs. Guards against the selection inverted (rounded mask 1), the training blend reversed (alpha = mask),
    the loss's sign, base and source (or their positions) swapped, training rows paired with other rows'
    sources, and the test correctness taken from the validation split or with the validation reads."""
    model = random_llama(n_layers=LAYERS, n_heads=HEADS, head_dim=D, seed=9)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[:, 2 * D : 3 * D] *= 40
    pairs = desiderata_pairs(toy_tokenizer, "add_seg_start", n_pairs=80, num_boxes=2, seed=3)
    assert pairs.source.seq_len > pairs.base.seq_len
    group = HeadGroup("value_fetcher", "last", ((2, 0), (0, 1), (1, 2), (1, 3), (0, 3)))
    only_planted = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    reads = dcm.source_values(model, pairs, "last", [0, 1, 2])
    patched = run(
        model,
        pairs.base.input_ids,
        dcm._patches(group, 1 - only_planted, pairs.base.positions("last"), reads, slice(None)),
    ).last_logits.argmax(-1)
    clean = run(model, pairs.base.input_ids).last_logits.argmax(-1)
    moved = (patched != clean).nonzero().flatten()[:38]
    assert len(moved) == 38
    planted = CounterfactualDataset("planted", pairs.base, pairs.source, patched).subset(moved)
    train, val, test = planted.split([24, 6, 8])
    test.target_ids[[1, 5]] = clean[moved[30:]][[1, 5]]

    training_batches = []

    def recording_run(model, input_ids, patches=(), *args, grad=False, **kwargs):
        if grad:
            training_batches.append((input_ids, [(p.layer, p.heads, p.positions, p.values.detach()) for p in patches]))
        return run(model, input_ids, patches, *args, grad=grad, **kwargs)

    monkeypatch.setattr(dcm, "run", recording_run)
    result = dcm.train_dcm(model, group, train, val, test, lam=0.01, epochs=3, batch_size=8, validate_every=1)
    monkeypatch.undo()

    source_last = train.source.positions("last")[:, None]
    source_outs = run(model, train.source.input_ids, read=Read(positions=source_last)).reads  # [N, 1, H, D]
    row_of = {tuple(ids.tolist()): i for i, ids in enumerate(train.base.input_ids)}
    assert len(row_of) == len(train) and len(training_batches) == 9
    for input_ids, patches in training_batches:
        rows = torch.tensor([row_of[tuple(ids.tolist())] for ids in input_ids])
        assert sorted({layer for layer, *_ in patches}) == [0, 1, 2]
        for layer, heads, positions, values in patches:
            assert torch.equal(positions, train.base.positions("last")[rows][:, None])
            torch.testing.assert_close(values, source_outs[layer][rows][:, :, heads])
    assert result.heads == ((1, 2),)
    assert result.mask.round().tolist() == only_planted.tolist()
    assert result.val_accuracy == 1.0
    assert result.test_correct.tolist() == [True, False, True, True, True, False, True, True]
    assert result.test_accuracy == pytest.approx(0.75)

    # Validation targets that are the unpatched predictions: training still drives the planted head's mask to
    # 0, but the best mask on validation (the one kept) patches nothing. Guards against keeping the last mask.
    unpatched_val = CounterfactualDataset("planted", val.base, val.source, clean[moved[24:30]])
    result = dcm.train_dcm(model, group, train, unpatched_val, test, lam=0.01, epochs=3, batch_size=8, validate_every=1)
    assert result.heads == () and result.val_accuracy == 1.0
    assert result.test_correct.tolist() == [False, True, False, False, False, True, False, False]


# --- ablation.py ---------------------------------------------------------------------------------------


def test_position_means_average_every_layer_position_and_head_over_the_prompts(model, toy_tokenizer):
    """Guards against a mean over the wrong axis, a sum, or layers out of order."""
    prompts = ablation_prompts(toy_tokenizer, n_examples=3, num_boxes=3, seed=2)
    outs = [head_outs(model, prompts.input_ids[i]) for i in range(3)]
    expected = torch.stack([sum(o[layer] for o in outs) / 3 for layer in range(LAYERS)])
    got = position_means(model, prompts, batch_size=2)
    assert got.shape == (LAYERS, prompts.seq_len, HEADS, D)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_circuit_keep_mask_is_each_groups_heads_at_its_roles_position_and_nothing_else(ds):
    """Guards against a group kept at another role's position, layer and head transposed, or extra sites."""
    expected = torch.zeros(LAYERS, len(ds), ds.seq_len, HEADS, dtype=torch.bool)
    for i in range(len(ds)):
        for l, p, h in circuit_sites(ds, i, CIRCUIT.groups.values()):
            expected[l, i, p, h] = True
    assert torch.equal(circuit_keep_mask(CIRCUIT, ds, LAYERS, HEADS), expected)


K_BY_ROLE = {"last": {(1, 3)}, "query_label": {(1, 0)}, "prev_query_label": {(0, 1), (1, 2)}}


def test_circuit_and_model_minus_k_are_the_references_mean_ablations(model, ds, means, oracle):
    """F(C): all but the circuit's heads at their roles ablated; F(C \\ K): K's heads too, at K's roles; F(M \\ K):
    only K's heads at K's roles. Guards against keeping or ablating the wrong sites (role, layer, head), the
    ablation mask inverted, also_ablate added to the kept heads, model_minus ablating everything else, and the
    wrong answers or reduction."""
    groups = list(CIRCUIT.groups.values())
    oracle.expect("C", reference_circuit_logits(model, ds, means, groups), ds.answer_ids, bools(True, True, False))
    oracle.expect(
        "C \\ K",
        reference_circuit_logits(model, ds, means, groups, K_BY_ROLE),
        ds.answer_ids,
        bools(False, True, False),
    )
    oracle.expect(
        "M \\ K", reference_model_minus_logits(model, ds, means, K_BY_ROLE), ds.answer_ids, bools(True, False, True)
    )

    assert circuit_correct(model, CIRCUIT, ds, means, batch_size=2).tolist() == [True, True, False]
    assert circuit_accuracy(model, CIRCUIT, ds, means) == pytest.approx(2 / 3)
    assert circuit_accuracy(model, CIRCUIT, ds, means, also_ablate=K_BY_ROLE) == pytest.approx(1 / 3)
    assert model_minus_correct(model, K_BY_ROLE, ds, means).tolist() == [True, False, True]
    assert model_minus_accuracy(model, K_BY_ROLE, ds, means) == pytest.approx(2 / 3)
    assert oracle.calls == ["C", "C", "C \\ K", "M \\ K", "M \\ K"]


def test_faithfulness_is_circuit_accuracy_over_full_accuracy():
    """Guards against the ratio inverted."""
    assert Faithfulness(0.8, 0.6, 0.1).faithfulness == pytest.approx(0.75)
    assert Faithfulness(0.5, 0.6, 0.1).faithfulness == pytest.approx(1.2)
    assert math.isnan(Faithfulness(0.0, 0.6, 0.1).faithfulness)


def plain_random_groups(circuit, rng):
    """The paper's random circuit drawn plainly: per group and per head, a layer then a head, uniformly, with
    replacement."""
    return [
        HeadGroup(name, g.role, tuple((rng.randrange(LAYERS), rng.randrange(HEADS)) for _ in g.heads))
        for name, g in circuit.groups.items()
    ]


def test_random_circuit_keeps_group_sizes_and_roles_and_draws_every_head_uniformly():
    """Guards against draws from fewer layers or heads (n - 1), layer and head drawn in the other order, other
    group sizes or roles."""
    rng, plain_rng = random.Random(3), random.Random(3)
    seen = set()
    for _ in range(30):
        drawn = random_circuit(CIRCUIT, LAYERS, HEADS, rng)
        expected = plain_random_groups(CIRCUIT, plain_rng)
        assert list(drawn.groups.values()) == expected
        seen |= {h for g in drawn.groups.values() for h in g.heads}
    assert seen == {(l, h) for l in range(LAYERS) for h in range(HEADS)}


def test_faithfulness_scores_the_circuit_and_seeded_random_circuits(model, ds, means, oracle):
    """The circuit's correctness and each random circuit's (same group sizes and roles, heads drawn with
    replacement by random.Random(seed), in draw order); random accuracy is the mean over draws and examples.
    Guards against the random circuits drawn otherwise or evaluated at the wrong roles, rows out of draw order,
    the random mean taken over one draw or one axis only, and circuit and random results swapped."""
    groups = list(CIRCUIT.groups.values())
    oracle.expect(
        "circuit", reference_circuit_logits(model, ds, means, groups), ds.answer_ids, bools(True, False, True)
    )
    rng = random.Random(7)
    designed = [
        bools(True, False, False),
        bools(False, False, False),
        bools(True, True, False),
        bools(False, True, True),
    ]
    for j, correct in enumerate(designed):
        oracle.expect(
            f"random {j}",
            reference_circuit_logits(model, ds, means, plain_random_groups(CIRCUIT, rng)),
            ds.answer_ids,
            correct,
        )

    result = faithfulness(model, CIRCUIT, ds, means, full_accuracy=0.9, n_random=4, seed=7, batch_size=2)
    assert sorted(oracle.calls) == sorted(["circuit"] + [f"random {j}" for j in range(4)])
    assert result.full_accuracy == 0.9
    assert result.circuit_accuracy == pytest.approx(2 / 3)
    assert result.circuit_correct.tolist() == [True, False, True]
    assert torch.equal(result.random_correct, torch.stack(designed))
    assert result.random_circuit_accuracy == pytest.approx(5 / 12)
    assert result.faithfulness == pytest.approx((2 / 3) / 0.9)


def test_incompleteness_is_the_absolute_difference_per_draw():
    """Guards against abs dropped, the sides swapped in a signed difference, or draws reordered."""
    result = Completeness([0.5, 0.9, 0.2], [0.7, 0.4, 0.2])
    assert result.incompleteness == pytest.approx([0.2, 0.5, 0.0])


def plain_random_k(circuit, iterations, seed):
    """The completeness draws plainly: per iteration, per group and head in order, the head enters K when
    rng.random() < 1/2."""
    rng = random.Random(seed)
    draws = []
    for _ in range(iterations):
        k = {}
        for g in circuit.groups.values():
            for h in g.heads:
                if rng.random() < 0.5:
                    k.setdefault(g.role, set()).add(h)
        draws.append(k)
    return draws


def test_completeness_random_sampling_scores_each_draw_of_k_on_both_sides(model, ds, means, oracle):
    """Per seeded draw of K (each head with probability 1/2): F(C \\ K) and F(M \\ K) from the reference, the
    lists the per-draw means of the correct tensors in draw order. Guards against other draws, K at the wrong
    roles, the circuit side reported as the model side, the mean over the wrong axis, draws reordered."""
    draws = plain_random_k(CIRCUIT, 4, seed=3)
    keys = [tuple(sorted((r, h) for r, hs in k.items() for h in hs)) for k in draws]
    assert len(set(keys)) == 4  # four different K
    groups = list(CIRCUIT.groups.values())
    designed_c = [
        bools(True, False, False),
        bools(True, True, True),
        bools(False, False, False),
        bools(False, True, True),
    ]
    designed_m = [
        bools(True, True, False),
        bools(False, False, True),
        bools(True, True, True),
        bools(False, False, True),
    ]
    for j, k in enumerate(draws):
        oracle.expect(f"C \\ K{j}", reference_circuit_logits(model, ds, means, groups, k), ds.answer_ids, designed_c[j])
        oracle.expect(f"M \\ K{j}", reference_model_minus_logits(model, ds, means, k), ds.answer_ids, designed_m[j])

    result = completeness(model, CIRCUIT, ds, means, "random_sampling", iterations=4, seed=3, batch_size=2)
    assert sorted(oracle.calls) == sorted([f"C \\ K{j}" for j in range(4)] + [f"M \\ K{j}" for j in range(4)])
    assert torch.equal(result.circuit_minus_k_correct, torch.stack(designed_c))
    assert torch.equal(result.model_minus_k_correct, torch.stack(designed_m))
    assert result.circuit_minus_k == pytest.approx([1 / 3, 1, 0, 2 / 3])
    assert result.model_minus_k == pytest.approx([2 / 3, 1 / 3, 1, 1 / 3])
    assert result.incompleteness == pytest.approx([1 / 3, 2 / 3, 1, 1 / 3])


def test_completeness_entire_group_removes_that_group_at_its_role_on_both_sides(model, ds, means, oracle):
    """Guards against the group removed at another role, another group removed, or the sides swapped."""
    group = CIRCUIT.groups["struct_reader"]
    k = {group.role: set(group.heads)}
    groups = list(CIRCUIT.groups.values())
    oracle.expect(
        "C \\ D", reference_circuit_logits(model, ds, means, groups, k), ds.answer_ids, bools(False, True, False)
    )
    oracle.expect("M \\ D", reference_model_minus_logits(model, ds, means, k), ds.answer_ids, bools(True, True, True))
    result = completeness(model, CIRCUIT, ds, means, "entire_group", group="struct_reader")
    assert oracle.calls == ["C \\ D", "M \\ D"]
    assert result.circuit_minus_k == pytest.approx([1 / 3]) and result.model_minus_k == pytest.approx([1.0])
    assert result.incompleteness == pytest.approx([2 / 3])


# --- minimality.py -------------------------------------------------------------------------------------


MIN_GROUP = "pos_detector"
MIN_CIRCUIT = Circuit(
    "minimal",
    {
        "value_fetcher": HeadGroup("value_fetcher", "last", ((2, 1), (1, 3))),
        "pos_detector": HeadGroup("pos_detector", "query_label", ((1, 1), (0, 3), (1, 2), (0, 2))),
        "struct_reader": HeadGroup("struct_reader", "prev_query_label", ((0, 0),)),
    },
)


def plain_significance(F, heads, fraction, descending=True, rounding=math.ceil, stop_rule=True):
    """(v, before, after, K) per head v from a table F[frozenset(removed)] of accuracies, written plainly."""
    k = rounding(fraction * len(heads))
    out = []
    for v in heads:
        others = [u for u in heads if u != v]
        drops = [F[frozenset({u})] - F[frozenset({u, v})] for u in others]
        # a stable sort: ties keep the group's order
        order = sorted(range(len(others)), key=lambda j: -drops[j] if descending else drops[j])
        taken = []
        for j in order[:k]:
            if stop_rule and drops[j] <= 0:  # the paper's rule: no peer whose absence does not expose v
                break
            taken.append(others[j])
        removed = frozenset(taken)
        out.append((v, F[removed], F[removed | {v}], removed))
    return out


def designed_accuracies(heads, n):
    """Seeded accuracies (in 1/n steps) of every removal of 0 to 3 heads of the group, chosen so that the
    descending ranking, ceil and the head v itself all matter: each wrong variant gives other before/after."""
    rng = random.Random(0)
    subsets = [frozenset(s) for size in (0, 1, 2, 3) for s in combinations(heads, size)]  # K can be empty
    while True:
        F = {s: rng.randrange(n + 1) / n for s in subsets}
        right = plain_significance(F, heads, 0.3)
        variants = [
            (right, plain_significance(F, heads, 0.3, descending=False)),
            (right, plain_significance(F, heads, 0.3, rounding=math.floor)),
            (right, plain_significance(F, heads, 0.3, stop_rule=False)),
            (plain_significance(F, heads[:3], 0.3), plain_significance(F, heads[:3], 0.3, descending=False)),
        ]
        pair_drops_differ = all(
            len({F[frozenset({u})] - F[frozenset({u, v})] for u in heads if u != v}) == 3 for v in heads
        )
        triples_differ = len({F[s] for s in subsets if len(s) == 3}) == 4
        if (
            pair_drops_differ
            and triples_differ
            and all(b != a for _, b, a, _ in right)
            and all([r[1:3] for r in good] != [w[1:3] for w in wrong] for good, wrong in variants)
        ):
            return F


def test_head_significance_ranks_pair_drops_and_takes_ceil_fraction_of_them(model, toy_tokenizer, oracle):
    """Each removal of the group's heads gets a designed accuracy; before/after must follow the plain rule
    (others ranked by F(C \\ {u}) - F(C \\ {u, v}) descending, K = the top ceil(0.3 * 4) = 2 up to the first pair
    drop <= 0, before = F(C \\ K), after = F(C \\ K \\ {v})), with ``candidates`` = 3 on the group's first three
    heads (K <= 1). Guards against an ascending sort, floor instead of ceil, the stop rule left out, the pair
    drop's terms swapped, before/after swapped or taken without K,
    heads removed at another role or from another group, and the per-example correct tensors mixed up."""
    data = build_dataset(toy_tokenizer, n_examples=4, num_boxes=2, seed=3)
    means = torch.randn(LAYERS, data.seq_len, HEADS, D, generator=torch.Generator().manual_seed(1))
    heads = MIN_CIRCUIT.groups[MIN_GROUP].heads
    role = MIN_CIRCUIT.groups[MIN_GROUP].role
    F = designed_accuracies(heads, len(data))
    correct_of = {}
    for s, acc in F.items():  # the designed correctness: acc * n examples right, which ones seeded
        correct = torch.arange(len(data)) < round(acc * len(data))
        correct_of[s] = correct[torch.randperm(len(data), generator=torch.Generator().manual_seed(len(correct_of)))]
        keep = torch.zeros(LAYERS, len(data), data.seq_len, HEADS, dtype=torch.bool)
        # expected logits by the engine (circuit_correct is checked against the reference above)
        for i in range(len(data)):
            for l, p, h in circuit_sites(data, i, MIN_CIRCUIT.groups.values(), {role: s}):
                keep[l, i, p, h] = True
        logits = run(model, data.input_ids, mean_ablation_patches(means, ~keep)).last_logits
        oracle.expect(str(sorted(s)), logits, data.answer_ids, correct_of[s])

    for candidates, tested_heads in ((None, heads), (3, heads[:3])):
        oracle.calls.clear()
        got = head_significance(model, MIN_CIRCUIT, MIN_GROUP, data, means, fraction=0.3, candidates=candidates)
        expected = plain_significance(F, tested_heads, 0.3)
        assert [(s.group, s.head) for s in got] == [(MIN_GROUP, v) for v in tested_heads]
        assert [s.before for s in got] == pytest.approx([before for _, before, _, _ in expected])
        assert [s.after for s in got] == pytest.approx([after for _, _, after, _ in expected])
        for s, (v, _, _, removed) in zip(got, expected):
            assert torch.equal(s.before_correct, correct_of[removed])
            assert torch.equal(s.after_correct, correct_of[removed | {v}])
        scored = {frozenset(c) for size in (1, 2) for c in combinations(tested_heads, size)}
        scored |= {removed for *_, removed in expected} | {removed | {v} for v, _, _, removed in expected}
        assert set(oracle.calls) == {str(sorted(s)) for s in scored}


def test_relative_drop_is_before_over_after_minus_one():
    """Guards against the ratio inverted and the zero cases swapped."""
    assert HeadSignificance("g", (0, 0), 0.6, 0.4).relative_drop == pytest.approx(0.5)
    assert HeadSignificance("g", (0, 0), 0.4, 0.8).relative_drop == pytest.approx(-0.5)
    assert HeadSignificance("g", (0, 0), 0.3, 0.0).relative_drop == math.inf
    assert HeadSignificance("g", (0, 0), 0.0, 0.0).relative_drop == 0.0
    assert HeadSignificance("g", (0, 0), 0.6, 0.4).kept(0.5) and not HeadSignificance("g", (0, 0), 0.6, 0.4).kept(0.51)


# --- knockout.py ---------------------------------------------------------------------------------------


EDGE_ROLES = {
    "last->correct_object": ("last", "correct_object"),
    "last->query_label": ("last", "query_label"),
    "query_label->prev_query_label": ("query_label", "prev_query_label"),
    "last->prev_query_label": ("last", "prev_query_label"),
    "prev_query_label->correct_object": ("prev_query_label", "correct_object"),
}


def test_edge_positions_go_from_the_query_role_to_the_key_role(ds):
    """Guards against query and key swapped or an edge mapped to other roles."""
    for edge, (query_role, key_role) in EDGE_ROLES.items():
        queries, keys = knockout.edge_positions(ds, edge)
        assert torch.equal(queries, ds.positions(query_role)) and torch.equal(keys, ds.positions(key_role)), edge
    for edge, query_role in (
        ("last->random_context_token", "last"),
        ("query_label->random_context_token", "query_label"),
    ):
        assert torch.equal(knockout.edge_positions(ds, edge)[0], ds.positions(query_role))


def test_random_context_tokens_are_seeded_context_tokens_other_than_the_real_keys(toy_tokenizer):
    """Guards against the real key drawn, tokens outside the context (BOS, the query), an unseeded or constant
    draw."""
    data = build_dataset(toy_tokenizer, n_examples=30, num_boxes=3, seed=2)
    _, keys = knockout.edge_positions(data, "last->random_context_token", seed=4)
    context_end = data.label_positions[:, -1]
    for i in range(len(data)):
        k = int(keys[i])
        assert 1 <= k <= int(context_end[i])
        assert k not in (pos(data, "correct_object", i), pos(data, "prev_query_label", i))
    assert len(set(keys.tolist())) >= 8
    assert torch.equal(keys, knockout.edge_positions(data, "last->random_context_token", seed=4)[1])
    assert not torch.equal(keys, knockout.edge_positions(data, "last->random_context_token", seed=5)[1])


def reference_knockout_logits(model, dataset, queries, keys, from_layer):
    return torch.stack(
        [
            reference_last_logits(model, dataset.input_ids[i], knockouts=[(from_layer, int(queries[i]), int(keys[i]))])
            for i in range(len(dataset))
        ]
    )


def test_knockout_curve_blocks_the_edge_in_every_layer_from_each_start(model, ds, oracle):
    """From layer L on, the last token cannot see the correct object (L = 3: nothing blocked); each start has
    designed correctness. Guards against blocking from L + 1 or L - 1, query and key swapped, another edge's
    positions, and a curve whose keys and values are shifted or reduced otherwise."""
    queries, keys = ds.positions("last"), ds.positions("correct_object")
    designed = {
        0: bools(False, False, False),
        1: bools(False, True, False),
        2: bools(True, False, True),
        3: bools(True, True, True),
    }
    for layer, correct in designed.items():
        oracle.expect(
            f"from {layer}", reference_knockout_logits(model, ds, queries, keys, layer), ds.answer_ids, correct
        )
    curve = knockout.knockout_curve(model, ds, "last->correct_object", [0, 1, 2, 3])
    assert curve == pytest.approx({0: 0.0, 1: 1 / 3, 2: 2 / 3, 3: 1.0})
    assert oracle.calls == ["from 0", "from 1", "from 2", "from 3"]


def test_knockout_of_an_earlier_query_and_of_a_seeded_random_key_equal_the_reference(model, ds, oracle):
    """The query-label edge from layer 1 and the random-context edge drawn with seed 3 from layer 0. Guards
    against positions taken from another role or seed, and from_layer passed wrong."""
    q, k = ds.positions("query_label"), ds.positions("prev_query_label")
    oracle.expect(
        "query_label from 1", reference_knockout_logits(model, ds, q, k, 1), ds.answer_ids, bools(True, False, False)
    )
    oracle.expect(
        "query_label from 0", reference_knockout_logits(model, ds, q, k, 0), ds.answer_ids, bools(False, True, False)
    )
    q, k = knockout.edge_positions(ds, "last->random_context_token", seed=3)
    assert not torch.equal(k, knockout.edge_positions(ds, "last->random_context_token", seed=0)[1])
    oracle.expect(
        "random from 0", reference_knockout_logits(model, ds, q, k, 0), ds.answer_ids, bools(True, True, False)
    )
    correct = knockout.knockout_correct(model, ds, "query_label->prev_query_label", 1, batch_size=2)
    assert correct.tolist() == [True, False, False]
    assert knockout.knockout_accuracy(model, ds, "query_label->prev_query_label", 0) == pytest.approx(1 / 3)
    assert knockout.knockout_accuracy(model, ds, "last->random_context_token", 0, seed=3) == pytest.approx(2 / 3)
    assert oracle.calls == ["query_label from 1", "query_label from 0", "random from 0"]
