"""Attention knockout (docs/paper.md §8.8): accuracy when one attention edge is blocked for every head of
every layer from L on.

An edge goes from a query role to a key role. ``random_context_token`` is a seeded uniform draw, per
example, among the context's tokens (after BOS, up to the last box label) other than the edge's real key,
the paper's control for "does blocking any edge hurt".
"""

from __future__ import annotations

import torch

from mechbench.data.dataset import EntityTrackingDataset
from mechbench.evaluate import top1_correct
from mechbench.intervene import Interventions, Knockout, run_many

#: Every edge by name: (query role, key role). Which edges a model's curves run is its spec's ``knockout_edges``
#: (mechbench/models/registry.py).
EDGES = {
    "last->correct_object": ("last", "correct_object"),
    "last->random_context_token": ("last", None),
    "last->query_label": ("last", "query_label"),
    "query_label->prev_query_label": ("query_label", "prev_query_label"),
    "query_label->random_context_token": ("query_label", None),
    # the toy zoo's own edges: its value fetchers read the queried label, into which layer 0 copied the object
    "last->prev_query_label": ("last", "prev_query_label"),
    "prev_query_label->correct_object": ("prev_query_label", "correct_object"),
}


def edge_positions(dataset: EntityTrackingDataset, edge: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions [N] and key positions [N] of ``edge`` in each example."""
    if edge not in EDGES:
        raise KeyError(f"unknown edge {edge!r}; known: {', '.join(EDGES)}")
    query_role, key_role = EDGES[edge]
    queries = dataset.positions(query_role)
    if key_role is not None:
        return queries, dataset.positions(key_role)
    g = torch.Generator().manual_seed(seed)
    context_end = dataset.label_positions[:, -1]
    keys = torch.empty_like(queries)
    for i in range(len(dataset)):
        real = {int(dataset.positions(r)[i]) for r in ("correct_object", "prev_query_label")}
        choices = [p for p in range(1, int(context_end[i]) + 1) if p not in real]
        keys[i] = choices[int(torch.randint(len(choices), (1,), generator=g))]
    return queries, keys


def knockout_correct(
    model, dataset: EntityTrackingDataset, edge: str, from_layer: int, seed: int = 0, batch_size: int | None = None
) -> torch.Tensor:
    """Bool [N]: the answer is still right with ``edge`` blocked from ``from_layer`` on."""
    return knockout_curve_correct(model, dataset, edge, [from_layer], seed, batch_size)[from_layer]


def knockout_curve_correct(
    model, dataset: EntityTrackingDataset, edge: str, layers, seed: int = 0, batch_size: int | None = None
) -> dict[int, torch.Tensor]:
    """Bool [N] per layer of ``layers``: the answer is still right with ``edge`` blocked from that layer on. The
    layers share each batch's clean run: a knockout changes nothing below its layer or before its query token,
    so the engine recomputes only the query's token on (the last token: one token per layer)."""
    queries, keys = edge_positions(dataset, edge, seed)
    layers = list(layers)
    outs = run_many(
        model,
        dataset.input_ids,
        [Interventions(knockouts=[Knockout(layer, queries, keys)]) for layer in layers],
        batch_size,
        score=lambda logits, rows: top1_correct(logits, dataset.answer_ids[rows]),
    )
    return {layer: out.scores for layer, out in zip(layers, outs)}


def knockout_accuracy(
    model, dataset: EntityTrackingDataset, edge: str, from_layer: int, seed: int = 0, batch_size: int | None = None
) -> float:
    return knockout_correct(model, dataset, edge, from_layer, seed, batch_size).float().mean().item()


def knockout_curve(
    model, dataset: EntityTrackingDataset, edge: str, layers, seed: int = 0, batch_size: int | None = None
) -> dict[int, float]:
    """Accuracy with ``edge`` blocked from each layer in ``layers`` on."""
    return {
        layer: c.float().mean().item()
        for layer, c in knockout_curve_correct(model, dataset, edge, layers, seed, batch_size).items()
    }
