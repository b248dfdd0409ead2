"""Comparison mode: a fine-tune beside its base, claim by claim, and a verdict on its mechanism.

A researcher with a new fine-tune asks *did my fine-tune change the mechanism?*. Its own numbers have no
stored baseline to be checked against, so every claim is measured on the fine-tune **and on its base, on the
same prompts**, and reported side by side: the base's number, the fine-tune's, the difference (or the
claim's own comparative measure) with a 95% interval from resampling whole contexts (mechbench.stats), and
the stored numbers of the reference fine-tunes (toy-goat/toy-float for the toy zoo, goat7b/float7b's
published numbers for the 7B models).

Measures chosen so that models of different accuracy compare (the paper's framing, section 8):

- accuracy: the difference, and a guard that each model does the task (above chance by 3 cluster SEs);
- faithfulness: the base circuit's accuracy with the rest mean-ablated, as a ratio of the model's own
  accuracy; the circuit must beat random circuits of its sizes;
- completeness: incompleteness |F(M\\K) - F(C\\K)| for random K and each whole group;
- attention knockout: accuracy with an edge blocked from each layer on, **relative to the model's clean
  accuracy**, so a more accurate model is not "different" for being more accurate;
- CMAP: the fine-tune's head outputs for the circuit patched into the base, as the **share of the gain**
  they carry, (patched - base) / (fine-tune - base);
- DCM heads patched: the base circuit's DCM heads, percentage points above or below the base;
- DCM: masks trained on the fine-tune for the base circuit's groups, test accuracy against the base's;
- path patching: the base circuit's discovery re-run on the fine-tune: recall of each group's heads and
  the rank correlation of the score grids (selection statistics: no interval);
- minimality: the mean accuracy drop when each circuit head is removed after its most entangled peers.

:data:`VERDICT_RULES` turns these into one verdict per fine-tune. ``Lane`` sets the sample sizes: ``FULL`` is
the paper's, ``QUICK`` a two-minute look at a toy fine-tune whose intervals widen with the smaller samples.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from mechbench import baselines
from mechbench.circuits import Circuit, HeadGroup
from mechbench.claims import derived_seed, get
from mechbench.errors import MechbenchError
from mechbench.models.loading import tokenizer_difference
from mechbench.models.registry import BASE_OF, REGISTRY, base_name_of, discovery_settings, resolve
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
    return Lane("full", faithfulness.size("prompts"), accuracy.size("prompts"), faithfulness.repeat("random_circuits"),
                get("completeness").repeat("draws_of_k"),
                tuple(dcm.size(s) for s in ("train_pairs", "validation_pairs", "test_pairs")), True,
                patching.size("pairs"), patching.repeat("runs"), get("path_patching").size("pairs"),
                get("minimality").size("prompts"), None, 2000)


FULL = _full_lane()
# The quick lane keeps 500 prompts for accuracy and CMAP (cheap, and the share of the gain is a ratio of
# differences: at 140 prompts its interval spans about +-0.4, too wide to tell 0.5 from 0.7).
QUICK = Lane("quick", 140, 500, 5, 5, (200, 100, 140), False, 140, 3, 100, 70, 5, 1000)
LANES = {"full": FULL, "quick": QUICK}

#: Reference fine-tunes shown beside a comparison, by the base they were tuned from (the specs marked ``reference``).
REFERENCES = {base: tuple(s.name for s in REGISTRY.values() if s.reference and s.base == base)
              for base in dict.fromkeys(s.base for s in REGISTRY.values() if s.reference)}

#: Thresholds of the checks and the verdict, each with its reason (README "Comparison verdicts").
SHARE_LARGELY = 0.5  # "largely through the circuit": the circuit's heads carry at least half the gain
ROUTE_MARGIN = 0.3  # a knockout point whose normalised accuracy moved by more than this (interval and all)
FAITHFULNESS_KEPT = 0.5  # the circuit keeps at least half the faithfulness it has in the base
INCOMPLETENESS_MARGIN = 0.10  # the paper's Llama incompleteness itself (0.10 +- 0.06)
CARRIED = 0.10  # a group "carries" a desideratum in the base when patching it reaches 10% of the targets


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
    ("does not do the task", "the fine-tune's accuracy is not above chance (1/boxes) by 3 cluster-robust SEs: there "
                             "is no mechanism to compare"),
    ("circuit damaged", "the base circuit no longer carries the task in the fine-tune: it does not beat random "
                        f"circuits, or it keeps less than {FAITHFULNESS_KEPT:g} of its faithfulness in the base, "
                        f"or an attention edge's knockout curve (relative to clean accuracy) moved by more than "
                        f"{ROUTE_MARGIN:g} at some layer, interval and all, or a group's DCM heads move the prediction "
                        f"to a target they move in the base (>= {100 * CARRIED:g}%) significantly less often; or "
                        f"accuracy fell and the fine-tune's circuit heads, patched into the base, carry at least "
                        f"{SHARE_LARGELY:g} of the loss"),
    ("same circuit, weakened", "accuracy fell (the interval of the difference lies below 0) but the circuit's heads "
                               f"carry less than {SHARE_LARGELY:g} of the loss: it happened outside the circuit"),
    ("no gain, same circuit", "the circuit is intact and the accuracy difference's interval contains 0 (the paper's "
                              "Vicuna)"),
    ("same circuit, strengthened", f"accuracy rose and the circuit's heads, patched into the base, carry at least "
                                   f"{SHARE_LARGELY:g} of the gain (the paper's Goat and FLoat)"),
    ("gain largely outside the circuit", f"accuracy rose but the circuit's heads carry less than {SHARE_LARGELY:g} of "
                                         f"the gain"),
)


_BASE_SIDE: dict = {}  # (base, weights, circuit, lane, seed, baselines) -> the base's side of measurements


def _bool(x) -> np.ndarray:
    return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


class Comparison:
    """The fine-tune ``fine_tune`` (a ModelHandle) against ``base`` on the base's ``circuit``.

    Each claim is computed once on demand (:meth:`claim`), the pieces both models share (datasets, ablation
    means, clean correctness) once per run. ``log`` (a callable) hears progress.
    """

    def __init__(self, fine_tune, base, circuit: Circuit, lane: Lane = FULL, seed: int = 0,
                 baselines_dir=None, references: tuple[str, ...] | None = None, log: Callable | None = None,
                 discovery_cache=None):
        if fine_tune.name == base.name:
            raise MechbenchError(f"comparison needs two models; {fine_tune.name!r} was given as its own base")
        circuit.check_fits(base.shape.n_layers, base.shape.n_heads)
        if (fine_tune.shape.n_layers, fine_tune.shape.n_heads) != (base.shape.n_layers, base.shape.n_heads):
            raise MechbenchError(
                f"{fine_tune.name!r} ({fine_tune.shape.n_layers} layers x {fine_tune.shape.n_heads} heads) and its base "
                f"{base.name!r} ({base.shape.n_layers} x {base.shape.n_heads}) differ in shape: a fine-tune keeps its "
                f"base's heads. Pass the model it was tuned from as --base-model.")
        different = tokenizer_difference(fine_tune.tokenizer, base.tokenizer)
        if different:  # both are measured on the base's token ids: the fine-tune's own would be other words
            raise MechbenchError(
                f"{fine_tune.name!r} and its base {base.name!r} do not share a tokenizer: {different}. A comparison "
                f"measures both on one set of token ids; compare it with the model whose tokenizer it kept, or check "
                f"it against stored baselines instead (--baseline-model)")
        self.fine_tune, self.base, self.circuit, self.lane, self.seed = fine_tune, base, circuit, lane, seed
        self.baselines_dir, self.discovery_cache = baselines_dir, discovery_cache
        # the base's own stored numbers come first: the same-run measurement should agree with them
        refs = tuple(references) if references is not None else REFERENCES.get(base.name, ())
        if references is not None:  # a reference the user named must have stored numbers to show
            from mechbench import baselines as _baselines

            known = {r.keys.get("model") for r in _baselines.load("accuracy", baselines_dir).records}
            unknown = [r for r in refs if r not in known]
            if unknown:
                raise MechbenchError(f"--reference {', '.join(unknown)}: no stored numbers for it in the baselines "
                                     f"(accuracy.json knows {', '.join(sorted(k for k in known if k))}); a reference "
                                     f"is a fine-tune whose baselines are stored")
        self.references = tuple(dict.fromkeys((base.name,) + refs))
        self.log = log or (lambda msg: None)
        self._claims: dict[str, ClaimComparison] = {}
        self._cache: dict = {}
        # the base's side of every measurement is shared by all comparisons against the same base, circuit,
        # lane and seed in this process (several fine-tunes of one base measure the base once)
        self._base_cache = _BASE_SIDE.setdefault(
            (base.name, base.fingerprint.get("weights_sha256"), json.dumps(circuit.to_json()), lane, seed,
             str(baselines_dir)), {})

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
        return self._once(("dataset", n, seed_offset),
                          lambda: build_dataset(self.base.tokenizer, n_examples=n, seed=self.seed + seed_offset))

    def means(self, who: str):
        from mechbench.data.counterfactuals import ablation_prompts
        from mechbench.methods.ablation import position_means

        return self.side(who, "means", lambda: position_means(
            self.models[who].model, ablation_prompts(self.models[who].tokenizer, self.lane.n_examples, seed=self.seed)))

    def correct(self, who: str, n: int | None = None):
        from mechbench.evaluate import correct_on

        n = n or self.lane.n_examples
        return self.side(who, ("correct", n), lambda: correct_on(self.models[who], self.dataset(n)))

    def clusters(self, n: int | None = None):
        return self.dataset(n).clusters().numpy()

    def boot(self, statistic, quantities, clusters=None, level: float = 0.95) -> Estimate:
        return cluster_bootstrap(statistic, {k: _bool(v) for k, v in quantities.items()},
                                 self.clusters() if clusters is None else clusters, self.lane.n_boot, self.seed, level)

    def diff(self, base_values, ft_values, clusters=None, level: float = 0.95) -> Estimate:
        return self.boot(lambda m: m["f"] - m["b"], {"b": base_values, "f": ft_values}, clusters, level)

    def stored(self, claim: str, field_name: str | None = None, **keys):
        """A reference model's stored value for ``keys`` (a subset of the record's keys), or None."""
        try:
            table = baselines.load(claim, self.baselines_dir)
        except MechbenchError:
            return None
        for r in table.records:
            if all(r.keys.get(k) == v for k, v in keys.items()):
                value = r.value.get(field_name) if field_name and isinstance(r.value, dict) else r.value
                return value if isinstance(value, (int, float)) else None
        return None

    def refs(self, fn: Callable[[str], float | None]) -> dict:
        return {ref: fn(ref) for ref in self.references}

    def stored_accuracy(self, model: str):
        return self.stored("accuracy", model=model)

    # --- claims ---------------------------------------------------------------------------------------------

    def claim(self, name: str) -> ClaimComparison:
        if name not in CLAIMS:
            raise MechbenchError(f"unknown claim {name!r}; known: {', '.join(CLAIMS)}")
        if name not in self._claims:
            start = time.perf_counter()
            self.log(f"{self.fine_tune.name} vs {self.base.name}: {name} ...")
            rows, checks = CLAIMS[name](self)
            if get(name).needs_working_model:  # the chance guard, as the claim's spec says
                checks = self.task_checks() + checks
            self._claims[name] = ClaimComparison(name, rows, checks, time.perf_counter() - start)
            self.log(f"{self.fine_tune.name} vs {self.base.name}: {name} done in {self._claims[name].seconds:.1f} s")
        return self._claims[name]

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
        return all(name in self._claims for name in VERDICT_CLAIMS)

    def verdict(self) -> Verdict:
        """The first of :data:`VERDICT_RULES` that applies (computes the claims it needs)."""
        acc, faith, ko, patching, cmap = (self.claim(c) for c in VERDICT_CLAIMS)
        task = {c.name: c for c in acc.checks}
        if task["fine_tune does the task"].passed is False:
            return Verdict("does not do the task", (task["fine_tune does the task"].message,))
        if task["base does the task"].passed is False:
            return Verdict("does not do the task", ("the base itself " + task["base does the task"].message
                                                    + ": pass a base that does the task",))
        damaged = [c.message for c in faith.checks + ko.checks + patching.checks
                   if c.passed is False and not c.name.endswith("does the task")]
        ratio = next(r for r in faith.rows if r.measure == "faithfulness (circuit / full)")
        if ratio.base and ratio.fine_tune is not None and ratio.base > 0 and ratio.fine_tune < FAITHFULNESS_KEPT * ratio.base:
            damaged.append(f"faithfulness {ratio.fine_tune:.2f} is below {FAITHFULNESS_KEPT:g} x the base's {ratio.base:.2f}")
        if damaged:
            return Verdict("circuit damaged", tuple(damaged))
        gain = acc.rows[0].estimate
        if gain.lo is not None and gain.lo <= 0 <= gain.hi:
            return Verdict("no gain, same circuit", (f"accuracy difference {gain:+.3f} contains 0",))
        share = next(r for r in cmap.rows if r.keys.get("group") == "full_circuit").estimate
        change = "gain" if gain.value > 0 else "loss"
        reason = (f"accuracy difference {gain:+.3f}; the fine-tune's circuit heads patched into the base carry a share "
                  f"{share:.2f} of the {change}" + (f" (its interval straddles {SHARE_LARGELY:g}: weak evidence)"
                                                    if share.lo is not None and share.lo < SHARE_LARGELY < share.hi else ""))
        through_circuit = share.value >= SHARE_LARGELY
        if change == "loss":
            return Verdict("circuit damaged" if through_circuit else "same circuit, weakened", (reason,))
        return Verdict("same circuit, strengthened" if through_circuit else "gain largely outside the circuit", (reason,))


# --- one function per claim: (rows, checks) ----------------------------------------------------------------


def _accuracy(c: Comparison):
    n = c.lane.verdict_examples
    b, f = c.correct("base", n), c.correct("fine_tune", n)
    row = Row("accuracy", "accuracy", {}, _bool(b).mean(), _bool(f).mean(), c.diff(b, f, c.clusters(n)),
              references=c.refs(c.stored_accuracy), note=f"{n} prompts")
    return [row], c.task_checks(n)


def _faithfulness(c: Comparison):
    from mechbench.methods.ablation import faithfulness

    res = {who: c.side(who, "faithfulness", lambda who=who, h=h: faithfulness(
        h.model, c.circuit, c.dataset(), c.means(who), _bool(c.correct(who)).mean(), n_random=c.lane.n_random,
        seed=c.seed)) for who, h in c.models.items()}
    q = {}
    for who, key in (("base", "b"), ("fine_tune", "f")):
        q[f"full_{key}"] = c.correct(who)
        q[f"circ_{key}"] = res[who].circuit_correct
        q[f"rand_{key}"] = res[who].random_correct.float().mean(0)
    circuit = c.circuit.name

    def ref_circuit(ref):
        return c.stored("faithfulness", circuit=circuit, model=ref, metric="circuit_accuracy")

    def ref_ratio(ref):
        circ, full = ref_circuit(ref), c.stored_accuracy(ref)
        return circ / full if circ is not None and full else None

    def ref_random(ref):
        return c.stored("faithfulness", circuit=circuit, model=ref, metric="random_circuit_accuracy")

    rows = [
        Row("faithfulness", "circuit accuracy (rest mean-ablated)", {"metric": "circuit_accuracy"},
            res["base"].circuit_accuracy, res["fine_tune"].circuit_accuracy,
            c.boot(lambda m: m["circ_f"] - m["circ_b"], q), references=c.refs(ref_circuit)),
        Row("faithfulness", "faithfulness (circuit / full)", {"metric": "faithfulness"},
            res["base"].faithfulness, res["fine_tune"].faithfulness,
            c.boot(lambda m: m["circ_f"] / m["full_f"] - m["circ_b"] / m["full_b"], q), references=c.refs(ref_ratio)),
        Row("faithfulness", f"random circuits' accuracy ({c.lane.n_random} circuits)", {"metric": "random_circuit_accuracy"},
            res["base"].random_circuit_accuracy, res["fine_tune"].random_circuit_accuracy,
            c.boot(lambda m: m["rand_f"] - m["rand_b"], q), references=c.refs(ref_random)),
    ]
    beats = c.boot(lambda m: m["circ_f"] - m["rand_f"], q)
    passed = beats.lo is not None and beats.lo > 0
    check = Check("faithfulness", "circuit beats random circuits", passed,
                  f"{c.fine_tune.name}: circuit {c.circuit.name} minus random circuits = {beats:+.3f} (95% interval "
                  f"over contexts) {'above' if passed else 'not above'} 0", beats.value)
    return rows, [check]


def _completeness(c: Comparison):
    from mechbench.methods.ablation import completeness

    rows = []

    def incompleteness(key):
        return lambda m: np.mean([np.abs(m[f"M{key}{d}"] - m[f"C{key}{d}"]) for d in range(draws)], axis=0)

    draws = c.lane.completeness_draws
    q = {}
    for who, key in (("base", "b"), ("fine_tune", "f")):
        r = c.side(who, "completeness", lambda who=who: completeness(
            c.models[who].model, c.circuit, c.dataset(), c.means(who), "random_sampling", draws, seed=c.seed))
        for d in range(draws):
            q[f"M{key}{d}"], q[f"C{key}{d}"] = r.model_minus_k_correct[d], r.circuit_minus_k_correct[d]
    inc_b, inc_f = incompleteness("b"), incompleteness("f")
    est = c.boot(lambda m: inc_f(m) - inc_b(m), q)
    base_value, ft_value = float(inc_b({k: _bool(v).mean() for k, v in q.items()})), float(
        inc_f({k: _bool(v).mean() for k, v in q.items()}))
    circuit = c.circuit.name
    rows.append(Row("completeness", f"incompleteness, random K ({draws} draws)", {"k_method": "random_sampling"},
                    base_value, ft_value, est, references=c.refs(lambda ref: c.stored(
                        "completeness", circuit=circuit, model=ref, k_method="random_sampling", metric="incompleteness")),
                    note="the interval resamples contexts; the draws of K are the same for both models"))
    check_random = Check("completeness", "as complete as in the base", not (est.lo is not None and est.lo > INCOMPLETENESS_MARGIN),
                         f"{c.fine_tune.name}: random-K incompleteness {ft_value:.3f} vs the base's {base_value:.3f}, "
                         f"difference {est:+.3f}; fails only if the whole interval exceeds {INCOMPLETENESS_MARGIN:g}",
                         est.value)
    for group in c.circuit.groups:
        qg = {}
        for who, key in (("base", "b"), ("fine_tune", "f")):
            r = c.side(who, ("completeness", group), lambda who=who, group=group: completeness(
                c.models[who].model, c.circuit, c.dataset(), c.means(who), "entire_group", group=group))
            qg[f"M{key}"], qg[f"C{key}"] = r.model_minus_k_correct[0], r.circuit_minus_k_correct[0]
        means = {k: _bool(v).mean() for k, v in qg.items()}
        rows.append(Row("completeness", f"incompleteness, K = {group}", {"k_method": "entire_group", "group": group},
                        abs(means["Mb"] - means["Cb"]), abs(means["Mf"] - means["Cf"]),
                        c.boot(lambda m: np.abs(m["Mf"] - m["Cf"]) - np.abs(m["Mb"] - m["Cb"]), qg),
                        references=c.refs(lambda ref, group=group: c.stored(
                            "completeness", circuit=circuit, model=ref, k_method="entire_group", group=group,
                            metric="incompleteness"))))
    return rows, [check_random]


def _knockout(c: Comparison):
    from mechbench.methods.knockout import EDGES, knockout_curve_correct

    rows, moved = [], []
    runs = c.base.spec.knockout_edges  # the edges the base's spec runs (None, a model registered nowhere: all)
    for edge in (e for e in EDGES if runs is None or e in runs):
        for layer in range(c.base.shape.n_layers):
            q = {"clean_b": c.correct("base"), "clean_f": c.correct("fine_tune"),
                 **{f"ko_{key}": c.side(who, ("knockout", edge), lambda who=who, edge=edge: knockout_curve_correct(
                     c.models[who].model, c.dataset(), edge, range(c.base.shape.n_layers), seed=c.seed))[layer]
                    for who, key in (("base", "b"), ("fine_tune", "f"))}}
            means = {k: _bool(v).mean() for k, v in q.items()}
            est = c.boot(lambda m: m["ko_f"] / m["clean_f"] - m["ko_b"] / m["clean_b"], q)

            def ref_value(ref, edge=edge, layer=layer):
                ko, full = c.stored("attention_knockout", edge=edge, layer=layer, model=ref), c.stored_accuracy(ref)
                return ko / full if ko is not None and full else None

            rows.append(Row("attention_knockout", f"{edge} from layer {layer} (relative to clean)",
                            {"edge": edge, "layer": layer}, _ratio(means["ko_b"], means["clean_b"]),
                            _ratio(means["ko_f"], means["clean_f"]), est, references=c.refs(ref_value),
                            note=f"raw accuracy {means['ko_b']:.3f} / {means['ko_f']:.3f}"))
            if est.lo is not None and (est.lo > ROUTE_MARGIN or est.hi < -ROUTE_MARGIN):
                moved.append(f"{edge} from layer {layer}: {est:+.2f}")
    check = Check("attention_knockout", "same attention routes", not moved,
                  f"{c.fine_tune.name}: " + ("knockout curves (relative to clean accuracy) moved beyond "
                                             f"{ROUTE_MARGIN:g}: " + "; ".join(moved) if moved else
                                             f"every knockout point within {ROUTE_MARGIN:g} of the base's or its "
                                             f"interval reaching back"), float(len(moved)))
    return rows, [check]


def _ratio(a, b):
    return a / b if b else float("nan")


def _cmap(c: Comparison):
    from mechbench.methods.cmap import cmap_correct, cmap_head_sets

    sets = cmap_head_sets(c.circuit, c.baselines_dir)
    n = c.lane.verdict_examples
    dataset, clusters = c.dataset(n), c.clusters(n)
    patched = {"full_circuit": cmap_correct(c.base.model, c.fine_tune.model, list(sets.values()), dataset)}
    patched |= {g: cmap_correct(c.base.model, c.fine_tune.model, [hs], dataset) for g, hs in sets.items()}
    b, f = c.correct("base", n), c.correct("fine_tune", n)
    base_acc, ft_acc = _bool(b).mean(), _bool(f).mean()
    gain = c.diff(b, f, clusters)
    rows = []
    for group, p in patched.items():
        q = {"b": b, "f": f, "p": p}
        est = c.boot(lambda m: (m["p"] - m["b"]) / (m["f"] - m["b"]), q, clusters)

        def ref_share(ref, group=group):
            patched_ref = c.stored("cmap", source_model=ref, target_model=c.base.name, group=group)
            full, base_stored = c.stored_accuracy(ref), c.stored_accuracy(c.base.name)
            if None in (patched_ref, full, base_stored) or full == base_stored:
                return None
            return (patched_ref - base_stored) / (full - base_stored)

        n_heads = sum(len(hs) for hs in sets.values()) if group == "full_circuit" else len(sets[group])
        rows.append(Row("cmap", f"share of the gain carried: {group} ({n_heads} heads)", {"group": group},
                        base_acc, ft_acc, est, statistic="share of gain", references=c.refs(ref_share),
                        note=f"base with the fine-tune's heads: {_bool(p).mean():.3f}; {n} prompts"))
    share = rows[0].estimate
    if gain.lo is None or gain.lo <= 0 <= gain.hi:
        check = Check("cmap", "the circuit carries the gain", None,
                      f"{c.fine_tune.name} ({ft_acc:.3f}) and {c.base.name} ({base_acc:.3f}) differ by {gain:+.3f}, "
                      f"an interval that contains 0: no gain for the circuit to carry", None)
    elif gain.value > 0:
        check = Check("cmap", "the circuit carries the gain", share.value >= SHARE_LARGELY,
                      f"{c.fine_tune.name}'s circuit heads patched into {c.base.name} carry a share {share:.2f} of "
                      f"its gain {gain:+.3f} (needed {SHARE_LARGELY:g})", share.value)
    else:  # a loss: it must not run through the circuit's heads
        check = Check("cmap", "the loss is not in the circuit", share.value < SHARE_LARGELY,
                      f"{c.fine_tune.name} lost accuracy ({gain:+.3f}); its circuit heads patched into {c.base.name} "
                      f"carry a share {share:.2f} of the loss (fails from {SHARE_LARGELY:g}: the circuit is damaged)",
                      share.value)
    return rows, [check]


def _dcm_records(c: Comparison):
    """The base circuit's stored DCM runs: (group, desideratum) -> record value (heads, test accuracy)."""
    try:
        table = baselines.load("dcm", c.baselines_dir)
    except MechbenchError:
        return {}
    return {(r.keys["group"], r.keys["desideratum"]): r.value for r in table.records
            if r.keys.get("circuit") == c.circuit.name and r.keys.get("model") == c.circuit.name
            and isinstance(r.value, dict) and r.keys.get("desideratum") in ("object_value", "positional", "box_label_value")}


