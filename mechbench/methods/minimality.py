"""Minimality pruning (docs/paper.md §4, ``experiment_1/minimality.py``): does each candidate head matter once
the heads most entangled with it are gone?

For head v of a group: rank the group's other heads u by their pair drop, F(C \\ {u}) - F(C \\ {u, v}) (how
much more v matters once u is ablated); K = the top ceil(fraction * |group|) of them. Then before =
F(C \\ K), after = F(C \\ K \\ {v}), where F is the circuit's accuracy with everything outside it mean-ablated.
v is kept when before / after - 1 >= threshold (the paper: fraction 0.3; threshold 0.01 for Llama, 0 for Goat
and FLoat). The paper's code does not say how it ranks the pair drop; this is the reading that makes K the
heads whose absence most exposes v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mechbench.circuits import Circuit, Head, HeadGroup
from mechbench.data.dataset import EntityTrackingDataset
from mechbench.methods.ablation import circuit_correct


@dataclass(frozen=True)
class HeadSignificance:
    group: str
    head: Head
    before: float  # F(C \ K)
    after: float  # F(C \ K \ {v})
    before_correct: torch.Tensor | None = field(default=None, compare=False)  # bool [N]
    after_correct: torch.Tensor | None = field(default=None, compare=False)  # bool [N]

    @property
    def relative_drop(self) -> float:
        if self.after > 0:
            return self.before / self.after - 1
        return math.inf if self.before > 0 else 0.0

    def kept(self, threshold: float) -> bool:
        return self.relative_drop >= threshold - 1e-12


def head_significance(model, circuit: Circuit, group: str, dataset: EntityTrackingDataset, means: torch.Tensor,
                      fraction: float = 0.3, batch_size: int = 50, candidates: int | None = None) -> list[HeadSignificance]:
    """Before/after accuracies of every head of ``group``, in the group's order. ``candidates``: test only the
    group's first (most important) heads, each against those peers only; the rest of the circuit stays in."""
    role = circuit.groups[group].role
    heads = circuit.groups[group].heads[:candidates]
    k = math.ceil(fraction * len(heads))
    cache: dict[frozenset, torch.Tensor] = {}

    def correct_without(removed) -> torch.Tensor:
        key = frozenset(removed)
        if key not in cache:
            cache[key] = circuit_correct(model, circuit, dataset, means, also_ablate={role: set(key)} if key else None,
                                         batch_size=batch_size)
        return cache[key]

    def acc_without(removed) -> float:
        return correct_without(removed).float().mean().item()

    out = []
    for v in heads:
        others = [u for u in heads if u != v]
        # stable order: ties keep the group's (importance) order
        drop = sorted(others, key=lambda u: -(acc_without({u}) - acc_without({u, v})))
        removed = set(drop[:k])
        out.append(HeadSignificance(group, v, acc_without(removed), acc_without(removed | {v}),
                                    correct_without(removed), correct_without(removed | {v})))
    return out


def prune(circuit: Circuit, significance: dict[str, list[HeadSignificance]], threshold: float) -> Circuit:
    """The circuit with only the heads that pass ``threshold`` (groups without a significance list are kept)."""
    groups = {}
    for name, g in circuit.groups.items():
        heads = g.heads if name not in significance else tuple(s.head for s in significance[name] if s.kept(threshold))
        if heads:
            groups[name] = HeadGroup(name, g.role, heads)
    return Circuit(circuit.name, groups)
