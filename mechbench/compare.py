"""Comparison mode: a fine-tune beside its base, claim by claim, and a verdict on its mechanism.

A researcher with a new fine-tune asks *did my fine-tune change the mechanism?*. Its own numbers have no
stored baseline to be checked against, so every claim is measured on the fine-tune **and on its base, on the
same prompts**, and reported side by side: the base's number, the fine-tune's, the difference (or the
claim's own comparative measure) with a 95% interval from resampling whole contexts (mechbench.stats), and
the stored numbers of the reference fine-tunes (toy-goat/toy-float for the toy zoo, goat7b/float7b's
published numbers for the 7B models).

Each claim's comparison is in its own module (``@CLAIM.comparison`` in mechbench/claims/specs/<claim>.py), with
measures chosen so that models of different accuracy compare (the paper's framing, section 8): knockout curves
relative to the model's clean accuracy, CMAP as the share of the gain the patched heads carry, minimality with the
claim's selection-aware estimator. :data:`CLAIMS` is a view of the registry. This module holds what they share:
the lanes, :class:`Row` and :class:`Check`, :class:`Comparison` (the two models, their shared pieces, the base's
side measured once) and the verdict's thresholds and rules.

:data:`VERDICT_RULES` turns these into one verdict per fine-tune. ``Lane`` sets the sample sizes: ``FULL`` is
the paper's, ``QUICK`` a two-minute look at a toy fine-tune whose intervals widen with the smaller samples.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechbench import baselines
from mechbench.circuits import Circuit
from mechbench.claims import get
from mechbench.errors import MechbenchError
from mechbench.models.loading import tokenizer_difference
from mechbench.models.registry import REGISTRY
from mechbench.stats import Estimate, chance_check, cluster_bootstrap


@dataclass(frozen=True)
class Lane:
    """Sample sizes of one comparison run."""

    name: str
    n_examples: int  # prompts per claim (faithfulness, completeness, knockout)
    verdict_examples: int  # prompts of the two claims the verdict weighs most: accuracy and CMAP
    n_random: int  # random circuits behind the random baseline
    completeness_draws: int  # random draws of K
    dcm_split: tuple[int, int, int]  # DCM train / validation / test pairs
    dcm_all_desiderata: bool  # False: only the desideratum each group carries best in the base
    patching_pairs: int  # DCM heads patched: pairs per run
    patching_runs: int
    discovery_pairs: int  # path patching noise pairs
    minimality_examples: int
    minimality_heads: int | None  # candidates per group (its first, most important heads); None: all
    n_boot: int  # bootstrap resamples


def _full_lane() -> Lane:
    """The claims' own sample sizes and repeats (mechbench.claims), the paper's."""
    accuracy, faithfulness, dcm, patching = get("accuracy"), get("faithfulness"), get("dcm"), get("dcm_patching")
    return Lane(
        "full",
        faithfulness.size("prompts"),
        accuracy.size("prompts"),
        faithfulness.repeat("random_circuits"),
        get("completeness").repeat("draws_of_k"),
        tuple(dcm.size(s) for s in ("train_pairs", "validation_pairs", "test_pairs")),
        True,
        patching.size("pairs"),
        patching.repeat("runs"),
        get("path_patching").size("pairs"),
        get("minimality").size("prompts"),
        None,
        2000,
    )


FULL = _full_lane()
# The quick lane keeps 500 prompts for accuracy and CMAP (cheap, and the share of the gain is a ratio of
# differences: at 140 prompts its interval spans about +-0.4, too wide to tell 0.5 from 0.7).
QUICK = Lane("quick", 140, 500, 5, 5, (200, 100, 140), False, 140, 3, 100, 70, 5, 1000)
LANES = {"full": FULL, "quick": QUICK}

#: Reference fine-tunes shown beside a comparison, by the base they were tuned from (the specs marked ``reference``).
REFERENCES = {
    base: tuple(s.name for s in REGISTRY.values() if s.reference and s.base == base)
    for base in dict.fromkeys(s.base for s in REGISTRY.values() if s.reference)
}

#: Thresholds of the checks and the verdict, each with its reason (docs/comparison.md, "The verdict").
SHARE_LARGELY = 0.5  # "largely through the circuit": the circuit's heads carry at least half the gain
ROUTE_MARGIN = 0.3  # a knockout point whose normalised accuracy moved by more than this (interval and all)
FAITHFULNESS_KEPT = 0.5  # the circuit keeps at least half the faithfulness it has in the base
INCOMPLETENESS_MARGIN = 0.10  # the paper's Llama incompleteness itself (0.10 +- 0.06)
CARRIED = 0.10  # a group "carries" a desideratum in the base when patching it reaches 10% of the targets


def carried_rows(rows: list) -> list:
    """DCM patching's rows the verdict weighs: a group on a desideratum it carries in the base (>= CARRIED)."""
    return [r for r in rows if r.base is not None and r.base >= 100 * CARRIED]


