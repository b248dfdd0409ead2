"""Uncertainty for numbers measured on prompts that come in blocks.

The prompts of a dataset come in blocks that share one context (the paper's layout: each context is queried
at every box), so they are not independent: a model that misreads one context tends to miss all its queries.
Every interval here treats the context as the unit of sampling (a *cluster*):

- :func:`cluster_se`: the cluster-robust standard error of a mean;
- :func:`cluster_bootstrap`: a percentile interval for any statistic of several per-example quantities
  measured on the same examples (a paired difference, a ratio, a share of a gain), by resampling whole
  contexts with replacement. Two models measured on the same prompts are resampled together, so what they
  have in common cancels. Resampling few contexts spreads a statistic too little, so the interval is widened
  for their number (:func:`few_contexts_widening`): a plain percentile interval over the 6 contexts of
  --limit 40 covers 84% of the time, not 95% (tests/test_stat_promises.py).

Counterfactual pairs (DCM) draw a fresh base context per pair: each pair is its own cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

import numpy as np

Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% interval (``lo``/``hi`` are None where none was computed)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def excludes(self, x: float) -> bool:
        """The interval lies entirely on one side of ``x``."""
        return self.lo is not None and (self.lo > x or self.hi < x)

    def __format__(self, spec: str) -> str:
        spec = spec or "+.3f"
        if self.lo is None or not np.isfinite(self.value):
            return format(self.value, spec)
        return f"{format(self.value, spec)} [{format(self.lo, spec)}, {format(self.hi, spec)}]"

    def to_json(self) -> dict:
        return {"value": _num(self.value), "lo": _num(self.lo), "hi": _num(self.hi)}


def _num(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def as_clusters(clusters) -> np.ndarray:
    """Cluster labels -> consecutive integer ids 0..C-1."""
    return np.unique(np.asarray(clusters), return_inverse=True)[1].reshape(-1)


def cluster_se(values, clusters) -> float:
    """Cluster-robust (CR1) standard error of the mean of ``values``."""
    return float(cluster_se_last_axis(values, clusters))


def cluster_se_last_axis(values, clusters) -> np.ndarray:
    """:func:`cluster_se` of every row of ``values`` ([..., N]) at once: e.g. each head's score over N pairs."""
    x = np.asarray(values, dtype=np.float64)
    ids = as_clusters(clusters)
    n, c = x.shape[-1], ids.max() + 1
    if c < 2:
        return np.full(x.shape[:-1], np.nan)
    resid = np.zeros(x.shape[:-1] + (c,))
    np.add.at(resid, (..., ids), x - x.mean(-1, keepdims=True))
    return np.sqrt(c / (c - 1) * (resid**2).sum(-1)) / n


def design_effect(values, clusters) -> float:
    """The variance of a mean over prompts that come in blocks, over its variance were they independent: the
    square of the cluster-robust standard error over the plain one (1 where the plain one is 0). A binomial
    bound times its square root holds for the blocks."""
    x = np.asarray(values, dtype=np.float64)
    plain = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
    robust = cluster_se(x, clusters)
    return float((robust / plain) ** 2) if plain > 0 and np.isfinite(robust) else 1.0


