"""The tolerance rules of the claims, each written once, as plain functions with their words: every suite takes its
bounds from here, and each bound carries the rule that made it (stored with a baseline record when one is written).
:mod:`mechbench.baselines` keeps the schema, the files and their staging; every rule that says how far a measurement
may lie from a stored number, and the judging of one against it (:func:`judge`), is here.

All are z = 3 bounds on the difference between a measurement and a stored estimate that has as much error again.
On the baseline's own examples (same seed and n, a deterministic CPU run) sampling error cancels, and
``same_sample`` (3/n: three examples flipping on near-ties between float builds) applies instead.

The rules, in the order a comparison meets them:

- the rules a claim states its bound by: :func:`binomial` (on :func:`binomial_tolerance`), :func:`widest_binomial`,
  :func:`mean_of_draws` (with :func:`spread_of_fresh_draws`), :func:`difference`, :func:`resampled`, :func:`fixed`;
- a stored bound applied to a measurement on other examples: :func:`tolerance_for` (rescaled to another n or
  another spread), on the record's own examples (:func:`own_examples`) its same-sample bound, widened for another
  dtype (:func:`precision_factor`);
- prompts that share contexts: :func:`widened` (the design effect, :func:`binomial_on` on the effective sample, and
  Student's t for few contexts, :func:`mechbench.stats.few_clusters_factor`; the contexts of a larger sample,
  :func:`contexts_at`);
- the range rule (:func:`tolerance_limit`, :func:`too_wide`, :func:`smallest_size`): a bound means something only
  when it is finite, >= 0 and narrower than the measure's range allows: below 0.5 for a fraction (or a ratio of
  two), below 50 for a percent, below the stored count for heads and counts. On a sample too small for that, the
  comparison is inconclusive (a skip naming the size the rule needs, never a pass: :class:`Judgement`), and a record
  with such a bound is never stored (:func:`mechbench.baselines.update`). Each rule below states where it falls in
  range;
- the judging: :func:`judge` (a measurement against a stored record), :func:`judge_derived` (against a number
  derived from stored records: minimality's group drop), both a :class:`Judgement`.

A comparison on another sample than the record's widens a binomial bound by the prompts' design effect and by
Student's t for few contexts: infinite at one context (up to 7 prompts), tens of times at two (14), 1.8x at six
(40); so against a stored 0.82 (n=500) an accuracy needs 36 prompts at a design effect of 1.3, whatever the rule's
own bound.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rules read records; the schema (mechbench.baselines) reads the range rule from here
    from mechbench.baselines import Record
from mechbench.errors import BaselineError
from mechbench.stats import few_clusters_factor

Z = 3.0


@dataclass(frozen=True)
class Tolerance:
    value: float
    rule: str
    same_sample: float | None = None  # the bound on the baseline's own examples, where it has one
    # what the rule knows of the measured number's own uncertainty, from which its 95% interval is drawn
    # (mechbench.stats.measurement_interval, written to the results file as lo/hi for the report's figures)
    proportion: bool = False  # an accuracy on n examples: a binomial
    std: float | None = None  # a mean over ``draws`` draws with this spread
    draws: int | None = None
    shared_se: float | None = None  # the sampling error such draws share (measured on the same prompts)
    se: float | None = None  # a standard error from resampling contexts (or a cluster-robust one)
    dof: int | None = None  # its degrees of freedom: the contexts less one


# --- the range rule -------------------------------------------------------------------------------------------


def tolerance_limit(unit: str, value: float | None = None) -> float:
    """The range rule: a tolerance in ``unit`` means something only below this. A fraction's (and a ratio's of two
    fractions): 0.5, half its range, since a bound of 0.5 around any value admits at least half of all possible
    values (around 0.5, every one of them); a percent's: 50, the same; a count's (heads or another count): the
    stored count itself (1 at a count of 0), since a bound as wide as the count admits a measurement of none."""
    if unit in ("heads", "count"):
        return max(float(value or 0), 1.0)
    return 50.0 if unit == "percent" else 0.5


def too_wide(tolerance: float, unit: str, value: float | None = None) -> str | None:
    """Why ``tolerance`` means nothing in ``unit`` (not finite, or not below :func:`tolerance_limit`), or None."""
    limit = tolerance_limit(unit, value)
    if math.isfinite(tolerance) and 0 <= tolerance < limit:
        return None
    return f"the tolerance {tolerance:.4g} is wider than a {unit} allows (it must be below {limit:g})"


def smallest_size(bound_at, limit: float, start: int, cap: int = 10**6) -> int | None:
    """The smallest n > ``start`` at which ``bound_at(n)`` (a bound that does not grow with n) falls below
    ``limit``, by search: doubling, then bisection. None when not even ``cap`` examples bring it there."""
    lo, hi = start, max(start + 1, 2 * start)  # bound_at(lo) >= limit (or lo is start), bound_at(hi) < limit
    while not bound_at(hi) < limit:
        if hi >= cap:
            return None
        lo, hi = hi, min(2 * hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if bound_at(mid) < limit else (mid, hi)
    return hi


# --- the rules a claim states its bound by ---------------------------------------------------------------------


def binomial_tolerance(p: float, n_measured: int, n_baseline: int, z: float = 3.0, rounding: float = 0.0) -> float:
    """z standard errors of the difference of two independent accuracy estimates, plus rounding slack.

    The variance uses the Agresti-Coull estimate (x + 2) / (n + 4) of p: at an observed 0 or 1 the plain
    estimate would give a tolerance of 0, which any later run on other examples fails by one example. In range as
    :func:`binomial` says."""
    p = min(max(p, 0.0), 1.0)
    p = (p * n_baseline + 2) / (n_baseline + 4)
    se = math.sqrt(p * (1 - p) / n_measured + p * (1 - p) / n_baseline)
    return round(z * se + rounding, 4)


BINOMIAL_RULE = (
    "3 standard errors of the difference of two independent binomial estimates, "
    "3*sqrt(p(1-p)/n_measured + p(1-p)/n_baseline) with p = (x+2)/(n+4){rounding}"
)
SAME_SAMPLE_RULE = (
    "on the baseline's own examples (same seed and n) sampling error cancels: 3/n allows three "
    "examples to flip on near-ties between float builds"
)


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
    return Tolerance(
        max(binomial_tolerance(p, n, n, z=Z, rounding=rounding), same_sample(n)),
        BINOMIAL_RULE.format(rounding=extra) + "; " + SAME_SAMPLE_RULE,
        same_sample(n),
        proportion=True,
    )


def widest_binomial(n: int) -> Tolerance:
    """:func:`binomial` at p = 0.5, its widest: for numbers stored per item whose judgement is elsewhere (not a
    proportion itself: no interval is drawn from it). In range from n = 19."""
    return replace(binomial(0.5, n), proportion=False)


def mean_of_draws(
    std: float, draws: int, n: int | None = None, unit: float = 1.0, rounding: float = 0.0, what: str = "draws"
) -> Tolerance:
    """A mean over ``draws`` random draws (of K, of pairs, of random circuits) against a stored mean over as many:
    z * sqrt(2) * std / sqrt(draws), plus ``rounding``, plus one example's worth (``unit / n``) so that a zero
    spread is not a zero bound. In range where 3*sqrt(2)*std/sqrt(draws) + rounding + unit/n is below half the
    unit: the spread of the draws sets it more than n (at 10 draws a fraction's std must be below 0.37 with
    n = 500; at std 0.1, n = 3 is 0.47 and in range, n = 1 is not)."""
    one = unit / n if n else 0.0
    value = Z * math.sqrt(2) * std / math.sqrt(draws) + rounding + one
    rule = (
        f"{Z:g}*sqrt(2)*std/sqrt({what}): the difference of two means over {draws} {what}, std their spread"
        + (f" + {rounding} (rounding)" if rounding else "")
        + (f" + {unit:g}/n (one example)" if one else "")
    )
    return Tolerance(round(value, 4), rule, std=std, draws=draws)


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
    with t); 3/n on the baseline's own examples. In range while 3*sqrt(2)*se (times t) is below 0.5: at 100
    examples, with z alone, an se below 0.1178."""
    widen = few_clusters_factor(n_clusters, Z) if n_clusters else 1.0
    return Tolerance(
        Z * widen * math.sqrt(2) * se,
        f"{Z:g} x sqrt(2) x its standard error from resampling contexts (the stored estimate has as "
        f"much error again)"
        + (f", x {widen:.2f} (Student's t for {n_clusters} contexts)" if n_clusters else "")
        + "; on the baseline's own examples 3/n",
        same_sample(n),
        se=se,
        dof=n_clusters - 1 if n_clusters else None,
    )


