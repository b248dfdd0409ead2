"""Minimality pruning (docs/paper.md §4, ``experiment_1/minimality.py``): does each candidate head matter once
the heads most entangled with it are gone?

For head v of a group: rank the group's other heads u by their pair drop, F(C \\ {u}) - F(C \\ {u, v}) (how
much more v matters once u is ablated), largest first; K = the first ceil(fraction * |group|) of them, stopping
at the first pair drop <= 0 (the paper's ``get_head_significance_score`` breaks there: a peer whose absence does
not expose v is not entangled with it). Then before = F(C \\ K), after = F(C \\ K \\ {v}), where F is the
circuit's accuracy with everything outside it mean-ablated. v is kept when before / after - 1 >= threshold (the
paper: fraction 0.3; threshold 0.01 for Llama, 0 for Goat and FLoat).

K is chosen on the same examples that then measure before and after, so an interval that holds K fixed is too
narrow: a near tie in the pair drops picks another K on another draw of prompts and moves a head's drop by far
more than its binomial error. :func:`group_minimality` resamples whole contexts and re-chooses K in every
resample (each new K is measured once on all examples and reweighted), so its error includes the selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mechbench.circuits import Circuit, Head, HeadGroup
from mechbench.data.dataset import EntityTrackingDataset
from mechbench.methods.ablation import circuit_minus_correct
from mechbench.stats import Estimate, as_clusters, percentile_interval


@dataclass(frozen=True)
class HeadSignificance:
    group: str
    head: Head
    before: float  # F(C \ K)
    after: float  # F(C \ K \ {v})
    before_correct: torch.Tensor | None = field(default=None, compare=False)  # bool [N]
    after_correct: torch.Tensor | None = field(default=None, compare=False)  # bool [N]
    entangled: tuple[Head, ...] = field(default=(), compare=False)  # K

    @property
    def relative_drop(self) -> float:
        if self.after > 0:
            return self.before / self.after - 1
        return math.inf if self.before > 0 else 0.0

    def kept(self, threshold: float) -> bool:
        return self.relative_drop >= threshold - 1e-12


class GroupAblations:
    """F(C \\ removed) for sets of one group's heads, each measured once per example (bool [N]) and cached, so
    that an accuracy under resampling weights is a weighted mean of the same vectors."""

    def __init__(
        self,
        model,
        circuit: Circuit,
        group: str,
        dataset: EntityTrackingDataset,
        means: torch.Tensor,
        batch_size: int | None = None,
    ):
        self.model, self.circuit, self.dataset, self.means, self.batch_size = model, circuit, dataset, means, batch_size
        self.role = circuit.groups[group].role
        self._correct: dict[frozenset, torch.Tensor] = {}
        self._as_float: dict[frozenset, np.ndarray] = {}  # the same vectors as floats, for the resamples' loop

    def measure(self, sets) -> None:
        """Measure every set of ``sets`` not measured yet, all on one circuit run per batch (the engine's prefix
        under the circuit's ablation: each set recomputes from its first head's layer on, at the role only)."""
        keys = list(dict.fromkeys(frozenset(k) for k in sets if frozenset(k) not in self._correct))
        if not keys:
            return
        outs = circuit_minus_correct(
            self.model, self.circuit, self.dataset, self.means, [{self.role: set(k)} for k in keys], self.batch_size
        )
        for key, c in zip(keys, outs):
            self._correct[key], self._as_float[key] = c, c.float().numpy()

    def correct(self, removed) -> torch.Tensor:
        key = frozenset(removed)
        self.measure([key])
        return self._correct[key]

    def accuracy(self, removed, weights: np.ndarray | None = None) -> float:
        key = frozenset(removed)
        self.correct(key)
        c = self._as_float[key]
        return float(c.mean() if weights is None else (c @ weights) / weights.sum())

    @property
    def evaluated(self) -> int:
        return len(self._correct)


def entangled_peers(v: Head, heads, pair_drop, k: int, stop_rule: bool = True) -> tuple[Head, ...]:
    """K for head ``v``: the other ``heads`` ranked by ``pair_drop(u)`` (largest first; ties keep the group's
    importance order), the first ``k``; with ``stop_rule``, only those before the first pair drop <= 0."""
    ranked = sorted(((u, pair_drop(u)) for u in heads if u != v), key=lambda ud: -ud[1])
    out = []
    for u, d in ranked[:k]:
        if stop_rule and d <= 0:
            break
        out.append(u)
    return tuple(out)


def head_significance(
    model,
    circuit: Circuit,
    group: str,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    fraction: float = 0.3,
    batch_size: int | None = None,
    candidates: int | None = None,
    stop_rule: bool = True,
    ablations: GroupAblations | None = None,
) -> list[HeadSignificance]:
    """Before/after accuracies of every head of ``group``, in the group's order. ``candidates``: test only the
    group's first (most important) heads, each against those peers only; the rest of the circuit stays in."""
    f = ablations or GroupAblations(model, circuit, group, dataset, means, batch_size)
    heads = circuit.groups[group].heads[:candidates]
    k = math.ceil(fraction * len(heads))
    f.measure([{u} for u in heads] + [{u, v} for i, u in enumerate(heads) for v in heads[i + 1 :]])
    chosen = {
        v: entangled_peers(v, heads, lambda u, v=v: f.accuracy({u}) - f.accuracy({u, v}), k, stop_rule) for v in heads
    }
    f.measure([s for v, removed in chosen.items() for s in (removed, {*removed, v})])
    out = []
    for v in heads:
        removed = chosen[v]
        out.append(
            HeadSignificance(
                group,
                v,
                f.accuracy(removed),
                f.accuracy({*removed, v}),
                f.correct(removed),
                f.correct({*removed, v}),
                removed,
            )
        )
    return out


