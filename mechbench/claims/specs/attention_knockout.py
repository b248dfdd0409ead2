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
    order=9, name="attention_knockout", title="attention knockout", sections="8.8", suite="test_knockout.py",
    measures="accuracy with an edge blocked from each layer on",
    description=("Accuracy when one attention edge is knocked out (pre-softmax score set to the dtype minimum) for "
                 "all heads in all layers >= layer (0-based)."),
    unit="fraction", keys=("edge", "layer", "model"), rows=("model", "edge"), column="layer",
    sizes=(("prompts", 500),),  # the paper's
    tolerance="binomial per layer; 3/n on the baseline's own prompts",
)


# ids without "->", which a shell reads as a redirect (`--deselect 'suites/...[last-to-query_label-toy-llama]'`)
@CLAIM.test(params={"edge": list(EDGES)}, ids={"edge": lambda e: e.replace("->", "-to-")})
def knockout_curve(run):
    model, edge = run.model, run.params["edge"]
    if model.spec.knockout_edges is not None and edge not in model.spec.knockout_edges:
        run.skip(f"{model.name}'s spec does not run the edge {edge} (its knockout_edges: "
                 f"{', '.join(model.spec.knockout_edges)})")
    dataset = run.prompts()
    n, clusters = len(dataset), dataset.clusters()
    curve = knockout_curve_correct(model, dataset, edge, range(model.shape.n_layers), seed=run.seed)
    outcomes = [run.check({"edge": edge, "layer": layer, "model": model.name}, correct.float().mean().item(), n=n,
                          soft=True, correct=correct, clusters=clusters,
                          tolerance=binomial(correct.float().mean().item(), n))
                for layer, correct in curve.items()]
    run.settle(outcomes, "layers")