def resampled_at(se: float, n: int, n_clusters: int | None = None) -> Callable[[int], Tolerance]:
    """The :func:`resampled` bound measured on ``n`` examples (in ``n_clusters`` contexts) as it would be on ``m``
    examples, ``at(m)``: its standard error shrinks as 1/sqrt(m) and its contexts grow with m (never fewer than 2).
    What :func:`judge_derived` searches for the size an inconclusive check needs."""

    def at(m: int) -> Tolerance:
        return resampled(se * math.sqrt(n / m), m, max(2, round(n_clusters * m / n)) if n_clusters else None)

    return at


def fixed(value: float, rule: str) -> Tolerance:
    """A bound stated by its rule (path patching's recall margin): in range where ``value`` is, at any n."""
    return Tolerance(value, rule)


# --- another dtype than the baseline's -------------------------------------------------------------------------

#: The share of examples whose top-1 answer flips between float32 and bfloat16 weights and activations, rounded up
#: from the 0.53% measured on the toy zoo (116 sets of 500 prompts: accuracy and every knockout curve point of the
#: four models, at most 6 flips and a net change of 4 in one set), doubled for wider models and other kernels.
PRECISION_FLIP_RATE = 0.01
PRECISION_RULE = (
    "in another dtype than the baseline's, on its own examples: the same-sample bound x (1 + "
    "sqrt(0.01 n)), for the predictions that flip on near-ties when the weights are rounded (0.53% of "
    "examples measured float32 -> bfloat16 on the toy zoo, doubled)"
)