#: Resamples x heads a group's error rests on at least (a 2-head group: 400 resamples).
SMALL_GROUP_RESAMPLES = 800
#: The level of a group drop's interval.
LEVEL = 0.95


@dataclass
class GroupMinimality:
    """A group's heads' significance and the mean drop before - after over them, with a 95% interval and a
    standard error from resampling contexts with K re-chosen in every resample."""

    heads: list[HeadSignificance]
    drop: Estimate
    se: float
    n_boot: int
    extra_evaluations: int  # circuit runs the resamples' new K sets cost
    n_clusters: int = 0  # the contexts resampled: the standard error has n_clusters - 1 degrees of freedom
    # the drop in each resample (K re-chosen in each); the resamples' weights come from ``seed`` and the contexts
    # alone, so two models measured on one dataset with one seed are resampled alike (a paired difference)
    draws: np.ndarray | None = None


def group_minimality(
    model,
    circuit: Circuit,
    group: str,
    dataset: EntityTrackingDataset,
    means: torch.Tensor,
    fraction: float = 0.3,
    batch_size: int | None = None,
    candidates: int | None = None,
    stop_rule: bool = True,
    n_boot: int = 200,
    seed: int = 0,
) -> GroupMinimality:
    """:func:`head_significance` of ``group`` and its mean drop with a selection-aware interval."""
    f = GroupAblations(model, circuit, group, dataset, means, batch_size)
    significance = head_significance(
        model, circuit, group, dataset, means, fraction, batch_size, candidates, stop_rule, ablations=f
    )
    heads = [s.head for s in significance]
    if not heads:
        return GroupMinimality(significance, Estimate(float("nan")), float("nan"), 0, 0)
    point = float(np.mean([s.before - s.after for s in significance]))
    k = math.ceil(fraction * len(heads))
    # a small group's drop is a mean over few heads and jumps with K (empty or not), so its error needs more
    # resamples; they cost no new circuit runs there (every K is a subset already measured)
    n_boot = max(n_boot, math.ceil(SMALL_GROUP_RESAMPLES / len(heads)))
    ids = as_clusters(dataset.clusters().numpy())
    n_clusters = int(ids.max()) + 1
    if n_clusters < 2:
        return GroupMinimality(significance, Estimate(point), float("nan"), 0, 0)
    measured = f.evaluated
    # every single and pair ablation is already measured: stack them once and reweight per resample
    singles = np.stack([f.correct({u}).float().numpy() for u in heads])  # [H, N]
    pairs = np.stack([[f.correct({u, v}).float().numpy() for v in heads] for u in heads])  # [H, H, N]
    index = {h: i for i, h in enumerate(heads)}
    rng = np.random.default_rng(seed)
    weights = [
        counts[ids].astype(np.float64)
        for counts in rng.multinomial(n_clusters, np.full(n_clusters, 1 / n_clusters), size=n_boot)
    ]
    # K in each resample depends on the (already measured) singles and pairs only: choose every K first, measure
    # the new sets together, then reweight
    chosen = []
    for w in weights:
        single_acc, pair_acc = singles @ w / w.sum(), pairs @ w / w.sum()
        chosen.append(
            [
                entangled_peers(v, heads, lambda u, j=j: single_acc[index[u]] - pair_acc[index[u], j], k, stop_rule)
                for j, v in enumerate(heads)
            ]
        )
    f.measure([s for per_head in chosen for v, removed in zip(heads, per_head) for s in (removed, {*removed, v})])
    draws = []
    for w, per_head in zip(weights, chosen):
        draws.append(
            np.mean([f.accuracy(removed, w) - f.accuracy({*removed, v}, w) for v, removed in zip(heads, per_head)])
        )
    draws = np.asarray(draws)
    # the resamples spread the drop by the plug-in error, sqrt((C - 1) / C) of the cluster-robust one (CR1), and an
    # interval from 15 contexts (100 prompts) widens for them: plain, it covered 93%, its error was 4% small
    se = float(draws.std(ddof=1)) * math.sqrt(n_clusters / (n_clusters - 1))
    return GroupMinimality(
        significance,
        Estimate(point, *percentile_interval(draws, LEVEL, n_clusters)),
        se,
        n_boot,
        f.evaluated - measured,
        n_clusters,
        draws,
    )


def prune(circuit: Circuit, significance: dict[str, list[HeadSignificance]], threshold: float) -> Circuit:
    """The circuit with only the heads that pass ``threshold`` (groups without a significance list are kept)."""
    groups = {}
    for name, g in circuit.groups.items():
        heads = g.heads if name not in significance else tuple(s.head for s in significance[name] if s.kept(threshold))
        if heads:
            groups[name] = HeadGroup(name, g.role, heads)
    return Circuit(circuit.name, groups)
