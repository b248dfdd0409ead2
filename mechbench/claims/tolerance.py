"""The tolerance rules of the claims, each written once: every suite takes its bounds from here, and each bound
carries the rule that made it (stored with a baseline record when one is written).

All are z = 3 bounds on the difference between a measurement and a stored estimate that has as much error again.
On the baseline's own examples (same seed and n, a deterministic CPU run) sampling error cancels, and
``same_sample`` (3/n: three examples flipping on near-ties between float builds) applies instead.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from mechbench.baselines import BINOMIAL_RULE, SAME_SAMPLE_RULE, binomial_tolerance

Z = 3.0


@dataclass(frozen=True)
class Tolerance:
    value: float
    rule: str
    same_sample: float | None = None  # the bound on the baseline's own examples, where it has one


def same_sample(n: int, unit: float = 1.0) -> float:
    return round(3 * unit / n, 4)


def binomial(p: float, n: int, rounding: float = 0.0, why_rounding: str = "") -> Tolerance:
    """An accuracy over ``n`` prompts against a stored one over as many: 3 standard errors of the difference of two
    independent binomial estimates (Agresti-Coull p, so an observed 0 or 1 still allows an example), plus
    ``rounding`` (the published number's rounding, a training path's spread), never below 3/n."""
    extra = f" + {rounding}{' (' + why_rounding + ')' if why_rounding else ''}" if rounding else ""
    return Tolerance(max(binomial_tolerance(p, n, n, z=Z, rounding=rounding), same_sample(n)),
                     BINOMIAL_RULE.format(rounding=extra) + "; " + SAME_SAMPLE_RULE, same_sample(n))


def widest_binomial(n: int) -> Tolerance:
    """:func:`binomial` at p = 0.5, its widest: for numbers stored per item whose judgement is elsewhere."""
    return binomial(0.5, n)


def mean_of_draws(std: float, draws: int, n: int | None = None, unit: float = 1.0, rounding: float = 0.0,
                  what: str = "draws") -> Tolerance:
    """A mean over ``draws`` random draws (of K, of pairs, of random circuits) against a stored mean over as many:
    z * sqrt(2) * std / sqrt(draws), plus ``rounding``, plus one example's worth (``unit / n``) so that a zero
    spread is not a zero bound."""
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
    """A difference of two measured numbers (incompleteness = F(M\\K) - F(C\\K)): the sum of their bounds."""
    both = None if a.same_sample is None or b.same_sample is None else round(a.same_sample + b.same_sample, 4)
    return Tolerance(round(a.value + b.value, 4), f"the sum of the tolerances of {what}: it is their difference", both)


def resampled(se: float, n: int) -> Tolerance:
    """A statistic whose standard error came from resampling whole contexts (minimality's group drop, with K
    chosen again in each resample): z * sqrt(2) * se; 3/n on the baseline's own examples."""
    return Tolerance(Z * math.sqrt(2) * se,
                     f"{Z:g} x sqrt(2) x its standard error from resampling contexts (the stored estimate has as "
                     f"much error again); on the baseline's own examples 3/n", same_sample(n))


def fixed(value: float, rule: str) -> Tolerance:
    return Tolerance(value, rule)