def precision_factor(n: int | None, dtype: str | None, baseline_dtype: str) -> float:
    """How much a same-sample bound widens when the measurement ran in ``dtype`` and the baseline in
    ``baseline_dtype``: the examples are the same, the model is not quite (every weight rounded), so each example
    near a tie may flip either way; their net count has a standard deviation of about sqrt(rate n), and the bound
    allows 3 of them on top of the 3 of the same-sample rule: 3/n x (1 + sqrt(rate n)). 1 in the same dtype. The
    widened bound is in range from n = 8 (0.48; 0.54 at 7, where the plain 3/n still is), 0.06 at 100."""
    from mechbench.models.loading import DTYPES

    if not dtype or not n or DTYPES.get(dtype, dtype) == DTYPES.get(baseline_dtype, baseline_dtype):
        return 1.0
    return 1.0 + math.sqrt(PRECISION_FLIP_RATE * n)


# --- a stored bound applied to a measurement -------------------------------------------------------------------


def own_examples(record: Record, n: int | None, seed: int | None) -> bool:
    """The measurement is on ``record``'s own examples (same n and seed) and the record has a same-sample bound:
    there sampling error cancels, and the same-sample bound applies (:data:`SAME_SAMPLE_RULE`)."""
    return (
        n is not None
        and seed is not None
        and record.get("n") == n
        and record.get("seed") == seed
        and record.get("tolerance_same_sample") is not None
    )


def tolerance_for(
    record: Record,
    n: int | None = None,
    seed: int | None = None,
    value: float | None = None,
    std: float | None = None,
    dtype: str | None = None,
) -> float:
    """The tolerance of ``record`` that applies to a measurement on ``n`` examples drawn with ``seed``: its stored
    bound rescaled to the measurement. ``value``: the number the tolerance bounds where the record's value is an
    object (DCM's ``test_accuracy``). ``std``: the measured spread of a mean over draws, which says how much wider
    its error is than the stored one's. ``dtype``: the measurement's; on the record's own examples another dtype
    than the record's widens the bound (:func:`precision_factor`).

    On the record's own examples: its same-sample bound (x the precision factor). A mean over draws (a record with
    a spread, or a value outside [0, 1]: a percent) on another n or with a measured spread: the stored bound x
    max(1, sqrt((1 + ratio) / 2)), ratio the larger of n_record / n and (std / stored std)^2; in range from the n at
    which that falls below the limit (never, where the stored bound is wide already). An accuracy on another n: the
    binomial bound on n against n_record, the record's rounding (its stored bound over its own binomial one) kept,
    never below 3/n; in range as :func:`binomial` says. Otherwise: the stored bound as it is."""
    if own_examples(record, n, seed):
        return float(record.get("tolerance_same_sample")) * precision_factor(n, dtype, record.dtype)
    if record.get("tolerance") is None:
        raise BaselineError(f"baseline record {record.keys} has no tolerance to compare against")
    value = record.value if value is None else value
    over_draws = isinstance(value, (int, float)) and (record.get("std") is not None or not 0 <= value <= 1)
    other_n = n is not None and record.get("n") and n != record.get("n")
    if over_draws and (other_n or std is not None):
        # a mean over draws (or a percent): the bound covers the stored mean's error and the new one's, so it
        # widens by sqrt((1 + (new spread / stored spread)^2) / 2): the measured spread where there is one, else
        # each draw's spread grown as 1/sqrt(n) (measured: a percent over runs of 40 pairs spread 3-6x more than
        # over 500, past the 1/sqrt(n) guess); on more examples, or a smaller spread, it stays. On as many
        # examples too: the stored spread is an estimate from 10 draws (measured: DCM patching's 1.19 points
        # where other seeds spread 2.2-2.9 and the binomial says 2.1, so --seed 1 failed an unchanged toy-float
        # by 1.86 against 1.85)
        ratio = record.get("n") / n if n and record.get("n") else 1.0
        if std is not None and record.get("std"):
            ratio = max(ratio, (std / record.get("std")) ** 2)
        return float(record.get("tolerance")) * max(1.0, math.sqrt((1 + ratio) / 2))
    if other_n and isinstance(value, (int, float)):
        # Fewer (or more) examples than the baseline: the binomial bound widens (or narrows) with them, and
        # never allows fewer than three examples of the new sample: near 0 or 1 the count of misses is skewed
        # (Poisson-like) and 3 normal standard errors cover it too little (measured: 2 misses in 40 where the
        # record has 0.4% failed a 0.044 bound at --limit 40)
        rounding = float(record.get("tolerance")) - binomial_tolerance(value, record.get("n"), record.get("n"))
        return max(binomial_tolerance(value, n, record.get("n"), rounding=max(rounding, 0.0)), round(3 / n, 4))
    return float(record.get("tolerance"))