def cluster_bootstrap(
    statistic: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    quantities: Mapping[str, np.ndarray],
    clusters,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """``statistic`` of the means of ``quantities`` (each [N] on the same examples), with a ``level`` (95%)
    percentile interval from resampling the clusters, widened for few of them (:func:`percentile_interval`). A
    check made over k numbers at once asks each for level 1 - 0.05/k (Bonferroni), so that an unchanged model
    fails it at most 5% of the time.

    ``statistic`` takes ``{name: mean}`` and must work elementwise on arrays (it is called once on scalars for
    the point estimate and once on [n_boot] arrays). Resamples where it is not finite (a zero denominator) are
    dropped; if more than 5% are, the interval is reported as missing rather than trusted.
    """
    ids = as_clusters(clusters)
    names = list(quantities)
    x = np.stack([np.asarray(quantities[k], dtype=np.float64) for k in names], 1)  # [N, Q]
    c = ids.max() + 1
    sums = np.stack([np.bincount(ids, weights=x[:, q], minlength=c) for q in range(x.shape[1])], 1)  # [C, Q]
    counts = np.bincount(ids, minlength=c).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic({k: x[:, i].mean() for i, k in enumerate(names)}))
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(c, np.full(c, 1 / c), size=n_boot).astype(np.float64)  # [B, C]
        means = (weights @ sums) / (weights @ counts)[:, None]
        draws = np.asarray(statistic({k: means[:, i] for i, k in enumerate(names)}), dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if len(draws) < 0.95 * n_boot or c < 2:
        return Estimate(point)
    return Estimate(point, *percentile_interval(draws, level, c))


def percentile_interval(draws: np.ndarray, level: float, n_clusters: int) -> tuple[float, float]:
    """The ``level`` interval of a statistic from its ``draws`` over resamples of ``n_clusters`` contexts: their
    central quantiles, spread around their median by :func:`few_contexts_widening`."""
    lo, mid, hi = np.quantile(draws, [(1 - level) / 2, 0.5, (1 + level) / 2])
    widen = few_contexts_widening(n_clusters, level)
    return float(mid - widen * (mid - lo)), float(mid + widen * (hi - mid))


def few_contexts_widening(n_clusters: int, level: float = 0.95) -> float:
    """How much a ``level`` interval from resampling ``n_clusters`` contexts must widen to cover as often as it
    says: resampling C contexts spreads a mean by sqrt((C - 1) / C) of its standard error (the plug-in variance),
    and an error estimated from C contexts has C - 1 degrees of freedom (Student's t quantile for the normal's).
    1.44 at 6 contexts (--limit 40), 1.13 at 15 (100 prompts), 1.02 at 72 (500)."""
    z = NormalDist().inv_cdf((1 + level) / 2)
    return math.sqrt(n_clusters / (n_clusters - 1)) * few_clusters_factor(n_clusters, z)


def mean_estimate(values, clusters) -> Estimate:
    """A mean with its cluster-robust normal 95% interval."""
    m = float(np.mean(values))
    se = cluster_se(values, clusters)
    return Estimate(m, m - Z95 * se, m + Z95 * se) if np.isfinite(se) else Estimate(m)


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` on ``n`` (effective) examples: inside [0, 1], and not
    collapsed to a point at 0 or 1 as the normal interval is."""
    if n <= 0:
        return (float("nan"), float("nan"))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def shared_binomial_se(*accuracies: float, n: int) -> float:
    """The sampling error on ``n`` prompts of accuracies measured on them (their sum's, or a difference's, as if
    independent: an upper bound where they share prompts): sqrt(sum p(1 - p) / n). What draws on the same prompts
    share (completeness's random K), beside the draws' own spread."""
    return math.sqrt(sum(min(max(p, 0.0), 1.0) * (1 - min(max(p, 0.0), 1.0)) for p in accuracies) / n)


def measurement_interval(
    value: float,
    n: int | None = None,
    *,
    std: float | None = None,
    draws: int | None = None,
    shared_se: float | None = None,
    se: float | None = None,
    dof: int | None = None,
    design_effect: float = 1.0,
    proportion: bool = False,
) -> tuple[float, float] | None:
    """A measured number's 95% interval from what its claim knows about it, or None where that is nothing:

    - ``se``, a standard error from resampling contexts or a cluster-robust one: value +- t(``dof``) se (Student's
      t for the contexts' ``dof`` = contexts - 1 degrees of freedom where given, else 1.96);
    - a mean over ``draws`` draws (of pairs, of random circuits, of K) with spread ``std``: value +- t(draws - 1)
      sqrt(std^2 / draws + ``shared_se``^2), where ``shared_se`` is the sampling error the draws share because they
      are measured on the same prompts (random circuits and random K: the draws' spread alone would leave the
      prompts' out; DCM patching's runs draw fresh pairs, so theirs is in the spread);
    - a ``proportion`` on ``n`` examples (an accuracy): the Wilson interval on n / ``design_effect`` examples
      (prompts that share a context are not independent).

    What the results file records as ``lo``/``hi`` and the report's figures draw as error bars."""
    if se is not None and math.isfinite(se):
        half = (t_quantile(0.975, dof) if dof and dof >= 1 else Z95) * se
        return (value - half, value + half)
    if std is not None and draws is not None and draws > 1:
        half = t_quantile(0.975, draws - 1) * math.sqrt(std**2 / draws + (shared_se or 0.0) ** 2)
        return (value - half, value + half)
    if proportion and n and 0.0 <= value <= 1.0:
        return wilson(value, n / max(design_effect, 1.0))
    return None


@dataclass(frozen=True)
class ChanceCheck:
    """Is a model's accuracy above chance by ``z`` cluster-robust standard errors?"""

    accuracy: float
    chance: float
    se: float
    z: float = 3.0

    @property
    def passed(self) -> bool:
        return self.accuracy - self.chance > self.z * self.se

    @property
    def below(self) -> bool:
        """The accuracy is below chance: the model picks the queried box's object less often than at random (a
        systematic error, such as naming a neighbouring box's object, or a prompt format it was not trained on)."""
        return self.accuracy < self.chance

    def message(self, model: str) -> str:
        verdict = "does the task" if self.passed else "does not do the task"
        below = " (below chance)" if self.below else ""
        return (
            f"{model} {verdict}: accuracy {self.accuracy:.3f} vs chance {self.chance:.3f}{below} (1 in the number "
            f"of boxes); needed more than {self.z:g} cluster-robust standard errors ({self.z:g} x {self.se:.3f})"
        )


def chance_check(correct, clusters, num_boxes: int, z: float = 3.0) -> ChanceCheck:
    """The guard every circuit claim runs first: a model at chance has no mechanism for a claim to be about.
    Chance is 1/num_boxes: a model that names one of the context's objects at random. The standard error is
    the cluster-robust one, floored at the binomial error at chance so that a constant answer cannot make it 0."""
    x = np.asarray(correct, dtype=np.float64)
    chance = 1.0 / num_boxes
    se = max(cluster_se(x, clusters), float(np.sqrt(chance * (1 - chance) / len(x))))
    return ChanceCheck(float(x.mean()), chance, se, z)


def _t_cdf(x: float, dof: int) -> float:
    """Student's t distribution function (Simpson's rule on its density; exact enough for a critical value)."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    steps = 2000
    h = x / steps
    density = [math.exp(log_norm - (dof + 1) / 2 * math.log1p((i * h) ** 2 / dof)) for i in range(steps + 1)]
    return 0.5 + h / 3 * (density[0] + density[-1] + 4 * sum(density[1:-1:2]) + 2 * sum(density[2:-1:2]))


@cache
def t_quantile(q: float, dof: int) -> float:
    """Student's t quantile at ``q`` > 0.5 for ``dof`` degrees of freedom (bisection on :func:`_t_cdf`, in a bracket
    widened until it holds the quantile: at 1 degree of freedom a 3-sigma tail sits near 236)."""
    lo, hi = 0.0, 8.0
    while _t_cdf(hi, dof) < q:
        lo, hi = hi, hi * 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, dof) < q else (lo, mid)
    return hi


@cache  # every accuracy check asks, for a handful of context counts
def few_clusters_factor(n_clusters: int, z: float = 3.0) -> float:
    """How much a z-standard-error bound must widen when its standard error is cluster-robust from ``n_clusters``
    contexts: that estimate has n_clusters - 1 degrees of freedom, so the bound takes Student's t quantile at the
    normal's z tail instead of z (1.04 at 72 contexts, the paper's 500 prompts; 1.7 at 6, --limit 40)."""
    if n_clusters < 2:
        return float("inf")
    return t_quantile(0.5 * (1 + math.erf(z / math.sqrt(2))), n_clusters - 1) / z