def _main_desiderata(c: Comparison) -> dict[str, str]:
    """Per group, the desideratum its stored DCM run carries best in the base (object_value for a group with none)."""
    best: dict[str, tuple[float, str]] = {}
    for (group, desideratum), value in _dcm_records(c).items():
        acc = value.get("test_accuracy", 0.0)
        if group not in best or acc > best[group][0]:
            best[group] = (acc, desideratum)
    return {g: best[g][1] if g in best else "object_value" for g in c.circuit.groups}


def _dcm_patching(c: Comparison):
    from mechbench.data.counterfactuals import desiderata_pairs
    from mechbench.methods.dcm import patched_correct, source_values_at

    records = _dcm_records(c)
    if not records:
        raise MechbenchError(f"no DCM run of circuit {c.circuit.name!r} in baselines/dcm.json to take heads from: run "
                             f"suites/test_dcm.py --model={c.circuit.name} --update-baselines first")
    rows, weaker, per_row = [], [], {}
    layers = list(range(c.base.shape.n_layers))
    for desideratum in ("object_value", "positional", "box_label_value"):
        groups = [(g, records[(g, desideratum)]) for g in c.circuit.groups if (g, desideratum) in records]
        if not groups:
            continue
        def patched(who, desideratum=desideratum, groups=groups):
            """Per group, the pairs of every run the model moves to the target with the DCM heads patched."""
            out = {g: [] for g, _ in groups}
            model = c.models[who].model
            for run in range(c.lane.patching_runs):
                pairs = c.side("base", ("pairs", desideratum, run), lambda run=run: desiderata_pairs(
                    c.base.tokenizer, desideratum, n_pairs=c.lane.patching_pairs, seed=derived_seed(c.seed, draw=run)))
                heads = [HeadGroup(g, c.circuit.groups[g].role, tuple(tuple(h) for h in value["heads"]))
                         for g, value in groups]
                for (g, _), correct in zip(groups, patched_correct(
                        model, heads, pairs, source_values_at(model, pairs, c.circuit.roles, layers))):
                    out[g].append(correct)
            return out

        per = {key: c.side(who, ("dcm_patching", desideratum), lambda who=who: patched(who))
               for who, key in (("base", "b"), ("fine_tune", "f"))}
        clusters = np.arange(c.lane.patching_runs * c.lane.patching_pairs)  # a fresh base context per pair
        for g, value in groups:
            b, f = torch.cat(per["b"][g]).float() * 100, torch.cat(per["f"][g]).float() * 100
            rows.append(Row("dcm_patching", f"{g}: {desideratum} (% of targets, {len(value['heads'])} DCM heads)",
                            {"group": g, "desideratum": desideratum}, float(b.mean()), float(f.mean()),
                            c.diff(b, f, clusters), references=c.refs(lambda ref, g=g, d=desideratum: c.stored(
                                "dcm_patching", circuit=c.circuit.name, model=ref, group=g, desideratum=d))))
            per_row[len(rows) - 1] = (b, f, clusters)
    # the check looks at every (group, desideratum) the base carries at once: Bonferroni over them
    carried = [i for i, row in enumerate(rows) if row.base >= 100 * CARRIED]
    level = 1 - 0.05 / max(len(carried), 1)
    for i in carried:
        est = c.diff(*per_row[i], level=level)
        if est.hi is not None and est.hi < 0:
            weaker.append(f"{rows[i].keys['group']} {rows[i].keys['desideratum']} {est:+.1f} points")
    check = Check("dcm_patching", "the base's DCM heads carry as much", not weaker,
                  f"{c.fine_tune.name}: " + (f"carried less than the base (whole {level:.1%} interval below 0, "
                                             f"Bonferroni over the {len(carried)} carried): " + "; ".join(weaker)
                                             if weaker else f"none of the {len(carried)} desiderata the base's groups "
                                             f"carry (>= {100 * CARRIED:g}%) is carried significantly less "
                                             f"(Bonferroni over them)"), float(len(weaker)))
    return rows, [check]