def is_binomial(record: Record, value: float, std: float | None = None) -> bool:
    """Whether ``record``'s tolerance is a binomial bound that rescales with the sample (an accuracy, not a mean
    over draws: see :func:`tolerance_for`)."""
    return (
        record.get("tolerance") is not None
        and bool(record.get("n"))
        and record.get("std") is None
        and std is None
        and 0 <= value <= 1
    )


def binomial_on(record: Record, n: int, value: float, design_effect: float = 1.0) -> float:
    """``record``'s binomial bound for a measurement on ``n`` examples whose prompts share contexts with
    ``design_effect``: on the effective samples n / design effect and n_record / design effect, with the record's
    own extra (rounding) kept, never below three examples of the effective sample (3 x design effect / n)."""
    n_record = record.get("n")
    rounding = max(float(record.get("tolerance")) - binomial_tolerance(value, n_record, n_record), 0.0)
    return max(
        binomial_tolerance(value, n / design_effect, n_record / design_effect, rounding=rounding),
        round(3 * design_effect / n, 4),
    )


# --- prompts that share contexts -------------------------------------------------------------------------------


def contexts_at(size: int | None, n: int | None, n_clusters: int | None, per_context: float | None) -> int | None:
    """The contexts behind a sample of ``size`` examples where ``n`` of them came in ``n_clusters`` contexts: as
    many on the same size, more on a larger one (``per_context`` examples to a context, by default as many as
    measured), never fewer."""
    if n_clusters and n and size != n:  # a larger sample holds more contexts
        return max(n_clusters, math.ceil(size / (per_context or n / n_clusters)))
    return n_clusters


def widened(
    record: Record,
    size: int | None,
    expected: float,
    std: float | None = None,
    dtype: str | None = None,
    design_effect: float = 1.0,
    contexts: int | None = None,
) -> tuple[float, float]:
    """The tolerance of ``record`` on ``size`` examples of another sample than its own, whose prompts share
    contexts: with the measured ``design_effect`` (the variance of the accuracy over its binomial variance,
    :func:`mechbench.stats.design_effect`; 1 or less leaves it), and Student's t for the ``contexts`` that estimate
    rests on in place of z (:func:`mechbench.stats.few_clusters_factor`: infinite at one context, tens of times at
    two, 1.8x at six, 1.04 at 72). Returns the tolerance and the factor it was widened by. A binomial bound is
    taken on the effective sample (:func:`binomial_on`); any other bound (:func:`tolerance_for`) is widened by the
    square root of the design effect. Out of range at one context, whatever the rule."""
    t = few_clusters_factor(contexts) if contexts else 1.0
    plain = tolerance_for(record, size, None, expected, std, dtype)
    deff = max(1.0, float(design_effect))
    if deff > 1 and is_binomial(record, expected, std):
        # the binomial bound on the effective sample, n / design effect (and its floor of three examples of
        # it), not the bound on n x sqrt(design effect): near 0 or 1 the misses of a context come together,
        # their count is skewed, and the Agresti-Coull pseudo-counts must weigh as much as the effective
        # sample makes them (measured, tests/test_stat_promises.py: 1.33% false alarms at 0.98 with
        # x sqrt(design effect), 0.28% on the effective sample; 0.26% at 0.66)
        tolerance = binomial_on(record, size or record.get("n"), expected, deff) * t
        return tolerance, tolerance / plain if plain else 1.0
    return plain * deff**0.5 * t, deff**0.5 * t


