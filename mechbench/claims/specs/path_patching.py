"""Claim: iterated path patching finds the stored circuit (paper, docs/paper.md §4: value fetchers from the
logits, position transmitters through the fetchers' queries, position detectors and structure readers
through values; the published circuits are pruned from these candidates).

Re-runs the circuit's discovery (its model's spec's settings, or those stored with it) on that model and checks,
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

#: A stored head counts as recovered unless the re-run scores it worse than the cut by more than Z of its
#: cluster-robust standard errors: heads within sampling error of the cut are near ties, and fresh pairs reorder
#: near ties at random (the toy's value fetchers overlap 46% between two draws of 100 pairs when recall is
#: counted by rank alone). A planted change (a silenced head scores ~0, far above any cut) still fails.
Z = 3.0  # as every other bound here: 3 standard errors
MARGIN_RULE = (
    f"recall counts a stored head as found when its score is below the cut + {Z} cluster-robust standard "
    f"errors; 0.05 then covers float differences at the margin"
)

CLAIM = Claim(
    order=4,
    name="path_patching",
    title="path patching",
    sections="4",
    suite="test_path_patching.py",
    measures=(
        "re-discovery on the circuit's own model: recall per group, a head found when it scores below the cut + 3 SEs"
    ),
    description=(
        "Iterated path patching re-run on the circuit's own model with the circuit's discovery settings: "
        "recall = the fraction of the stored group's heads that the re-run selects."
    ),
    unit="fraction",
    keys=("circuit", "model", "group", "metric"),
    rows=("circuit", "model"),
    column="group",
    sizes=(("pairs", DiscoveryConfig.n_pairs),),  # noise pairs per step: the circuit's discovery settings give it
    tolerance="0.05 on a recall whose margin is 3 cluster-robust SEs of each head's score",
    reads=("circuits",),
)


@CLAIM.test(per="circuit")
def path_patching_recovers_the_circuit(run):
    model, circuit_name = run.model, run.circuit_name
    stored = run.circuit()
    settings = run.discovery_settings(stored, "path patching re-discovers a circuit on its own model")
    # each step sends to the stored circuit's receivers: a near tie at one cut must not reroute the next step
    n_pairs = run.size("pairs", default=settings.n_pairs)
    config, found = discovery_of_claims(
        model,
        circuit_name,
        run.seed,
        run.settings.results_dir / "discovery",
        stored,
        n_pairs=n_pairs,
        num_boxes=run.settings.boxes,
    )
    circuit_k = {**dict(config.receiver_k), **dict(config.circuit_k)}
    outcomes = []
    for group, g in stored.groups.items():
        recall = found.recall(g.heads, group, circuit_k[group], config.min_effect, z=Z)
        outcomes.append(
            run.check(
                {"circuit": circuit_name, "model": model.name, "group": group, "metric": "recall"},
                recall,
                soft=True,
                tolerance=fixed(0.05, MARGIN_RULE),
                # the step's score grid and the stored heads, for the report's layer x head figure
                detail={
                    "scores": [[round(float(v), 6) for v in row] for row in found.scores[group].tolist()],
                    "circuit_heads": [list(h) for h in g.heads],
                },
            )
        )
    run.settle(outcomes, "groups' recalls")


@CLAIM.comparison
def compare(c):
    """Each model's path-patching scores from the base circuit's discovery steps; per group, the share of the
    circuit's heads among the model's top-|group| heads by score (no score floor: a fine-tune whose scores are
    all smaller is not "missing" heads for it), and the correlation of the two score grids."""
    from dataclasses import replace

    import torch

    from mechbench.compare import Check, Row  # comparison mode imports the registry, which imports this module
    from mechbench.methods.discovery import discover
    from mechbench.methods.path_patching import top_heads
    from mechbench.models.registry import discovery_settings
    from mechbench.stats import Estimate

    def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.flatten().double(), b.flatten().double()
        if a.std() == 0 or b.std() == 0:
            return float("nan")
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    config = replace(discovery_settings(c.circuit.name), n_pairs=c.lane.discovery_pairs)
    found = {
        who: c.side(who, "discovery", lambda h=h: discover(h, c.circuit.name, config, cache_dir=c.discovery_cache))
        for who, h in c.models.items()
    }
    rows, lost = [], []
    for group, g in c.circuit.groups.items():
        if group not in found["base"].scores or group not in found["fine_tune"].scores:
            continue
        recall = {
            who: len(set(g.heads) & set(top_heads(found[who].scores[group], len(g.heads)))) / len(g.heads)
            for who in ("base", "fine_tune")
        }
        r = pearson(found["base"].scores[group], found["fine_tune"].scores[group])
        rows.append(
            Row(
                "path_patching",
                f"{group}: the circuit's heads among the top {len(g.heads)} by score",
                {"group": group, "metric": "recall"},
                recall["base"],
                recall["fine_tune"],
                Estimate(recall["fine_tune"] - recall["base"]),
                note=f"correlation of the score grids {r:.2f}; {config.n_pairs} noise pairs; a selection "
                f"statistic: no interval",
            )
        )
        if recall["fine_tune"] < 0.5 * recall["base"]:
            lost.append(f"{group} {recall['fine_tune']:.2f} vs {recall['base']:.2f}")
    check = Check(
        "path_patching",
        "path patching finds the circuit",
        not lost,
        f"{c.fine_tune.name}: "
        + (
            "under half of the circuit's heads that lead the base's scores lead the fine-tune's: " + "; ".join(lost)
            if lost
            else "in every group at least half as many of the circuit's heads lead the scores as in the base"
        ),
        float(len(lost)),
    )
    return rows, [check]


@CLAIM.workloads
def workloads(p):
    """The discovery's steps on the circuit's own model (shared with minimality): every sender one token from its
    layer up, then the step's receivers patched (mechbench.plan.path_patching_fast)."""
    from mechbench.plan import Workload, path_patching_fast

    if not p.own:
        return []
    steps, pairs = len(p.config.steps), p.config.n_pairs
    return [
        Workload(
            "path_patching",
            forwards=steps * pairs * 2,
            fast=path_patching_fast(p.shape, p.config, p.stored, p.seq, p.batch_size),
            prefix=True,
            host_reads=-1,
            note=f"{steps} steps x {pairs} pairs x {p.shape.n_layers * p.shape.n_heads} senders (one token "
            f"each); discovery shared with minimality",
        )
    ]