def largest_move(rows: list):
    """The row whose estimate lies furthest from 0 (a knockout point's move relative to clean accuracy: what the
    verdict's ROUTE_MARGIN is held against), or None where no row has a finite one."""
    finite = [r for r in rows if r.estimate.value is not None and math.isfinite(r.estimate.value)]
    return max(finite, key=lambda r: abs(r.estimate.value), default=None)


@dataclass
class Row:
    """One compared number."""

    claim: str
    measure: str
    keys: dict
    base: float | None  # the base model's value of the measure
    fine_tune: float | None  # the fine-tune's
    estimate: Estimate  # the compared quantity (see ``statistic``) with its 95% interval
    statistic: str = "difference"  # "difference" (fine-tune - base) or "share of gain"
    references: dict = field(default_factory=dict)  # reference fine-tune -> its stored value of ``fine_tune``
    note: str = ""


@dataclass
class Check:
    """A qualitative statement of the claim, evaluated on the fine-tune (``passed`` None: does not apply)."""

    claim: str
    name: str
    passed: bool | None
    message: str
    value: float | None = None


@dataclass
class ClaimComparison:
    claim: str
    rows: list[Row]
    checks: list[Check]
    seconds: float = 0.0
    error: str | None = None  # why the claim could not run (its rows and checks are then empty)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]


@dataclass(frozen=True)
class Verdict:
    label: str
    reasons: tuple[str, ...]

    @property
    def same_mechanism(self) -> bool:
        return self.label in SAME_MECHANISM


VERDICT_CLAIMS = ("accuracy", "faithfulness", "attention_knockout", "dcm_patching", "cmap")
SAME_MECHANISM = ("same circuit, strengthened", "no gain, same circuit")
VERDICT_RULES = (
    (
        "does not do the task",
        "the fine-tune's accuracy is not above chance (1/boxes) by 3 cluster-robust SEs: there "
        "is no mechanism to compare",
    ),
    (
        "circuit damaged",
        "the base circuit no longer carries the task in the fine-tune: it does not beat random "
        f"circuits, or it keeps less than {FAITHFULNESS_KEPT:g} of its faithfulness in the base, "
        f"or an attention edge's knockout curve (relative to clean accuracy) moved by more than "
        f"{ROUTE_MARGIN:g} at some layer, interval and all, or a group's DCM heads move the prediction "
        f"to a target they move in the base (>= {100 * CARRIED:g}%) significantly less often; or "
        f"accuracy fell and the fine-tune's circuit heads, patched into the base, carry at least "
        f"{SHARE_LARGELY:g} of the loss",
    ),
    (
        "same circuit, weakened",
        "accuracy fell (the interval of the difference lies below 0) but the circuit's heads "
        f"carry less than {SHARE_LARGELY:g} of the loss: it happened outside the circuit",
    ),
    (
        "no gain, same circuit",
        "the circuit is intact and the accuracy difference's interval contains 0 (the paper's Vicuna)",
    ),
    (
        "same circuit, strengthened",
        f"accuracy rose and the circuit's heads, patched into the base, carry at least "
        f"{SHARE_LARGELY:g} of the gain (the paper's Goat and FLoat)",
    ),
    (
        "gain largely outside the circuit",
        f"accuracy rose but the circuit's heads carry less than {SHARE_LARGELY:g} of the gain",
    ),
)


_BASE_SIDE: dict = {}  # (base, weights, circuit, lane, seed, baselines) -> the base's side of measurements