# --- judging a measurement -------------------------------------------------------------------------------------


@dataclass
class Judgement:
    """A measurement against a stored number within a tolerance (the record's, :func:`judge`; or one derived from
    stored records, :func:`judge_derived`). It passes within the tolerance, fails outside it, and is inconclusive
    (``passed`` None) within a tolerance too wide to mean anything (:func:`too_wide`: not finite, or as wide as half
    the unit's range): a sample too small for the rule's bound. A difference beyond even such a bound still fails:
    the bound is wide, not wrong."""

    measured: float
    expected: float
    tolerance: float
    record: Record | None  # the stored record compared with (None for a number derived from several)
    widened: float = 1.0  # the factor a binomial tolerance was widened by for prompts that share a context
    precision: float = 1.0  # the factor a same-sample bound was widened by for another dtype than the baseline's
    unit: str = "fraction"  # the compared number's, whose range the tolerance must be narrower than
    n: int | None = None  # the examples measured
    needs: int | None = None  # the fewest examples at which the rule's bound means something, where it does not here
    sample: str = "examples"  # what n counts (a claim's sample: prompts, pairs)
    needs_limit: int | None = None  # the --limit that gives ``needs`` of them, where it is known
    source: str | None = None  # where the stored number comes from (default: the record's source)
    rule: str | None = None  # the rule's words, where they are not the record's own (a derived number's)
    baseline_dtype: str | None = None  # the dtype the stored number was measured in (default: the record's)

    @property
    def difference(self) -> float:
        return self.measured - self.expected

    @property
    def within(self) -> bool:
        return abs(self.difference) <= self.tolerance + 1e-12

    @property
    def inconclusive(self) -> str | None:
        """Why the measurement, within its tolerance, is no evidence either way (None where it is)."""
        wide = too_wide(self.tolerance, self.unit, self.expected)
        if wide is None or abs(self.difference) > self.tolerance + 1e-12:  # (a NaN bound is neither)
            return None
        at = f" at n={self.n}" if self.n is not None else ""
        if self.needs is not None:
            more = f"needs at least {self.needs} {self.sample}" + (
                f" (--limit {self.needs_limit})" if self.needs_limit is not None else ""
            )
        elif self.n is None:
            more = "its rule does not depend on a sample size"
        elif self.record is None:
            more = "no sample size narrows it enough"
        else:
            more = (
                "no sample size narrows it enough (the stored bound, the measured spread or the design effect "
                "is too wide by itself)"
            )
        return f"inconclusive{at}: {wide}; {more}"

    @property
    def passed(self) -> bool | None:
        return None if self.inconclusive else self.within

    def __str__(self) -> str:
        verdict = "within" if self.within else "OUTSIDE"
        source = self.source if self.source is not None else self.record.source
        rule = f" ({self.rule})" if self.rule else ""
        widened = (
            f" (the binomial bound x {self.widened:.2f}: prompts that share a context miss together, and "
            f"the contexts behind that estimate are counted)"
            if self.widened > 1
            else ""
        )
        if self.precision > 1:
            dtype = self.baseline_dtype or (self.record.dtype if self.record is not None else "float32")
            widened += (
                f" (the same-sample bound x {self.precision:.2f}: the baseline ran in {dtype}, "
                f"and rounding to another dtype flips predictions near ties)"
            )
        return (
            f"measured {self.measured:.4f} vs baseline {self.expected:.4f} ({source}): "
            f"difference {self.difference:+.4f}, {verdict} tolerance {self.tolerance:.4f}{rule}{widened}"
        )


def stored_number(record: Record, field: str | None = None) -> float:
    """The number ``record`` holds (with ``field``: that entry of an object value, DCM's ``test_accuracy``)."""
    expected = record.value
    if field is not None:
        if not isinstance(expected, dict) or field not in expected:
            raise BaselineError(f"baseline record {record.keys} has no field {field!r} in its value")
        expected = expected[field]
    if not isinstance(expected, (int, float)) or isinstance(expected, bool):
        raise BaselineError(f"baseline record {record.keys} holds {type(expected).__name__}, not a number")
    return float(expected)


