"""Claim: iterated path patching finds the stored circuit (paper, docs/paper.md §4: value fetchers from the
logits, position transmitters through the fetchers' queries, position detectors and structure readers
through values; the published circuits are pruned from these candidates).

Re-runs the discovery of :data:`mechbench.methods.discovery.DISCOVERY` on the circuit's own model and checks,
per group, the fraction of the stored heads that the re-run selects (recall) against the baseline. A circuit
found on another model (the Llama circuit under --model=goat7b) is not re-discovered there: the paper found
Goat's and FLoat's own circuits (`--circuit goat7b`).

The discovery runs once per model, settings and weights: it is saved step by step under the results directory
(``results/discovery``) and read back by the other claim that needs it.
"""

import pytest

from conftest import load_circuit, settle
from mechbench.methods.discovery import DISCOVERY, discover

pytestmark = pytest.mark.claim
SAME_SAMPLE_RULE = "same model, pairs and seed: the same heads must come back (0.05 covers a near-tie at the cutoff)"


def test_path_patching_recovers_the_circuit(model, circuit_name, settings, claim_check):
    if circuit_name not in DISCOVERY or model.name != circuit_name:
        pytest.skip(f"circuit {circuit_name!r} was not found on {model.name!r} by a known discovery run; "
                    f"path patching re-discovers a circuit on its own model ({', '.join(DISCOVERY)})")
    stored = load_circuit(circuit_name, model, settings)
    found = discover(model, circuit_name, DISCOVERY[circuit_name], cache_dir=settings.results_dir / "discovery").circuit
    outcomes = []
    for group, g in stored.groups.items():
        selected = set(found.groups[group].heads) if group in found.groups else set()
        recall = len(set(g.heads) & selected) / len(g.heads)
        outcomes.append(claim_check(
            "path_patching", {"circuit": circuit_name, "model": model.name, "group": group, "metric": "recall"},
            recall, model=model, soft=True, tolerance=0.05, tolerance_rule=SAME_SAMPLE_RULE))
    settle(outcomes, "groups' recalls")
