"""Claim: iterated path patching finds the stored circuit (paper, docs/paper.md §4: value fetchers from the
logits, position transmitters through the fetchers' queries, position detectors and structure readers
through values; the published circuits are pruned from these candidates). Spec:
mechbench/claims/specs/path_patching.py.

Re-runs the circuit's discovery (its model's spec: ``registry.CIRCUITS[name].discovery``) on that model and checks,
per group, the fraction of the stored heads that the re-run selects, or scores within sampling error of its cut
(recall within a margin, see ``Z``), against the baseline. ``--seed S`` re-runs it on fresh noise pairs. A circuit
found on another model (the Llama circuit under --model=goat7b) is not re-discovered there: the paper found
Goat's and FLoat's own circuits (`--circuit goat7b`).

The discovery runs once per model, settings and weights: it is saved step by step under the results directory
(``results/discovery``) and read back by the other claim that needs it.
"""

import pytest

from mechbench.claims import get, tolerance
from mechbench.methods.discovery import discovery_of_claims
from mechbench.models.registry import CIRCUITS
from mechbench.pytest_plugin import load_circuit, settle

pytestmark = pytest.mark.claim
CLAIM = get("path_patching")
#: A stored head counts as recovered unless the re-run scores it worse than the cut by more than Z of its
#: cluster-robust standard errors: heads within sampling error of the cut are near ties, and fresh pairs reorder
#: near ties at random (the toy's value fetchers overlap 46% between two draws of 100 pairs when recall is
#: counted by rank alone). A planted change (a silenced head scores ~0, far above any cut) still fails.
Z = 3.0  # as every other bound here: 3 standard errors
MARGIN_RULE = (f"recall counts a stored head as found when its score is below the cut + {Z} cluster-robust standard "
               f"errors; 0.05 then covers float differences at the margin")


def test_path_patching_recovers_the_circuit(model, circuit_name, settings, claim_check):
    if circuit_name not in CIRCUITS or model.name != circuit_name:
        pytest.skip(f"circuit {circuit_name!r} was not found on {model.name!r} by a known discovery run; "
                    f"path patching re-discovers a circuit on its own model ({', '.join(CIRCUITS)})")
    stored = load_circuit(circuit_name, model, settings)
    # each step sends to the stored circuit's receivers: a near tie at one cut must not reroute the next step
    n_pairs = settings.size(CLAIM, "pairs", default=CIRCUITS[circuit_name].discovery.n_pairs)
    config, found = discovery_of_claims(model, circuit_name, settings.seed, settings.results_dir / "discovery", stored,
                                        n_pairs=n_pairs)
    circuit_k = {**dict(config.receiver_k), **dict(config.circuit_k)}
    outcomes = []
    for group, g in stored.groups.items():
        recall = found.recall(g.heads, group, circuit_k[group], config.min_effect, z=Z)
        outcomes.append(claim_check(
            CLAIM, {"circuit": circuit_name, "model": model.name, "group": group, "metric": "recall"},
            recall, model=model, soft=True, tolerance=tolerance.fixed(0.05, MARGIN_RULE)))
    settle(outcomes, "groups' recalls")
