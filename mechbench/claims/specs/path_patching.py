"""Claim: iterated path patching finds the stored circuit (paper, docs/paper.md §4: value fetchers from the
logits, position transmitters through the fetchers' queries, position detectors and structure readers
through values; the published circuits are pruned from these candidates).

Re-runs the circuit's discovery (its model's spec: ``registry.CIRCUITS[name].discovery``) on that model and checks,
per group, the fraction of the stored heads that the re-run selects, or scores within sampling error of its cut
(recall within a margin, see ``Z``), against the baseline. ``--seed S`` re-runs it on fresh noise pairs. A circuit
found on another model (the Llama circuit under --model=goat7b) is not re-discovered there: the paper found
Goat's and FLoat's own circuits (`--circuit goat7b`).

The discovery runs once per model, settings and weights: it is saved step by step under the results directory
(``results/discovery``) and read back by the other claim that needs it (minimality).
"""

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import fixed
from mechbench.methods.discovery import discovery_of_claims
from mechbench.models.discovery_settings import DiscoveryConfig
from mechbench.models.registry import CIRCUITS

#: A stored head counts as recovered unless the re-run scores it worse than the cut by more than Z of its
#: cluster-robust standard errors: heads within sampling error of the cut are near ties, and fresh pairs reorder
#: near ties at random (the toy's value fetchers overlap 46% between two draws of 100 pairs when recall is
#: counted by rank alone). A planted change (a silenced head scores ~0, far above any cut) still fails.
Z = 3.0  # as every other bound here: 3 standard errors
MARGIN_RULE = (f"recall counts a stored head as found when its score is below the cut + {Z} cluster-robust standard "
               f"errors; 0.05 then covers float differences at the margin")

CLAIM = Claim(
    order=4, name="path_patching", title="path patching", sections="4", suite="test_path_patching.py",
    measures=("re-discovery on the circuit's own model: recall per group, a head found when it scores below the cut "
              "+ 3 SEs"),
    description=("Iterated path patching re-run on the circuit's own model with the circuit's discovery settings: "
                 "recall = the fraction of the stored group's heads that the re-run selects."),
    unit="fraction", keys=("circuit", "model", "group", "metric"), rows=("circuit", "model"), column="group",
    sizes=(("pairs", DiscoveryConfig.n_pairs),),  # noise pairs per step: the circuit's discovery settings give it
    tolerance="0.05 on a recall whose margin is 3 cluster-robust SEs of each head's score",
    reads=("circuits",),
)


@CLAIM.test(per="circuit")
def path_patching_recovers_the_circuit(run):
    model, circuit_name = run.model, run.circuit_name
    if circuit_name not in CIRCUITS or model.name != circuit_name:
        run.skip(f"circuit {circuit_name!r} was not found on {model.name!r} by a known discovery run; "
                 f"path patching re-discovers a circuit on its own model ({', '.join(CIRCUITS)})")
    stored = run.circuit()
    # each step sends to the stored circuit's receivers: a near tie at one cut must not reroute the next step
    n_pairs = run.size("pairs", default=CIRCUITS[circuit_name].discovery.n_pairs)
    config, found = discovery_of_claims(model, circuit_name, run.seed, run.settings.results_dir / "discovery", stored,
                                        n_pairs=n_pairs)
    circuit_k = {**dict(config.receiver_k), **dict(config.circuit_k)}
    outcomes = []
    for group, g in stored.groups.items():
        recall = found.recall(g.heads, group, circuit_k[group], config.min_effect, z=Z)
        outcomes.append(run.check({"circuit": circuit_name, "model": model.name, "group": group, "metric": "recall"},
                                  recall, soft=True, tolerance=fixed(0.05, MARGIN_RULE)))
    run.settle(outcomes, "groups' recalls")
