"""Claim: fine-tuning strengthens the same mechanism (paper, docs/paper.md §8.6): the heads DCM found in Llama's
circuit, patched from the counterfactual into each model, move it to the desideratum's target more often in the
fine-tunes: value fetchers' object value 45.6% in Llama, 65.9% in Goat, 63.3% in FLoat; transmitters'
position 36.9%, 38.6%, 47.1%.

For each group and desideratum, the DCM heads stored for the circuit (baselines/dcm.json) are patched at the
group's position in the model under test on 10 draws of 500 pairs; the mean accuracy (percent) is checked
against the baseline within 3*sqrt(2)*std/sqrt(10) (two means over 10 draws) plus the paper's rounding.
Published records use the paper's pairing (``paper_compat``), measured ones mechbench's corrected pairs.
"""

import math
import statistics

import pytest
import torch

from mechbench import baselines
from mechbench.circuits import HeadGroup
from mechbench.data.counterfactuals import desiderata_pairs
from mechbench.errors import MechbenchError
from mechbench.methods.dcm import patched_correct, source_values_at
from mechbench.pytest_plugin import load_circuit, settle

pytestmark = pytest.mark.claim
N_PAIRS, N_RUNS = 500, 10  # the paper's
RULE = ("3*sqrt(2)*std/sqrt(n_runs) + 0.05: the difference of two means over n_runs draws of pairs, z=3, plus the "
        "rounding to 0.1 percent")

_PAIRS: dict[tuple, object] = {}


def _pairs(tokenizer, desideratum, n, seed, paper_compat):
    # keyed by the vocabulary, not the tokenizer object: the toy zoo's models share one (so do the paper's), and an
    # id() could be reused by another tokenizer once the first is freed
    vocab = hash(tuple(sorted(tokenizer.get_vocab().items())))
    key = (vocab, desideratum, n, seed, paper_compat)
    if key not in _PAIRS:
        _PAIRS[key] = desiderata_pairs(tokenizer, desideratum, n_pairs=n, seed=seed, paper_compat=paper_compat)
    return _PAIRS[key]


@pytest.mark.parametrize("desideratum", ["object_value", "positional", "box_label_value"])
def test_dcm_heads_patched(model, circuit_name, desideratum, settings, claim_check):
    circuit = load_circuit(circuit_name, model, settings)
    try:
        dcm, stored = baselines.load("dcm", settings.baselines_dir), baselines.load("dcm_patching", settings.baselines_dir)
    except MechbenchError as e:
        pytest.fail(str(e), pytrace=False)
    n = settings.n_examples(N_PAIRS)
    torch_model = model.model
    layers = list(range(model.shape.n_layers))
    patched = []  # (keys, heads, role, paper_compat) of every group DCM found heads for
    for group in circuit.groups.values():
        found = dcm.find(circuit=circuit_name, model=circuit_name, group=group.name, position=group.role,
                         desideratum=desideratum)
        if found is None:
            continue
        keys = {"circuit": circuit_name, "model": model.name, "group": group.name, "position": group.role,
                "desideratum": desideratum}
        record = stored.find(**keys)
        patched.append((keys, HeadGroup(group.name, group.role, tuple(tuple(h) for h in found.value["heads"])),
                        group.role, record is not None and not record.measured))
    runs = [[] for _ in patched]
    # one draw of pairs at a time, every group patched on it; the engine holds one batch's clean prefix (the base
    # run's hidden states and keys/values) on the device at a time
    for paper_compat in sorted({p[3] for p in patched}):
        chosen = [i for i, p in enumerate(patched) if p[3] == paper_compat]
        for run in range(N_RUNS):
            pairs = _pairs(model.tokenizer, desideratum, n, 1000 * (settings.seed + 1) + run, paper_compat)
            correct = patched_correct(torch_model, [patched[i][1] for i in chosen], pairs,
                                      source_values_at(torch_model, pairs, circuit.roles, layers))
            for i, c in zip(chosen, correct):
                runs[i].append(100 * c.float().mean().item())
    outcomes = []
    for (keys, heads, role, compat), values in zip(patched, runs):
        std = statistics.pstdev(values)
        outcomes.append(claim_check("dcm_patching", keys, statistics.fmean(values), n=n, model=model, soft=True, std=std,
                                    tolerance=round(3 * math.sqrt(2) * std / math.sqrt(N_RUNS) + 0.05 + 100 / n, 4),
                                    tolerance_rule=RULE + " (+100/n: one pair, so a zero spread is not a zero bound)"))
    if not outcomes:
        pytest.skip(f"no DCM run of circuit {circuit_name!r} for {desideratum!r} in baselines/dcm.json: "
                    f"run suites/test_dcm.py --model={circuit_name} --update-baselines first")
    settle(outcomes, "groups")
