"""Checking a measured number against its stored baseline, recording it, or updating the baseline.

A claim's measurement calls it (through :meth:`mechbench.claims.run.Run.check`) after computing a number from the
model; it looks the claim's record up in ``baselines/<claim>.json``, judges the measurement within the record's
tolerance (:func:`mechbench.claims.tolerance.judge`; a number derived from several records, such as minimality's
group drop, :func:`mechbench.claims.tolerance.judge_derived`), appends it to the results file, and with
``update=True`` stores the measurement instead (for models mechbench measures, never over a published number).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import mechbench.claims.tolerance as rules
from mechbench import baselines
from mechbench.claims.registry import CLAIMS
from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import Judgement, Tolerance
from mechbench.results import ResultsWriter, git_state

#: The paper's boxes per context. A measurement at another number K of boxes (--boxes K) gains the key ``boxes: K``
#: (:func:`with_boxes`): its baselines are records of their own, and every record at 7 boxes keeps the keys it has.
PAPER_BOXES = 7


def with_boxes(keys: dict, boxes: int = PAPER_BOXES) -> dict:
    """``keys`` of a measurement on prompts of ``boxes`` boxes: with ``boxes`` besides where it is not the paper's 7."""
    return dict(keys) if boxes == PAPER_BOXES else {**keys, "boxes": boxes}


@dataclass
class ClaimOutcome:
    claim: str
    keys: dict
    measured: float
    judgement: Judgement | None = None
    diff: str | None = None  # set when the baseline was updated
    missing: str | None = None  # set when no baseline record exists
    note: str = ""

    @property
    def passed(self) -> bool | None:
        """True within tolerance, False outside it; None when nothing was judged: no record, an update, or a
        tolerance too wide to mean anything on this sample (:attr:`inconclusive`)."""
        return None if self.judgement is None else self.judgement.passed

    @property
    def inconclusive(self) -> str | None:
        """Why the comparison judged nothing, with the sample size it needs (see
        :attr:`mechbench.claims.tolerance.Judgement.inconclusive`)."""
        return None if self.judgement is None else self.judgement.inconclusive

    def message(self) -> str:
        keys = ", ".join(f"{k}={v}" for k, v in self.keys.items())
        if self.diff:
            return f"{self.claim} [{keys}] baseline updated: {self.diff}"
        if self.missing:
            return f"{self.claim} [{keys}] measured {self.measured:.4f}; {self.missing}"
        if self.inconclusive:
            return f"{self.claim} [{keys}] {self.inconclusive}: {self.judgement}{self.note}"
        return f"{self.claim} [{keys}] {self.judgement}{self.note}"