def as_array(x) -> np.ndarray:
    """A tensor or array of per-prompt values as a float64 numpy array (the bootstrap's input)."""
    return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


class Comparison:
    """The fine-tune ``fine_tune`` (a ModelHandle) against ``base`` on the base's ``circuit``.

    Each claim is computed once on demand (:meth:`claim`), the pieces both models share (datasets, ablation
    means, clean correctness) once per run. ``log`` (a callable) hears progress. ``circuit`` None: none was found
    (``no_circuit`` says why, with the advice); the claims that need one are reported as not run. ``boxes``: boxes per context of
    every prompt it builds (--boxes; chance is 1/boxes), and the stored numbers shown beside it are those measured
    at as many boxes.
    """

    def __init__(
        self,
        fine_tune,
        base,
        circuit: Circuit | None,
        lane: Lane = FULL,
        seed: int = 0,
        baselines_dir=None,
        references: tuple[str, ...] | None = None,
        log: Callable | None = None,
        discovery_cache=None,
        *,
        boxes: int = 7,
        no_circuit: str | None = None,
    ):
        if fine_tune.name == base.name:
            raise MechbenchError(f"comparison needs two models; {fine_tune.name!r} was given as its own base")
        if circuit is not None:
            circuit.check_fits(base.shape.n_layers, base.shape.n_heads)
        if (fine_tune.shape.n_layers, fine_tune.shape.n_heads) != (base.shape.n_layers, base.shape.n_heads):
            raise MechbenchError(
                f"{fine_tune.name!r} ({fine_tune.shape.n_layers} layers x {fine_tune.shape.n_heads} heads) and its base "
                f"{base.name!r} ({base.shape.n_layers} x {base.shape.n_heads}) differ in shape: a fine-tune keeps its "
                f"base's heads. Pass the model it was tuned from as --base-model."
            )
        different = tokenizer_difference(fine_tune.tokenizer, base.tokenizer)
        if different:  # both are measured on the base's token ids: the fine-tune's own would be other words
            raise MechbenchError(
                f"{fine_tune.name!r} and its base {base.name!r} do not share a tokenizer: {different}. A comparison "
                f"measures both on one set of token ids; compare it with the model whose tokenizer it kept, or check "
                f"it against stored baselines instead (--baseline-model)"
            )
        self.fine_tune, self.base, self.lane, self.seed = fine_tune, base, lane, seed
        self._circuit, self.no_circuit = circuit, no_circuit
        self.baselines_dir, self.discovery_cache, self.boxes = baselines_dir, discovery_cache, boxes
        # the base's own stored numbers come first: the same-run measurement should agree with them
        refs = tuple(references) if references is not None else REFERENCES.get(base.name, ())
        if references is not None:  # a reference the user named must have stored numbers to show
            from mechbench import baselines as _baselines

            known = {r.keys.get("model") for r in _baselines.load("accuracy", baselines_dir).records}
            unknown = [r for r in refs if r not in known]
            if unknown:
                raise MechbenchError(
                    f"--reference {', '.join(unknown)}: no stored numbers for it in the baselines "
                    f"(accuracy.json knows {', '.join(sorted(k for k in known if k))}); a reference "
                    f"is a fine-tune whose baselines are stored"
                )
        self.references = tuple(dict.fromkeys((base.name,) + refs))
        self.log = log or (lambda msg: None)
        self._claims: dict[str, ClaimComparison] = {}
        self._cache: dict = {}
        # the base's side of every measurement is shared by all comparisons against the same base, circuit,
        # lane and seed in this process (several fine-tunes of one base measure the base once)
        self._base_cache = _BASE_SIDE.setdefault(
            (
                base.name,
                base.fingerprint.get("weights_sha256"),
                json.dumps(circuit.to_json()) if circuit is not None else None,
                lane,
                seed,
                str(baselines_dir),
                boxes,
            ),
            {},
        )

    # --- shared pieces --------------------------------------------------------------------------------------

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def side(self, who: str, key, make):
        """``make()`` for one model's side of a measurement, computed once (the base's once per base)."""
        cache = self._base_cache if who == "base" else self._cache
        if key not in cache:
            cache[key] = make()
        return cache[key]

    @property
    def models(self):
        return {"base": self.base, "fine_tune": self.fine_tune}

    def dataset(self, n: int | None = None, seed_offset: int = 0):
        from mechbench.data.dataset import build_dataset

        n = n or self.lane.n_examples
        return self._once(
            ("dataset", n, seed_offset),
            lambda: build_dataset(
                self.base.tokenizer, n_examples=n, num_boxes=self.boxes, seed=self.seed + seed_offset
            ),
        )

    def means(self, who: str):
        from mechbench.data.counterfactuals import ablation_prompts
        from mechbench.methods.ablation import position_means

        return self.side(
            who,
            "means",
            lambda: position_means(
                self.models[who].model,
                ablation_prompts(
                    self.models[who].tokenizer, self.lane.n_examples, num_boxes=self.boxes, seed=self.seed
                ),
            ),
        )

    def correct(self, who: str, n: int | None = None):
        from mechbench.evaluate import correct_on

        n = n or self.lane.n_examples
        return self.side(who, ("correct", n), lambda: correct_on(self.models[who], self.dataset(n)))

    def clusters(self, n: int | None = None):
        return self.dataset(n).clusters().numpy()

    def boot(self, statistic, quantities, clusters=None, level: float = 0.95) -> Estimate:
        return cluster_bootstrap(
            statistic,
            {k: as_array(v) for k, v in quantities.items()},
            self.clusters() if clusters is None else clusters,
            self.lane.n_boot,
            self.seed,
            level,
        )

    def diff(self, base_values, ft_values, clusters=None, level: float = 0.95) -> Estimate:
        return self.boot(lambda m: m["f"] - m["b"], {"b": base_values, "f": ft_values}, clusters, level)

    def stored_records(self, claim: str) -> list:
        """The stored records of ``claim`` in this comparison's baselines measured at its boxes (none where its
        file is missing or unreadable: a comparison shows stored numbers beside its own, it does not depend on
        them). A record without ``boxes`` is at the paper's 7."""
        try:
            records = baselines.load(claim, self.baselines_dir).records
        except MechbenchError:
            return []
        return [r for r in records if r.keys.get("boxes", 7) == self.boxes]

    def stored(self, claim: str, field_name: str | None = None, **keys):
        """A reference model's stored value for ``keys`` (a subset of the record's keys), or None."""
        for r in self.stored_records(claim):
            if all(r.keys.get(k) == v for k, v in keys.items()):
                value = r.value.get(field_name) if field_name and isinstance(r.value, dict) else r.value
                return value if isinstance(value, (int, float)) else None
        return None

    def refs(self, fn: Callable[[str], float | None]) -> dict:
        return {ref: fn(ref) for ref in self.references}

    def stored_accuracy(self, model: str):
        return self.stored("accuracy", model=model)

    # --- claims ---------------------------------------------------------------------------------------------

    @property
    def circuit(self) -> Circuit:
        """The base's circuit; a claim that needs one where none was found cannot run (:attr:`no_circuit` says
        why), while the others (accuracy) do."""
        if self._circuit is None:
            raise MechbenchError(f"no circuit to evaluate: {self.no_circuit or 'none was given'}")
        return self._circuit

    @property
    def circuit_name(self) -> str | None:
        return self._circuit.name if self._circuit is not None else None

    def claim(self, name: str) -> ClaimComparison:
        if name not in CLAIMS:
            why = without_comparison().get(name)
            raise MechbenchError(
                f"claim {name!r} has no comparison mode: {why}"
                if why
                else f"unknown claim {name!r}; known: {', '.join(CLAIMS)}"
            )
        if name not in self._claims:
            start = time.perf_counter()
            self.log(f"{self.fine_tune.name} vs {self.base.name}: {name} ...")
            try:
                rows, checks = CLAIMS[name](self)
                if get(name).needs_working_model:  # the chance guard, as the claim's spec says
                    checks = self.task_checks() + checks
                result = ClaimComparison(name, rows, checks, time.perf_counter() - start)
            except (MechbenchError, torch.OutOfMemoryError) as e:
                # a claim that cannot run (no circuit, no stored DCM heads, out of memory) is reported as such
                # and the others still run: a comparison never loses the claims that finished
                if isinstance(e, torch.OutOfMemoryError):
                    import gc

                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                why = str(e).splitlines()[0] if isinstance(e, torch.OutOfMemoryError) else str(e)
                result = ClaimComparison(name, [], [], time.perf_counter() - start, error=why)
            self._claims[name] = result
            self.log(
                f"{self.fine_tune.name} vs {self.base.name}: {name} "
                + (f"could not run: {result.error}" if result.error else f"done in {result.seconds:.1f} s")
            )
        return self._claims[name]

    def claim_result(self, name: str) -> ClaimComparison | None:
        """The claim's comparison where this run computed it (and it ran), else None: what a report draws."""
        result = self._claims.get(name)
        return result if result is not None and result.error is None else None

    def restore(self, result: ClaimComparison) -> None:
        """A claim's comparison measured earlier (a trajectory's stored record): :meth:`claim` returns it, and the
        verdict reads it, instead of measuring it again."""
        self._claims[result.claim] = result

    def all_claims(self) -> list[ClaimComparison]:
        return [self.claim(name) for name in CLAIMS]

    def task_checks(self, n: int | None = None) -> list[Check]:
        """The chance guard on both models (a circuit claim on a model at chance asserts nothing)."""
        out = []
        for who, handle in self.models.items():
            c = chance_check(self.correct(who, n).numpy(), self.clusters(n), self.dataset(n).num_boxes)
            out.append(Check("accuracy", f"{who} does the task", c.passed, c.message(handle.name), c.accuracy))
        return out

    def verdict_ready(self) -> bool:
        return all(name in self._claims and self._claims[name].error is None for name in VERDICT_CLAIMS)

    def not_run(self) -> dict[str, str]:
        """The claims asked for that could not run, with the reason."""
        return {name: r.error for name, r in self._claims.items() if r.error is not None}

    def verdict(self) -> Verdict:
        """The first of :data:`VERDICT_RULES` that applies (computes the claims it needs)."""
        acc, faith, ko, patching, cmap = (self.claim(c) for c in VERDICT_CLAIMS)
        task = {c.name: c for c in acc.checks}
        if task["fine_tune does the task"].passed is False:
            return Verdict("does not do the task", (task["fine_tune does the task"].message,))
        if task["base does the task"].passed is False:
            return Verdict(
                "does not do the task",
                ("the base itself " + task["base does the task"].message + ": pass a base that does the task",),
            )
        damaged = [
            c.message
            for c in faith.checks + ko.checks + patching.checks
            if c.passed is False and not c.name.endswith("does the task")
        ]
        ratio = next(r for r in faith.rows if r.measure == "faithfulness (circuit / full)")
        if (
            ratio.base
            and ratio.fine_tune is not None
            and ratio.base > 0
            and ratio.fine_tune < FAITHFULNESS_KEPT * ratio.base
        ):
            damaged.append(
                f"faithfulness {ratio.fine_tune:.2f} is below {FAITHFULNESS_KEPT:g} x the base's {ratio.base:.2f}"
            )
        if damaged:
            return Verdict("circuit damaged", tuple(damaged))
        gain = acc.rows[0].estimate
        if gain.lo is not None and gain.lo <= 0 <= gain.hi:
            return Verdict("no gain, same circuit", (f"accuracy difference {gain:+.3f} contains 0",))
        share = next(r for r in cmap.rows if r.keys.get("group") == "full_circuit").estimate
        change = "gain" if gain.value > 0 else "loss"
        reason = (
            f"accuracy difference {gain:+.3f}; the fine-tune's circuit heads patched into the base carry a share "
            f"{share:.2f} of the {change}"
            + (
                f" (its interval straddles {SHARE_LARGELY:g}: weak evidence)"
                if share.lo is not None and share.lo < SHARE_LARGELY < share.hi
                else ""
            )
        )
        through_circuit = share.value >= SHARE_LARGELY
        if change == "loss":
            return Verdict("circuit damaged" if through_circuit else "same circuit, weakened", (reason,))
        return Verdict(
            "same circuit, strengthened" if through_circuit else "gain largely outside the circuit", (reason,)
        )


