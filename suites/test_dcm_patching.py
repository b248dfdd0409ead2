"""Claim: fine-tuning strengthens the same mechanism (paper, docs/paper.md §8.6): the heads DCM found in Llama's
circuit, patched from the counterfactual into each model, move it to the desideratum's target more often in the
fine-tunes: value fetchers' object value 45.6% in Llama, 65.9% in Goat, 63.3% in FLoat; transmitters'
position 36.9%, 38.6%, 47.1%.

For each group and desideratum, the DCM heads stored for the circuit (baselines/dcm.json) are patched at the
group's position in the model under test on 10 draws of 500 pairs; the mean accuracy (percent) is checked
against the baseline within 3*sqrt(2)*std/sqrt(10) (two means over 10 draws) plus the paper's rounding.
Spec: mechbench/claims/specs/dcm_patching.py.
Published records use the paper's pairing (``paper_compat``), measured ones mechbench's corrected pairs.
"""

import statistics

import pytest

from mechbench.circuits import HeadGroup
from mechbench.claims import get, tolerance
from mechbench.data.counterfactuals import desiderata_pairs
from mechbench.methods.dcm import patched_correct, source_values_at
from mechbench.pytest_plugin import load_circuit, once, settle, stored_baseline

pytestmark = pytest.mark.claim
CLAIM = get("dcm_patching")


def _pairs(tokenizer, desideratum, n, seed, paper_compat):
    # keyed by the vocabulary, not the tokenizer object: the toy zoo's models share one (so do the paper's), and an
    # id() could be reused by another tokenizer once the first is freed
    vocab = hash(tuple(sorted(tokenizer.get_vocab().items())))
    return once(("desiderata pairs", vocab, desideratum, n, seed, paper_compat), lambda: desiderata_pairs(
        tokenizer, desideratum, n_pairs=n, seed=seed, paper_compat=paper_compat))


@pytest.mark.parametrize("desideratum", ["object_value", "positional", "box_label_value"])
def test_dcm_heads_patched(model, circuit_name, desideratum, settings, claim_check):
    circuit = load_circuit(circuit_name, model, settings)
    dcm, stored = stored_baseline("dcm", settings), stored_baseline(CLAIM, settings)
    n, n_runs = settings.size(CLAIM, "pairs"), CLAIM.repeat("runs")
    layers = list(range(model.shape.n_layers))
    patched = []  # (keys, heads, role, paper_compat) of every group DCM found heads for
    for group in circuit.groups.values():
        found = dcm.find(circuit=circuit_name, model=circuit_name, group=group.name, role=group.role,
                         desideratum=desideratum)
        if found is None:
            continue
        keys = {"circuit": circuit_name, "model": model.name, "group": group.name, "role": group.role,
                "desideratum": desideratum}
        record = stored.find(**keys)
        patched.append((keys, HeadGroup(group.name, group.role, tuple(tuple(h) for h in found.value["heads"])),
                        group.role, record is not None and not record.measured))
    runs = [[] for _ in patched]
    # one draw of pairs at a time, every group patched on it; the engine holds one batch's clean prefix (the base
    # run's hidden states and keys/values) on the device at a time
    for paper_compat in sorted({p[3] for p in patched}):
        chosen = [i for i, p in enumerate(patched) if p[3] == paper_compat]
        for run in range(n_runs):
            pairs = _pairs(model.tokenizer, desideratum, n, settings.derived_seed(draw=run), paper_compat)
            correct = patched_correct(model, [patched[i][1] for i in chosen], pairs,
                                      source_values_at(model, pairs, circuit.roles, layers))
            for i, c in zip(chosen, correct):
                runs[i].append(100 * c.float().mean().item())
    outcomes = []
    for (keys, heads, role, compat), values in zip(patched, runs):
        std = statistics.pstdev(values)
        outcomes.append(claim_check(CLAIM, keys, statistics.fmean(values), n=n, model=model, soft=True, std=std,
                                    tolerance=tolerance.mean_of_draws(std, n_runs, n=n, unit=100, rounding=0.05,
                                                                      what="runs of pairs")))
    if not outcomes:
        pytest.skip(f"no DCM run of circuit {circuit_name!r} for {desideratum!r} in baselines/dcm.json: "
                    f"run suites/test_dcm.py --model={circuit_name} --update-baselines first")
    settle(outcomes, "groups")
