"""The tolerance rules of the claims, each written once: every suite takes its bounds from here, and each bound
carries the rule that made it (stored with a baseline record when one is written).

All are z = 3 bounds on the difference between a measurement and a stored estimate that has as much error again.
On the baseline's own examples (same seed and n, a deterministic CPU run) sampling error cancels, and
``same_sample`` (3/n: three examples flipping on near-ties between float builds) applies instead.

The range rule (:func:`mechbench.baselines.tolerance_limit`): a bound means something only when it is finite, >= 0
and narrower than the measure's range allows: below 0.5 for a fraction (or a ratio of two), below 50 for a percent,
below the stored count for heads and counts. On a sample too small for that, the comparison is inconclusive (a
skip naming the size the rule needs, never a pass: :class:`mechbench.baselines.Comparison`), and a record with such
a bound is never stored (:func:`mechbench.baselines.update`). Each rule below states where it falls in range. A
comparison on another sample than the record's also widens a binomial bound by the prompts' design effect and by
Student's t for few contexts (:func:`mechbench.stats.few_clusters_factor`): infinite at one context (up to 7
prompts), tens of times at two (14), 1.8x at six (40); so against a stored 0.82 (n=500) an accuracy needs 36
prompts at a design effect of 1.3, whatever the rule's own bound.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from mechbench.baselines import (BINOMIAL_RULE, SAME_SAMPLE_RULE, binomial_tolerance, smallest_size, tolerance_limit,
                                 too_wide)
from mechbench.stats import few_clusters_factor

Z = 3.0


@dataclass(frozen=True)
class Tolerance:
    value: float
    rule: str
    same_sample: float | None = None  # the bound on the baseline's own examples, where it has one


def same_sample(n: int, unit: float = 1.0) -> float:
    """3 examples of ``n`` (in ``unit``: 100 for percent): in range (below half the unit) from n = 7."""
    return round(3 * unit / n, 4)


def binomial(p: float, n: int, rounding: float = 0.0, why_rounding: str = "") -> Tolerance:
    """An accuracy over ``n`` prompts against a stored one over as many: 3 standard errors of the difference of two
    independent binomial estimates (Agresti-Coull p, so an observed 0 or 1 still allows an example), plus
    ``rounding`` (the published number's rounding, a training path's spread), never below 3/n. In range (below
    0.5) from n = 19 at p = 0.5, its widest (17 at p = 0.66, 14 at 0.82, 10 at 0 or 1); with 0.05 of rounding
    (DCM's training path) from n = 23."""
    extra = f" + {rounding}{' (' + why_rounding + ')' if why_rounding else ''}" if rounding else ""
    return Tolerance(max(binomial_tolerance(p, n, n, z=Z, rounding=rounding), same_sample(n)),
                     BINOMIAL_RULE.format(rounding=extra) + "; " + SAME_SAMPLE_RULE, same_sample(n))


def widest_binomial(n: int) -> Tolerance:
    """:func:`binomial` at p = 0.5, its widest: for numbers stored per item whose judgement is elsewhere. In range
    from n = 19."""
    return binomial(0.5, n)


def mean_of_draws(std: float, draws: int, n: int | None = None, unit: float = 1.0, rounding: float = 0.0,
                  what: str = "draws") -> Tolerance:
    """A mean over ``draws`` random draws (of K, of pairs, of random circuits) against a stored mean over as many:
    z * sqrt(2) * std / sqrt(draws), plus ``rounding``, plus one example's worth (``unit / n``) so that a zero
    spread is not a zero bound. In range where 3*sqrt(2)*std/sqrt(draws) + rounding + unit/n is below half the
    unit: the spread of the draws sets it more than n (at 10 draws a fraction's std must be below 0.37 with
    n = 500; at std 0.1, n = 3 is 0.47 and in range, n = 1 is not)."""
    one = unit / n if n else 0.0
    value = Z * math.sqrt(2) * std / math.sqrt(draws) + rounding + one
    rule = (f"{Z:g}*sqrt(2)*std/sqrt({what}): the difference of two means over {draws} {what}, std their spread"
            + (f" + {rounding} (rounding)" if rounding else "") + (f" + {unit:g}/n (one example)" if one else ""))
    return Tolerance(round(value, 4), rule)


def spread_of_fresh_draws(values, n: int, unit: float = 1.0) -> float:
    """The spread of ``values``, each an accuracy (in ``unit``: 100 for percent) on its own fresh draw of ``n``
    examples (DCM patching's runs of pairs), never below the binomial spread of one draw. The spread of 10 draws is
    itself uncertain (about 22%), and under the binomial's it narrows the bound with no reason: runs of 40 pairs
    spread 4.4 points where the binomial says 7.8, and the mean then failed an unchanged model at --limit 40
    (seed 5). Not for draws on the same examples (random K, random circuits), whose sampling error is shared."""
    p = min(max(statistics.fmean(values) / unit, 0.0), 1.0)
    return max(statistics.pstdev(values), unit * math.sqrt(p * (1 - p) / n))


def difference(a: Tolerance, b: Tolerance, what: str) -> Tolerance:
    """A difference of two measured numbers (incompleteness = F(M\\K) - F(C\\K)): the sum of their bounds. In
    range where the sum is: two binomials at p = 0.5 from n = 73."""
    both = None if a.same_sample is None or b.same_sample is None else round(a.same_sample + b.same_sample, 4)
    return Tolerance(round(a.value + b.value, 4), f"the sum of the tolerances of {what}: it is their difference", both)


def resampled(se: float, n: int, n_clusters: int | None = None) -> Tolerance:
    """A statistic whose standard error came from resampling whole contexts (minimality's group drop, with K
    chosen again in each resample): z * sqrt(2) * se, and with ``n_clusters`` (the contexts resampled) Student's t
    for their n_clusters - 1 degrees of freedom in place of z (:func:`mechbench.stats.few_clusters_factor`: x1.21 at
    minimality's 15 contexts; measured by simulation, tests/test_stat_promises.py: 1.05% false alarms with z, 0.58%
    with t); 3/n on the baseline's own examples."""
    widen = few_clusters_factor(n_clusters, Z) if n_clusters else 1.0
    return Tolerance(Z * widen * math.sqrt(2) * se,
                     f"{Z:g} x sqrt(2) x its standard error from resampling contexts (the stored estimate has as "
                     f"much error again)" + (f", x {widen:.2f} (Student's t for {n_clusters} contexts)" if n_clusters
                                             else "") + "; on the baseline's own examples 3/n", same_sample(n))


def fixed(value: float, rule: str) -> Tolerance:
    """A bound stated by its rule (path patching's recall margin): in range where ``value`` is, at any n."""
    return Tolerance(value, rule)


def resampled_at(se: float, n: int, same_sample: bool = False, precision: float = 1.0, n_clusters: int | None = None):
    """``bound_at(m)`` for :func:`inconclusive` of a :func:`resampled` bound measured on ``n`` examples (in
    ``n_clusters`` contexts): the same statistic on ``m`` examples, whose standard error shrinks as 1/sqrt(m) and
    whose contexts grow with m; on the baseline's own examples its same-sample bound (x ``precision`` for another
    dtype)."""
    def bound_at(m: int) -> float:
        bound = resampled(se * math.sqrt(n / m), m, max(2, round(n_clusters * m / n)) if n_clusters else None)
        return bound.same_sample * precision if same_sample else bound.value
    return bound_at


def inconclusive(bound_at, n: int, unit: str = "fraction", value: float | None = None,
                 sample: str = "examples") -> str | None:
    """For a check judged outside :func:`mechbench.baselines.compare` (minimality's group drop): why its bound on
    ``n`` examples, ``bound_at(n)``, is too wide for ``unit`` (the range rule), with the fewest examples at which the
    same rule's bound is not; None where it means something. ``bound_at`` must not grow with n."""
    wide = too_wide(bound_at(n), unit, value)
    if wide is None:
        return None
    needs = smallest_size(bound_at, tolerance_limit(unit, value), n)
    return f"inconclusive at n={n}: {wide}; " + (f"needs at least {needs} {sample}" if needs else
                                                 "no sample size narrows it enough")