def _dcm(c: Comparison):
    from mechbench.data.counterfactuals import desiderata_pairs
    from mechbench.methods.dcm import train_dcm_groups

    main = _main_desiderata(c)
    train_n, val_n, test_n = c.lane.dcm_split
    rows, weaker, carried = [], [], []
    for desideratum in ("object_value", "positional", "box_label_value"):
        groups = [g for g in c.circuit.groups if c.lane.dcm_all_desiderata or main[g] == desideratum]
        if not groups:
            continue
        pairs = desiderata_pairs(c.base.tokenizer, desideratum, n_pairs=train_n + val_n + test_n, seed=c.seed)
        train, val, test = pairs.split([train_n, val_n, test_n])
        # every group of a desideratum trains in one pass (each its own mask; they share the clean runs)
        trained = {who: c.side(who, ("dcm", desideratum, tuple(groups)), lambda h=h, train=train, val=val, test=test:
                               dict(zip(groups, train_dcm_groups(h, [c.circuit.groups[g] for g in groups], train, val,
                                                                 test, seed=c.seed))))
                   for who, h in c.models.items()}
        for g in groups:
            res = {who: trained[who][g] for who in c.models}
            est = c.diff(res["base"].test_correct, res["fine_tune"].test_correct, np.arange(test_n))
            shared = set(res["base"].heads) & set(res["fine_tune"].heads)
            union = set(res["base"].heads) | set(res["fine_tune"].heads)
            rows.append(Row("dcm", f"{g}: {desideratum} (test accuracy of the rounded mask)",
                            {"group": g, "desideratum": desideratum}, res["base"].test_accuracy,
                            res["fine_tune"].test_accuracy, est,
                            note=f"heads selected {len(res['base'].heads)} / {len(res['fine_tune'].heads)}, "
                                 f"overlap {len(shared)}/{len(union) or 1}"))
            if main[g] == desideratum and res["base"].test_accuracy >= CARRIED:
                carried.append((rows[-1], res["base"].test_correct, res["fine_tune"].test_correct))
    level = 1 - 0.05 / max(len(carried), 1)  # Bonferroni over the groups checked
    for row, b, f in carried:
        est = c.diff(b, f, np.arange(test_n), level=level)
        if est.hi is not None and est.hi < 0:
            weaker.append(f"{row.keys['group']} {row.keys['desideratum']} {est:+.3f} ({level:.1%} interval)")
    check = Check("dcm", "each group carries what it carries in the base", not weaker,
                  f"{c.fine_tune.name}: " + ("a group carries its information significantly less: " + "; ".join(weaker)
                                             if weaker else f"none of the {len(carried)} groups carries its main "
                                             f"information significantly less (Bonferroni over them)"),
                  float(len(weaker)))
    return rows, [check]


