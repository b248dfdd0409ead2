"""Claim: each head of the circuit matters once the heads most entangled with it are gone (paper, docs/paper.md
§4 and §8.4: minimality on 100 examples, e.g. L8H21 0.65 -> 0.48, L14H27 0.60 -> 0.17; Llama's
threshold 0.01 keeps exactly its 40/7/20/5 heads).

On the circuit's own model, the candidates are re-discovered with the circuit's discovery settings and every
candidate's before/after accuracy (mechbench.methods.minimality) is checked against the stored record of
that head; the stored record also says whether the head passed the threshold. The same 100 examples (seed,
CPU) allow 3/n; other examples the bound stated in each record.

The discovery runs once per model, settings and weights: it is saved step by step under the results directory
(``results/discovery``) and read back by the other claim that needs it.
"""

import pytest

from conftest import ablation_means, load_circuit, settle
from mechbench import baselines
from mechbench.data.dataset import build_dataset
from mechbench.errors import MechbenchError
from mechbench.methods.discovery import DISCOVERY, discover
from mechbench.methods.minimality import head_significance

pytestmark = pytest.mark.claim
RULE = ("3*sqrt(2*0.25/n): the widest binomial bound of two independent n-example accuracies; "
        "on the baseline's own examples (same seed and n, CPU): 3/n")


def test_minimality(model, circuit_name, settings, claim_check):
    if circuit_name not in DISCOVERY or model.name != circuit_name:
        pytest.skip(f"minimality re-runs the discovery of {circuit_name!r} on its own model ({', '.join(DISCOVERY)})")
    config = DISCOVERY[circuit_name]
    try:
        stored = baselines.load("minimality", settings.baselines_dir)
    except MechbenchError as e:
        pytest.fail(str(e), pytrace=False)
    candidates = discover(model, circuit_name, config, cache_dir=settings.results_dir / "discovery",
                          fixed_receivers=load_circuit(circuit_name, model, settings)).circuit  # as path patching
    n = settings.n_examples(config.minimality_examples)
    dataset = build_dataset(model.tokenizer, n_examples=n, seed=config.minimality_seed + settings.seed)
    means = ablation_means(model, settings)
    ranks = {(r.keys["group"], r.keys["layer"], r.keys["head"]): r.keys["rank"] for r in stored.records
             if r.keys.get("circuit") == circuit_name and r.keys.get("kind") == "head"}
    outcomes = []
    for group in candidates.groups:
        for rank, s in enumerate(head_significance(model.model, candidates, group, dataset, means)):
            layer, head = s.head
            keys = {"circuit": circuit_name, "group": group, "kind": "head",
                    "rank": ranks.get((group, layer, head), rank), "layer": layer, "head": head}
            value = {"before": round(s.before, 6), "after": round(s.after, 6),
                     "in_circuit": s.kept(config.minimality_threshold)}
            for field in ("before", "after"):
                outcomes.append(claim_check(
                    "minimality", keys, getattr(s, field), n=n, model=model, soft=True, field=field,
                    stored_value=value, tolerance=round(3 * (0.5 / n) ** 0.5, 4),
                    tolerance_same_sample=round(3 / n, 4), tolerance_rule=RULE))
    settle(outcomes, "numbers")