class _ComparedClaims(Mapping):
    """Comparison mode's claims: a live view of the registry (mechbench.claims.CLAIMS), each registered claim whose
    spec registers a comparison (``@CLAIM.comparison``), in the registry's order, by name -> its function."""

    def _current(self) -> dict[str, Callable]:
        from mechbench.claims import CLAIMS as REGISTERED

        return {
            name: claim.mode("comparison") for name, claim in REGISTERED.items() if claim.mode("comparison") is not None
        }

    def __getitem__(self, name: str) -> Callable:
        return self._current()[name]

    def __iter__(self):
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


#: claim -> its comparison (the spec's ``@CLAIM.comparison``); the order is the registry's and the report's.
CLAIMS: Mapping[str, Callable[[Comparison], tuple[list[Row], list[Check]]]] = _ComparedClaims()


def without_comparison() -> dict[str, str]:
    """The registered claims that have no comparison mode, each with the reason its spec states."""
    from mechbench.claims import CLAIMS as REGISTERED

    return {name: claim.without("comparison") for name, claim in REGISTERED.items() if claim.mode("comparison") is None}


def base_circuit_name(base: str, baselines_dir=None, fingerprint: str | None = None) -> str:
    """The circuit found on ``base``, stored in ``<baselines_dir>/circuits.json`` under a name the base is known by
    or with its weights fingerprint (:func:`mechbench.circuits.stored_circuit_name`, the one lookup)."""
    from mechbench.circuits import stored_circuit_name

    found = stored_circuit_name(base, baselines_dir, fingerprint)
    if found is None:
        try:
            names = {r.keys.get("circuit") for r in baselines.load("circuits", baselines_dir).records}
        except MechbenchError:
            names = set()
        where = Path(baselines_dir or baselines.DEFAULT_DIR)
        raise MechbenchError(
            f"no circuit stored for the base {base!r} in {where / 'circuits.json'} (known: "
            f"{', '.join(sorted(n for n in names if n)) or 'none'}): discover it and store its baselines with "
            f"`mechbench baseline {base} --baselines-dir {where}`, or pass --circuit NAME or FILE"
        )
    return found