def _path_patching(c: Comparison):
    """Each model's path-patching scores from the base circuit's discovery steps; per group, the share of the
    circuit's heads among the model's top-|group| heads by score (no score floor: a fine-tune whose scores are
    all smaller is not "missing" heads for it), and the correlation of the two score grids."""
    from mechbench.methods.discovery import discover
    from mechbench.methods.path_patching import top_heads

    config = discovery_settings(c.circuit.name)
    config = replace(config, n_pairs=c.lane.discovery_pairs)
    found = {who: c.side(who, "discovery", lambda h=h: discover(h, c.circuit.name, config, cache_dir=c.discovery_cache))
             for who, h in c.models.items()}
    rows, lost = [], []
    for group, g in c.circuit.groups.items():
        if group not in found["base"].scores or group not in found["fine_tune"].scores:
            continue
        recall = {who: len(set(g.heads) & set(top_heads(found[who].scores[group], len(g.heads)))) / len(g.heads)
                  for who in ("base", "fine_tune")}
        r = _pearson(found["base"].scores[group], found["fine_tune"].scores[group])
        rows.append(Row("path_patching", f"{group}: the circuit's heads among the top {len(g.heads)} by score",
                        {"group": group, "metric": "recall"}, recall["base"], recall["fine_tune"],
                        Estimate(recall["fine_tune"] - recall["base"]),
                        note=f"correlation of the score grids {r:.2f}; {config.n_pairs} noise pairs; a selection "
                             f"statistic: no interval"))
        if recall["fine_tune"] < 0.5 * recall["base"]:
            lost.append(f"{group} {recall['fine_tune']:.2f} vs {recall['base']:.2f}")
    check = Check("path_patching", "path patching finds the circuit", not lost,
                  f"{c.fine_tune.name}: " + ("under half of the circuit's heads that lead the base's scores lead the "
                                             "fine-tune's: " + "; ".join(lost) if lost else "in every group at least "
                                             "half as many of the circuit's heads lead the scores as in the base"),
                  float(len(lost)))
    return rows, [check]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _minimality(c: Comparison):
    from mechbench.methods.minimality import head_significance

    dataset = c.dataset(c.lane.minimality_examples, seed_offset=10)
    clusters = dataset.clusters().numpy()
    rows, lost, mattering = [], [], []
    for group, g in c.circuit.groups.items():
        q = {}
        for who, key in (("base", "b"), ("fine_tune", "f")):
            significance = c.side(who, ("minimality", group), lambda who=who, group=group: head_significance(
                c.models[who].model, c.circuit, group, dataset, c.means(who), candidates=c.lane.minimality_heads))
            for i, s in enumerate(significance):
                q[f"before{key}{i}"], q[f"after{key}{i}"] = s.before_correct, s.after_correct
        n = len(g.heads[:c.lane.minimality_heads])

        def drop(key, n=n):  # n bound now: the Bonferroni pass below runs after the loop
            return lambda m: np.mean([m[f"before{key}{i}"] - m[f"after{key}{i}"] for i in range(n)], axis=0)

        means = {k: _bool(v).mean() for k, v in q.items()}
        est = c.boot(lambda m: drop("f")(m) - drop("b")(m), q, clusters)
        rows.append(Row("minimality", f"{group}: mean drop when a head goes ({n} of {len(g.heads)} heads)", {"group": group},
                        float(drop("b")(means)), float(drop("f")(means)), est,
                        note=f"{c.lane.minimality_examples} examples; K = the ceil(0.3 n) peers with the largest positive pair drop"))
        if float(drop("b")(means)) > 0:
            mattering.append((group, drop("f"), q))
    level = 1 - 0.05 / max(len(mattering), 1)  # Bonferroni over the groups whose heads matter in the base
    for group, drop_f, q in mattering:
        mf = cluster_bootstrap(drop_f, {k: _bool(v) for k, v in q.items()}, clusters, c.lane.n_boot, c.seed, level)
        if mf.hi is not None and mf.hi <= 0:
            lost.append(f"{group} {mf:+.3f} ({level:.1%} interval)")
    check = Check("minimality", "the circuit's heads still matter", not lost,
                  f"{c.fine_tune.name}: " + ("removing a head no longer costs accuracy in: " + "; ".join(lost) if lost
                                             else "in every group whose heads matter in the base, removing them "
                                             "still costs accuracy or the interval allows it"), float(len(lost)))
    return rows, [check]