def judge(
    measured: float,
    record: Record,
    n: int | None = None,
    seed: int | None = None,
    field: str | None = None,
    design_effect: float = 1.0,
    n_clusters: int | None = None,
    std: float | None = None,
    dtype: str | None = None,
    per_context: float | None = None,
) -> Judgement:
    """``measured`` against the stored ``record``: on the record's own examples (:func:`own_examples`) its
    same-sample bound, widened for another ``dtype`` (:func:`precision_factor`); on another sample its bound
    rescaled (:func:`tolerance_for`) and widened for prompts that share contexts (:func:`widened`).

    ``field``: compare with that entry of a record whose value is an object (DCM: ``test_accuracy``).
    ``design_effect``: the measured variance of the accuracy over its binomial variance when prompts come in
    blocks that share a context (:func:`mechbench.stats.design_effect`); a binomial tolerance is widened by it
    where it is larger than 1, except on the record's own examples. ``n_clusters``: the contexts that estimate
    rests on; few of them make it uncertain, and the bound takes Student's t for z
    (:func:`mechbench.stats.few_clusters_factor`).

    Where the tolerance comes out too wide for the unit (:func:`too_wide`), the judgement is inconclusive and
    carries ``needs``: the fewest examples at which the same rule's bound is narrow enough (:func:`smallest_size`:
    on another sample than the record's, the design effect as measured, ``per_context`` examples to a context, by
    default as many as measured)."""
    expected = stored_number(record, field)

    def bound(size: int | None, same: bool) -> tuple[float, float]:
        """The tolerance on ``size`` examples (on the record's own, where ``same``), and the contexts' widening."""
        if same:
            return tolerance_for(record, size, seed, expected, std, dtype), 1.0
        return widened(record, size, expected, std, dtype, design_effect, contexts_at(size, n, n_clusters, per_context))

    same = own_examples(record, n, seed)
    tolerance, widen = bound(n, same)
    precision = precision_factor(n, dtype, record.dtype) if same else 1.0
    unit = record.unit_of(field)
    needs = None
    if n and too_wide(tolerance, unit, expected):  # the fewest examples (another sample) where the rule means something
        needs = smallest_size(lambda size: bound(size, False)[0], tolerance_limit(unit, expected), n)
    return Judgement(float(measured), expected, tolerance, record, widen, precision, unit, n, needs)


def judge_derived(
    measured: float,
    expected: float,
    bound: Tolerance,
    records: Sequence[Record],
    n: int,
    seed: int | None,
    dtype: str | None = None,
    source: str = "derived from stored records",
    bound_at: Callable[[int], Tolerance] | None = None,
    unit: str = "fraction",
) -> Judgement:
    """``measured`` against ``expected``, a number derived from the stored ``records`` rather than stored itself
    (minimality's group drop: the mean of its heads' stored drops), within ``bound`` (the rule's bound on ``n``
    examples, with its same-sample bound). On the records' own examples (every one on ``n`` examples drawn with
    ``seed``) the same-sample bound applies, widened for another ``dtype`` than the records' (the widest of their
    :func:`precision_factor`); else the bound as it is. ``bound_at(m)``: the same rule's bound on ``m`` examples
    (:func:`resampled_at`), from which an inconclusive judgement names the fewest examples it needs (on the same
    kind of sample as measured: the records' own examples when they are, with the same precision factor)."""
    if not records:
        raise ValueError("a derived number needs the stored records it is derived from")
    same = all(r.get("n") == n and r.get("seed") == seed for r in records)
    factors = [precision_factor(n, dtype, r.dtype) for r in records]
    precision = max(factors) if same else 1.0

    def allowed(b: Tolerance) -> float:
        return b.same_sample * precision if same else b.value

    tolerance = allowed(bound)
    needs = None
    if n and bound_at is not None and too_wide(tolerance, unit, expected):
        needs = smallest_size(lambda m: allowed(bound_at(m)), tolerance_limit(unit, expected), n)
    rule = "the same examples as the stored records: the rule's same-sample bound" if same else bound.rule
    dtype_of = records[factors.index(max(factors))].dtype
    return Judgement(
        float(measured),
        float(expected),
        tolerance,
        None,
        1.0,
        precision,
        unit,
        n,
        needs,
        source=source,
        rule=rule,
        baseline_dtype=dtype_of,
    )