def _sample_of(spec: Claim | None, n: int | None, limit: int | None, needs: int) -> tuple[str, int | None]:
    """What ``n`` counts in ``spec`` (the sample whose size under ``--limit limit`` is n: "prompts", "test_pairs")
    and the smallest --limit that makes it ``needs``; ("examples", None) where no sample of the spec has size n."""
    for name, _ in spec.sizes if spec is not None else ():
        if spec.size(name, limit) == n:
            main = spec.sizes[0][1]
            scaled = next(
                L
                for L in range(max(1, needs * main // dict(spec.sizes)[name] - 2), needs * main + 2)
                if spec.size(name, L) >= needs
            )
            return name.replace("_", " "), scaled
    return "examples", None


def check_claim(
    claim: str | Claim,
    keys: dict,
    measured: float,
    *,
    n: int | None = None,
    seed: int | None = None,
    baselines_dir=None,
    update: bool = False,
    fingerprint: dict | None = None,
    results: ResultsWriter | None = None,
    tolerance=None,
    tolerance_same_sample: float | None = None,
    tolerance_rule: str | None = None,
    field: str | None = None,
    stored_value=None,
    std: float | None = None,
    lookup_keys: dict | None = None,
    baseline_model: str | None = None,
    staging: baselines.Staging | None = None,
    force: bool = False,
    design_effect: float = 1.0,
    n_clusters: int | None = None,
    per_context: float | None = None,
    limit: int | None = None,
    expected: float | None = None,
    derived_from: Sequence[baselines.Record] = (),
    expected_source: str | None = None,
    bound_at: Callable[[int], Tolerance] | None = None,
    note: str = "",
    detail: dict | None = None,
    interval: tuple[float, float] | None = None,
    shared_se: float | None = None,
) -> ClaimOutcome:
    """Compare ``measured`` with the baseline record ``keys`` of ``claim`` (or store it with ``update``).

    ``tolerance`` (a :class:`mechbench.claims.tolerance.Tolerance`, or a number with ``tolerance_same_sample`` and
    ``tolerance_rule``) is written with an updated record. With
    ``field``, ``measured`` is compared with that entry of an object-valued record, and an update stores
    ``stored_value`` (the whole object, e.g. a DCM run's heads and accuracy). ``std``: the spread behind a
    mean over draws, stored with the record. ``lookup_keys``: the record to compare with when it is another
    model's (``baseline_model``); the results line keeps ``keys``, the measured model's own. ``staging``: hold an
    update until the run ends (:class:`mechbench.baselines.Staging`); ``force``: store even a record that
    :func:`mechbench.baselines.degradations` finds worse than the one it replaces. ``design_effect``: widens a
    binomial tolerance for prompts that share a context, and ``n_clusters`` (how many contexts) for the uncertainty of
    that estimate (:func:`mechbench.claims.tolerance.judge`), ``per_context`` (examples to a context) for the contexts
    of a larger sample. A comparison whose tolerance is too wide for the sample is inconclusive (``passed`` None, in
    the results file too) and names the size it needs in the claim's sample and in ``limit`` (the run's --limit).

    ``expected``: the stored number to compare with where no record holds it, one derived from the stored records
    ``derived_from`` (minimality's group drop, the mean of its heads' stored drops; described by ``expected_source``):
    no record is looked up and nothing is stored; ``tolerance`` is then the rule's :class:`Tolerance` on ``n``
    examples, judged by :func:`mechbench.claims.tolerance.judge_derived` (its same-sample bound where every record
    is on these examples), and ``bound_at(m)`` the same rule's on ``m``, for the size an inconclusive check needs.
    ``note``: words appended to the outcome's message (what the number is, its interval). ``detail``: what a figure
    of the report draws beside the number (path patching's score grid), kept in the results file only.
    ``interval``: the number's own 95% interval where the claim computed one (minimality's percentile interval over
    resampled contexts), in place of the one its tolerance rule gives. ``shared_se``: for a mean over draws on the
    same prompts, the sampling error the draws share, which the interval adds to their spread (the tolerance, a
    comparison on the same prompts, does not).

    The results line carries the measured number's own 95% interval (``lo``, ``hi``) where the tolerance rule knows
    its uncertainty (:class:`mechbench.claims.tolerance.Tolerance`: a binomial on n examples over the design effect,
    a mean over draws, a resampled standard error; :func:`mechbench.stats.measurement_interval`).
    """
    if interval is None:  # the claim's own interval where it gives one (a percentile interval), else the rule's
        if shared_se is not None and isinstance(tolerance, Tolerance):
            tolerance = replace(tolerance, shared_se=shared_se)
        interval = _interval(measured, n, tolerance, design_effect)
    if expected is not None:
        return _check_derived(
            claim,
            keys,
            measured,
            expected,
            derived_from,
            expected_source,
            tolerance,
            bound_at,
            n=n,
            seed=seed,
            update=update,
            fingerprint=fingerprint,
            results=results,
            limit=limit,
            note=note,
            interval=interval,
            detail=detail,
        )
    if isinstance(tolerance, Tolerance):  # a rule of mechbench.claims.tolerance: its bound, same-sample bound, words
        tolerance, tolerance_same_sample, tolerance_rule = (tolerance.value, tolerance.same_sample, tolerance.rule)
    if update and lookup_keys is not None:
        raise ValueError("a measurement checked against another model's baseline is never stored as one")
    spec = claim if isinstance(claim, Claim) else CLAIMS.get(claim)  # a spec, or a registered claim's name
    claim = getattr(claim, "name", claim)
    if spec is not None:
        spec.check_keys(keys)
    # a registered claim with no baseline file yet gets an empty one: the claim skips offering to store its
    # measurement, and --update-baselines writes the file
    new = (spec.description, spec.unit) if spec is not None else None
    baseline = staging.load(claim, baselines_dir, new) if staging else baselines.load(claim, baselines_dir, new)
    record = baseline.find(**(lookup_keys or keys))
    outcome = ClaimOutcome(claim, dict(keys), float(measured), note=note)
    if update and record is not None and not record.measured:
        update = False  # a published number is never replaced: compare with it, and say it was kept
        outcome.note += " (published record left unchanged by --update-baselines)"
    if update:
        commit = git_state().get("commit")
        outcome.diff = (staging.update if staging else baselines.update)(
            baseline,
            keys,
            stored_value if stored_value is not None else round(float(measured), 6),
            source=f"measured by mechbench at commit {commit[:12] if commit else 'unknown'}",
            n=n,
            seed=seed,
            tolerance=tolerance,
            tolerance_same_sample=tolerance_same_sample,
            tolerance_rule=tolerance_rule,
            fingerprint=(fingerprint or {}).get("weights_sha256"),
            dtype=(fingerprint or {}).get("dtype"),
            std=None if std is None else round(float(std), 6),
            force=force,
        )
    elif record is None:
        where = (
            f"in {baseline.path}"
            if baseline.path.exists()
            else f"({baseline.path} does not exist yet: the claim has never been stored)"
        )
        outcome.missing = (
            f"no baseline record {where} for {lookup_keys or keys}; run with "
            f"--update-baselines to store this measurement as the baseline"
        )
    else:
        outcome.judgement = rules.judge(
            measured,
            record,
            n=n,
            seed=seed,
            field=field,
            design_effect=design_effect,
            n_clusters=n_clusters,
            std=std,
            dtype=(fingerprint or {}).get("dtype"),
            per_context=per_context,
        )
        _name_the_sample(outcome.judgement, spec, n, limit)
        if baseline_model:
            outcome.note += f" (checked against {baseline_model}'s baseline)"
        recorded = record.get("fingerprint")
        if recorded and fingerprint and recorded != fingerprint.get("weights_sha256"):
            outcome.note += (
                f" (the baseline was measured on weights {recorded[:12]}, these are "
                f"{fingerprint['weights_sha256'][:12]})"
            )
    _write(
        results,
        outcome,
        interval,
        detail,
        field=field,
        std=std,
        n=n,
        seed=seed,
        fingerprint=fingerprint,
        **({"baseline_model": baseline_model} if baseline_model else {}),
    )
    return outcome


def _name_the_sample(judgement: Judgement, spec: Claim | None, n: int | None, limit: int | None) -> None:
    """An inconclusive judgement's sample, in the claim's words, and the --limit that gives the size it needs."""
    if judgement.needs is not None:
        judgement.sample, judgement.needs_limit = _sample_of(spec, n, limit, judgement.needs)


def _interval(measured, n, tolerance, design_effect: float) -> tuple[float, float] | None:
    from mechbench.stats import measurement_interval

    if not isinstance(tolerance, Tolerance):
        return None
    return measurement_interval(
        float(measured),
        n,
        std=tolerance.std,
        draws=tolerance.draws,
        shared_se=tolerance.shared_se,
        se=tolerance.se,
        dof=tolerance.dof,
        design_effect=design_effect,
        proportion=tolerance.proportion,
    )


def _write(
    results: ResultsWriter | None,
    outcome: ClaimOutcome,
    interval: tuple[float, float] | None = None,
    detail: dict | None = None,
    **details,
) -> None:
    """The outcome's line in the results file: the measurement, its 95% interval, the stored number, the tolerance,
    the verdict (and what a figure draws beside it, ``detail``)."""
    if results is None:
        return
    judged = outcome.judgement
    if interval is not None:
        details.update(lo=round(float(interval[0]), 6), hi=round(float(interval[1]), 6))
    results.write(
        outcome.claim,
        outcome.keys,
        outcome.measured,
        **details,
        **(detail or {}),
        baseline=None if judged is None else judged.expected,
        tolerance=None if judged is None else judged.tolerance,
        passed=outcome.passed,
        updated=outcome.diff,
        **({"inconclusive": outcome.inconclusive} if outcome.inconclusive else {}),
    )


def _check_derived(
    claim,
    keys: dict,
    measured: float,
    expected: float,
    records,
    source: str | None,
    bound,
    bound_at,
    *,
    n,
    seed,
    update,
    fingerprint,
    results,
    limit,
    note,
    interval=None,
    detail=None,
) -> ClaimOutcome:
    """:func:`check_claim` of a number compared with one derived from stored records (``expected``): judged by
    :func:`mechbench.claims.tolerance.judge_derived`, recorded; never stored, since no record holds it."""
    if update:
        raise ValueError("a number derived from stored records is never stored itself: store the records it comes from")
    if not isinstance(bound, Tolerance):
        raise TypeError(
            "a derived number is judged by a rule of mechbench.claims.tolerance (a Tolerance), with its "
            "same-sample bound"
        )
    spec = claim if isinstance(claim, Claim) else CLAIMS.get(claim)
    claim = getattr(claim, "name", claim)
    if spec is not None:
        spec.check_keys(keys)
    outcome = ClaimOutcome(claim, dict(keys), float(measured), note=note)
    outcome.judgement = rules.judge_derived(
        measured,
        expected,
        bound,
        list(records),
        n,
        seed,
        dtype=(fingerprint or {}).get("dtype"),
        bound_at=bound_at,
        **({"source": source} if source else {}),
    )
    _name_the_sample(outcome.judgement, spec, n, limit)
    _write(results, outcome, interval, detail, n=n, seed=seed, fingerprint=fingerprint)
    return outcome