#: claim -> its comparison; the order is the report's.
CLAIMS: dict[str, Callable[[Comparison], tuple[list[Row], list[Check]]]] = {
    "accuracy": _accuracy,
    "faithfulness": _faithfulness,
    "completeness": _completeness,
    "attention_knockout": _knockout,
    "cmap": _cmap,
    "dcm_patching": _dcm_patching,
    "dcm": _dcm,
    "path_patching": _path_patching,
    "minimality": _minimality,
}


def base_circuit_name(base: str, baselines_dir=None) -> str:
    """The circuit found on ``base`` (stored in baselines/circuits.json under the base's name)."""
    try:
        names = {r.keys.get("circuit") for r in baselines.load("circuits", baselines_dir).records}
    except MechbenchError:
        names = set()
    if base not in names:
        raise MechbenchError(f"no circuit stored for the base {base!r} (known: {', '.join(sorted(n for n in names if n))}): "
                             f"find one with `mechbench discover {base} --store`, or pass --circuit NAME or FILE")
    return base


def record(results, comparison: Comparison, result: ClaimComparison) -> None:
    """Write every row and check of ``result`` to the results file, under the fine-tune's own name."""
    if results is None:
        return
    common = {"model": comparison.fine_tune.name, "base_model": comparison.base.name,
              "circuit": comparison.circuit.name, "lane": comparison.lane.name}
    for row in result.rows:
        results.write(f"compare:{row.claim}", {**common, "measure": row.measure}, _num(row.estimate.value),
                      statistic=row.statistic, lo=_num(row.estimate.lo), hi=_num(row.estimate.hi),
                      base_value=_num(row.base), fine_tune_value=_num(row.fine_tune),
                      references={k: _num(v) for k, v in row.references.items()}, note=row.note,
                      seed=comparison.seed, fingerprint=comparison.fine_tune.fingerprint,
                      base_fingerprint=comparison.base.fingerprint.get("weights_sha256"))
    for check in result.checks:
        results.write(f"check:{check.claim}", {**common, "check": check.name}, _num(check.value),
                      passed=check.passed, message=check.message, seed=comparison.seed,
                      fingerprint=comparison.fine_tune.fingerprint)


def record_verdict(results, comparison: Comparison, verdict: Verdict) -> None:
    if results is not None:
        results.write("verdict", {"model": comparison.fine_tune.name, "base_model": comparison.base.name,
                                  "circuit": comparison.circuit.name, "lane": comparison.lane.name},
                      verdict.label, passed=verdict.same_mechanism, reasons=list(verdict.reasons), seed=comparison.seed,
                      fingerprint=comparison.fine_tune.fingerprint)


def _num(x):
    return None if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else round(float(x), 6)