def record(results, comparison: Comparison, result: ClaimComparison) -> None:
    """Write every row and check of ``result`` to the results file, under the fine-tune's own name."""
    if results is None:
        return
    common = {
        "model": comparison.fine_tune.name,
        "base_model": comparison.base.name,
        "circuit": comparison.circuit_name,
        "lane": comparison.lane.name,
        "boxes": comparison.boxes,
    }
    if result.error is not None:
        results.write(
            f"check:{result.claim}",
            {**common, "check": "could not run"},
            None,
            passed=None,
            message=result.error,
            seed=comparison.seed,
            fingerprint=comparison.fine_tune.fingerprint,
        )
    for row in result.rows:
        results.write(
            f"compare:{row.claim}",
            {**common, "measure": row.measure},
            _num(row.estimate.value),
            statistic=row.statistic,
            lo=_num(row.estimate.lo),
            hi=_num(row.estimate.hi),
            base_value=_num(row.base),
            fine_tune_value=_num(row.fine_tune),
            references={k: _num(v) for k, v in row.references.items()},
            note=row.note,
            seed=comparison.seed,
            fingerprint=comparison.fine_tune.fingerprint,
            base_fingerprint=comparison.base.fingerprint.get("weights_sha256"),
        )
    for check in result.checks:
        results.write(
            f"check:{check.claim}",
            {**common, "check": check.name},
            _num(check.value),
            passed=check.passed,
            message=check.message,
            seed=comparison.seed,
            fingerprint=comparison.fine_tune.fingerprint,
        )


def record_verdict(results, comparison: Comparison, verdict: Verdict) -> None:
    if results is not None:
        results.write(
            "verdict",
            {
                "model": comparison.fine_tune.name,
                "base_model": comparison.base.name,
                "circuit": comparison.circuit.name,
                "lane": comparison.lane.name,
                "boxes": comparison.boxes,
            },
            verdict.label,
            passed=verdict.same_mechanism,
            reasons=list(verdict.reasons),
            seed=comparison.seed,
            fingerprint=comparison.fine_tune.fingerprint,
        )


def _num(x):
    return None if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else round(float(x), 6)
