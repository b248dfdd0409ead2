"""Claim: attention knockout (paper, docs/paper.md §8.8, Llama-7B): blocking the last token's attention to the
correct object from any layer up to ~16 leaves 0.04-0.07 accuracy and only blocking it from layer 20 on lets
the answer through, while blocking an edge to a random context token changes nothing (0.63-0.66).
Spec: mechbench/claims/specs/attention_knockout.py.

Each edge is blocked for every head of every layer from L on, for each L of the model, and each point of the
curve is checked against the stored baseline (the accuracy claim's binomial bound; 3/n on the baseline's own
examples). The toy zoo's fetch runs through the queried label, so its curves add the edges
``last->prev_query_label`` and ``prev_query_label->correct_object``.
"""

import pytest

from mechbench.claims import get, tolerance
from mechbench.data.dataset import build_dataset
from mechbench.methods.knockout import EDGES, knockout_curve_correct
from mechbench.pytest_plugin import settle

pytestmark = pytest.mark.claim
CLAIM = get("attention_knockout")


# ids without "->", which a shell reads as a redirect (`--deselect 'suites/...[last-to-query_label-toy-llama]'`)
@pytest.mark.parametrize("edge", list(EDGES), ids=[e.replace("->", "-to-") for e in EDGES])
def test_knockout_curve(model, edge, settings, claim_check):
    if model.spec.knockout_edges is not None and edge not in model.spec.knockout_edges:
        pytest.skip(f"{model.name}'s spec does not run the edge {edge} (its knockout_edges: "
                    f"{', '.join(model.spec.knockout_edges)})")
    dataset = build_dataset(model.tokenizer, n_examples=settings.size(CLAIM, "prompts"), seed=settings.seed)
    n, clusters = len(dataset), dataset.clusters()
    curve = knockout_curve_correct(model, dataset, edge, range(model.shape.n_layers), seed=settings.seed)
    outcomes = [claim_check(CLAIM, {"edge": edge, "layer": layer, "model": model.name}, correct.float().mean().item(),
                            n=n, model=model, soft=True, correct=correct, clusters=clusters,
                            tolerance=tolerance.binomial(correct.float().mean().item(), n))
                for layer, correct in curve.items()]
    settle(outcomes, "layers")
