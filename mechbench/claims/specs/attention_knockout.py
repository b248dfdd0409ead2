"""Claim: attention knockout (paper, docs/paper.md §8.8, Llama-7B): blocking the last token's attention to the
correct object from any layer up to ~16 leaves 0.04-0.07 accuracy and only blocking it from layer 20 on lets
the answer through, while blocking an edge to a random context token changes nothing (0.63-0.66).

Each edge is blocked for every head of every layer from L on, for each L of the model, and each point of the
curve is checked against the stored baseline (the accuracy claim's binomial bound; 3/n on the baseline's own
examples). The toy zoo's fetch runs through the queried label, so its curves add the edges
``last->prev_query_label`` and ``prev_query_label->correct_object``; a model's spec names the edges it runs.
"""

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial
from mechbench.methods.knockout import EDGES, knockout_curve_correct

CLAIM = Claim(
    order=9,
    name="attention_knockout",
    title="attention knockout",
    sections="8.8",
    suite="test_knockout.py",
    measures="accuracy with an edge blocked from each layer on",
    description=(
        "Accuracy when one attention edge is knocked out (pre-softmax score set to the dtype minimum) for "
        "all heads in all layers >= layer (0-based)."
    ),
    unit="fraction",
    keys=("edge", "layer", "model"),
    rows=("model", "edge"),
    column="layer",
    sizes=(("prompts", 500),),  # the paper's
    tolerance="binomial per layer; 3/n on the baseline's own prompts",
)


# ids without "->", which a shell reads as a redirect (`--deselect 'suites/...[last-to-query_label-toy-llama]'`)
@CLAIM.test(params={"edge": list(EDGES)}, ids={"edge": lambda e: e.replace("->", "-to-")})
def knockout_curve(run):
    model, edge = run.model, run.params["edge"]
    if model.spec.knockout_edges is not None and edge not in model.spec.knockout_edges:
        run.skip(
            f"{model.name}'s spec does not run the edge {edge} (its knockout_edges: "
            f"{', '.join(model.spec.knockout_edges)})"
        )
    dataset = run.prompts()
    n, clusters = len(dataset), dataset.clusters()
    curve = knockout_curve_correct(model, dataset, edge, range(model.shape.n_layers), seed=run.seed)
    outcomes = [
        run.check(
            {"edge": edge, "layer": layer, "model": model.name},
            correct.float().mean().item(),
            n=n,
            soft=True,
            correct=correct,
            clusters=clusters,
            tolerance=binomial(correct.float().mean().item(), n),
        )
        for layer, correct in curve.items()
    ]
    run.settle(outcomes, "layers")


@CLAIM.comparison
def compare(c):
    """Each edge's knockout curve relative to the model's clean accuracy, so that a more accurate model is not
    "different" for being more accurate; a point that moved beyond the route margin, interval and all, fails."""
    from mechbench.compare import ROUTE_MARGIN, Check, Row, as_array  # imports the registry: see accuracy's

    def ratio(a, b):
        return a / b if b else float("nan")

    rows, moved = [], []
    runs = c.base.spec.knockout_edges  # the edges the base's spec runs (None, a model registered nowhere: all)
    layers = range(c.base.shape.n_layers)
    for edge in (e for e in EDGES if runs is None or e in runs):
        for layer in layers:
            q = {
                "clean_b": c.correct("base"),
                "clean_f": c.correct("fine_tune"),
                **{
                    f"ko_{key}": c.side(
                        who,
                        ("knockout", edge),
                        lambda who=who, edge=edge: knockout_curve_correct(
                            c.models[who].model, c.dataset(), edge, layers, seed=c.seed
                        ),
                    )[layer]
                    for who, key in (("base", "b"), ("fine_tune", "f"))
                },
            }
            means = {k: as_array(v).mean() for k, v in q.items()}
            est = c.boot(lambda m: m["ko_f"] / m["clean_f"] - m["ko_b"] / m["clean_b"], q)

            def ref_value(ref, edge=edge, layer=layer):
                ko, full = c.stored("attention_knockout", edge=edge, layer=layer, model=ref), c.stored_accuracy(ref)
                return ko / full if ko is not None and full else None

            rows.append(
                Row(
                    "attention_knockout",
                    f"{edge} from layer {layer} (relative to clean)",
                    {"edge": edge, "layer": layer},
                    ratio(means["ko_b"], means["clean_b"]),
                    ratio(means["ko_f"], means["clean_f"]),
                    est,
                    references=c.refs(ref_value),
                    note=f"raw accuracy {means['ko_b']:.3f} / {means['ko_f']:.3f}",
                )
            )
            if est.lo is not None and (est.lo > ROUTE_MARGIN or est.hi < -ROUTE_MARGIN):
                moved.append(f"{edge} from layer {layer}: {est:+.2f}")
    check = Check(
        "attention_knockout",
        "same attention routes",
        not moved,
        f"{c.fine_tune.name}: "
        + (
            f"knockout curves (relative to clean accuracy) moved beyond {ROUTE_MARGIN:g}: " + "; ".join(moved)
            if moved
            else f"every knockout point within {ROUTE_MARGIN:g} of the base's or its interval reaching back"
        ),
        float(len(moved)),
    )
    return rows, [check]


@CLAIM.workloads
def workloads(p):
    """Every edge the model's spec runs, each point of its curve from its layer on at the query token."""
    from mechbench.plan import Workload, knockout_query_roles

    n, roles = CLAIM.size("prompts"), knockout_query_roles(p.model)
    fast = sum(n * sum(p.above(layer) for layer in range(p.shape.n_layers)) * p.span(role) for role in roles)
    return [
        Workload(
            "attention_knockout",
            forwards=n * len(roles),
            fast=fast,
            prefix=True,
            note=f"{len(roles)} edges x every layer, each layer from the query token on",
        )
    ]
