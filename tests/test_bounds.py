"""Bounds that mean something at any size: every tolerance rule, at n = 1, 3, 7 and 14, is finite and narrower than its
measure's range (below 0.5 for a fraction, 50 for a percent, the stored count for a count), or the comparison is
inconclusive, naming the fewest examples at which the same rule's bound is in range; never a pass. The sizes each
rule's docstring states are checked here too."""

import json
import math
from types import SimpleNamespace

import pytest

from mechbench import baselines
from mechbench.baselines import Record
from mechbench.claims import ClaimFailed, ClaimSkipped, Run, Settings, check_claim, get, tolerance
from mechbench.claims.run import settle
from mechbench.claims.tolerance import judge, smallest_size, tolerance_limit
from mechbench.errors import BaselineError

SIZES = (1, 3, 7, 14)
PER_CONTEXT = 7  # the task's prompts: a context queried once per box


def contexts(n: int) -> int:
    return math.ceil(n / PER_CONTEXT)


def assert_meaningful(c: tolerance.Judgement, **route) -> None:
    """A comparison passes or fails only within a bound narrower than its measure's range; otherwise, where the
    measurement lies within the bound, it is inconclusive and names the fewest examples the rule needs: at that
    size (on ``route``: the same design effect and contexts of 7) the bound is in range, one fewer it is not."""
    limit = tolerance_limit(c.unit, c.expected)
    if math.isfinite(c.tolerance) and c.tolerance < limit:
        assert c.inconclusive is None and c.passed is (abs(c.difference) <= c.tolerance + 1e-12), c
        return
    assert c.passed is not True, f"a pass with the out-of-range bound {c.tolerance}"
    if abs(c.difference) > c.tolerance:  # beyond even the wide bound: a failure
        assert c.passed is False
        return
    assert c.passed is None and c.inconclusive.startswith(f"inconclusive at n={c.n}: the tolerance")
    assert f"below {limit:g}" in c.inconclusive
    if c.needs is None:  # the rule's bound does not fall with n: said so
        assert "no sample size narrows it" in c.inconclusive
        return
    assert f"needs at least {c.needs} examples" in c.inconclusive and c.needs > c.n

    def at(size):
        clusters = contexts(size) if route.get("clustered") else None
        return judge(
            c.measured,
            c.record,
            n=size,
            design_effect=route.get("design_effect", 1.0),
            n_clusters=clusters,
            per_context=PER_CONTEXT if clusters else None,
            field=route.get("field"),
        )

    assert at(c.needs).inconclusive is None and at(c.needs).tolerance < limit
    if c.needs - 1 > c.n:
        assert at(c.needs - 1).tolerance >= limit  # the smallest such size, not just one


def stored(rule: tolerance.Tolerance, value: float, n: int, unit: str = "fraction", **fields) -> Record:
    """A record stored by ``rule`` on ``n`` examples (in memory: the loader would refuse an out-of-range one)."""
    return Record(
        {"model": "m"},
        value,
        "measured",
        {
            "tolerance": rule.value,
            "tolerance_rule": rule.rule,
            "n": n,
            **({"tolerance_same_sample": rule.same_sample} if rule.same_sample is not None else {}),
            **fields,
        },
        (),
        unit,
    )


RULES = {  # the rules of mechbench.claims.tolerance at size n: (the Tolerance, the stored value, its unit, std)
    "binomial p=0.5": lambda n: (tolerance.binomial(0.5, n), 0.5, "fraction", None),
    "binomial p=0.82": lambda n: (tolerance.binomial(0.82, n), 0.82, "fraction", None),
    "binomial + DCM's rounding": lambda n: (tolerance.binomial(0.3, n, rounding=0.05), 0.3, "fraction", None),
    "widest binomial": lambda n: (tolerance.widest_binomial(n), 0.45, "fraction", None),
    "mean of draws": lambda n: (tolerance.mean_of_draws(0.1, 10, n=n), 0.17, "fraction", 0.1),
    "mean of draws, percent": lambda n: (
        tolerance.mean_of_draws(
            tolerance.spread_of_fresh_draws([30.0, 20.0, 40.0], n, unit=100), 10, n=n, unit=100, rounding=0.05
        ),
        30.0,
        "percent",
        10.0,
    ),
    "difference": lambda n: (
        tolerance.difference(tolerance.binomial(0.2, n), tolerance.binomial(0.4, n), "a, b"),
        0.2,
        "fraction",
        None,
    ),
    "resampled": lambda n: (tolerance.resampled(0.3 / math.sqrt(n), n), 0.1, "fraction", None),
    "fixed": lambda n: (tolerance.fixed(0.05, "margin"), 1.0, "fraction", None),
}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rule", RULES)
def test_each_rule_is_in_range_or_inconclusive_at_small_sizes(rule, n):
    """A record stored by the rule on n examples, against a measurement on another sample of as many (the bound
    as it is), on the record's own examples (its same-sample bound) and on the paper's 500 (the bound rescaled):
    no pass outside the range. Storing an out-of-range bound is refused, even forced."""
    bound, value, unit, std = RULES[rule](n)
    record = stored(bound, value, n, unit, seed=0, **({"std": std} if std is not None else {}))
    for measured in (value, value + 0.1 * tolerance_limit(unit, value)):
        assert_meaningful(judge(measured, record, n=n, seed=1, std=std))
        assert_meaningful(judge(measured, record, n=n, seed=0, std=std))
    in_range = bound.value < tolerance_limit(unit, value)
    table = baselines.Baseline(None, "c", "d", unit, "s", [])
    if not in_range:
        with pytest.raises(BaselineError, match=f"wider than a {unit} allows"):
            baselines.update(
                table,
                {"model": "m"},
                value,
                write=False,
                force=True,
                tolerance=bound.value,
                tolerance_rule=bound.rule,
                n=n,
            )
    else:
        baselines.update(
            table, {"model": "m"}, value, write=False, tolerance=bound.value, tolerance_rule=bound.rule, n=n
        )


@pytest.mark.parametrize("n", SIZES)
def test_a_paper_record_against_a_few_prompts_is_inconclusive_never_a_pass(n):
    """The reported case: toy-llama checked against toy-goat's 0.82 (n=500) at --limit 7, 3 or 14: Student's t with
    one or two contexts and the rescaling by n made the bound inf or 29.37, and it passed. Now: inconclusive, with
    the size it needs; at that size the bound is in range and a measurement that far off fails."""
    goat = baselines.load("accuracy").get(model="toy-goat")
    for design_effect in (1.0, 1.6):
        c = judge(0.6, goat, n=n, design_effect=design_effect, n_clusters=contexts(n), per_context=PER_CONTEXT)
        assert c.passed is None and c.needs is not None
        assert_meaningful(c, clustered=True, design_effect=design_effect)
    assert judge(0.6, goat, n=500, design_effect=1.6, n_clusters=72, per_context=7).passed is False
    # without the contexts' widening, the binomial rescale alone is out of range at 1 and 3 prompts (3/n)
    plain = judge(0.6, goat, n=n)
    assert_meaningful(plain)
    assert (plain.passed is None) == (n < 7)


@pytest.mark.parametrize("n", SIZES)
def test_the_rescaled_rules_of_a_stored_record_at_small_sizes(n):
    """Each way a stored bound is rescaled to a measurement on n examples: a mean over draws (percent, by its spread),
    an object value's field, the same-sample 3/n and its widening for another dtype, a count."""
    percent = Record(
        {"model": "m"},
        26.92,
        "measured",
        {"tolerance": 1.8844, "tolerance_rule": "r", "n": 500, "std": 1.2},
        (),
        "percent",
    )
    for std in (None, 1.2, 30.0):
        assert_meaningful(judge(26.92, percent, n=n, std=std))
    dcm = Record(
        {"model": "m"},
        {"n_heads": 3, "heads": [[0, 1]], "test_accuracy": 0.522},
        "measured",
        {"tolerance": 0.1448, "tolerance_rule": "r", "n": 500},
    )
    assert_meaningful(judge(0.5, dcm, n=n, field="test_accuracy"), field="test_accuracy")
    own = stored(tolerance.binomial(0.6, n), 0.6, n, seed=0)
    for dtype in ("float32", "bfloat16"):
        c = judge(0.6, own, n=n, seed=0, dtype=dtype)
        assert_meaningful(c)
    assert (judge(0.6, own, n=n, seed=0).passed is None) == (n < 7)  # 3/n: in range from 7 examples
    count = Record({"model": "m"}, 3, "measured", {"tolerance": 1.0, "tolerance_rule": "r", "n": 500}, (), "count")
    assert_meaningful(judge(3, count, n=n))
    assert tolerance_limit("count", 3) == 3.0 and tolerance_limit("count", 0) == 1.0  # below the count itself


def test_the_sizes_the_rules_state():
    """The sizes in the docstrings of mechbench.claims.tolerance: where each rule's bound falls below the limit."""

    def needs(bound_at, limit=0.5):
        return smallest_size(bound_at, limit, 0)

    assert needs(lambda n: tolerance.same_sample(n)) == needs(lambda n: tolerance.same_sample(n, 100), 50) == 7
    assert [needs(lambda n: tolerance.binomial(p, n).value) for p in (0.5, 0.66, 0.82, 0.0, 1.0)] == [
        19,
        17,
        14,
        10,
        10,
    ]
    assert needs(lambda n: tolerance.widest_binomial(n).value) == 19
    assert needs(lambda n: tolerance.binomial(0.5, n, rounding=0.05).value) == 23
    both = lambda n: tolerance.difference(tolerance.binomial(0.5, n), tolerance.binomial(0.5, n), "").value  # noqa
    assert needs(both) == 73
    assert tolerance.mean_of_draws(0.37, 10, n=500).value < 0.5 < tolerance.mean_of_draws(0.38, 10, n=500).value
    assert tolerance.mean_of_draws(0.1, 10, n=3).value < 0.5 < tolerance.mean_of_draws(0.1, 10, n=1).value
    assert tolerance.resampled(0.1178, 100).value < 0.5 < tolerance.resampled(0.1179, 100).value
    widened = lambda n: tolerance.same_sample(n) * tolerance.precision_factor(n, "bfloat16", "float32")  # noqa: E731
    assert needs(widened) == 8 and round(widened(8), 2) == 0.48 and round(widened(100), 2) == 0.06
    # a binomial in blocks of 7 against toy-goat's 0.82: the contexts' t widening sets the size (the module says 36)
    goat = baselines.load("accuracy").get(model="toy-goat")
    assert judge(0.82, goat, n=7, design_effect=1.3, n_clusters=1, per_context=7).needs == 36


def test_a_number_derived_from_stored_records_is_judged_by_the_same_range_rule():
    """minimality's group drop (a resampled bound, against the mean of stored drops no record holds):
    tolerance.judge_derived gives the reason and the size, by the same search as a record's."""
    se_at = lambda n: 0.6 / math.sqrt(n)  # noqa: E731 - a standard error that shrinks as 1/sqrt(n)
    heads = [Record({"head": h}, {"before": 0.5, "after": 0.4}, "measured", {"n": 100, "seed": 0}) for h in (1, 2)]

    def derived(n, measured=0.1):
        return tolerance.judge_derived(
            measured,
            0.1,
            tolerance.resampled(se_at(n), n),
            heads,
            n,
            1,
            bound_at=lambda m: tolerance.resampled(se_at(m), m),
        )

    needs = 26  # 3 sqrt(2) 0.6 / sqrt(n) < 0.5 from n > 25.9
    reason = derived(14).inconclusive
    assert reason.startswith("inconclusive at n=14: the tolerance") and f"needs at least {needs} examples" in reason
    assert derived(14).passed is None and derived(14, measured=0.1 + 0.8).passed is False  # beyond even that bound
    assert derived(needs).inconclusive is None and derived(needs).passed is True
    # on the records' own examples (n and seed): the same-sample 3/n, x the precision factor in another dtype
    own = tolerance.judge_derived(0.13, 0.1, tolerance.resampled(0.05, 100), heads, 100, 0, dtype="bfloat16")
    assert own.tolerance == pytest.approx(0.03 * tolerance.precision_factor(100, "bfloat16", "float32"))
    assert own.passed and "baseline ran in float32" in str(own)
    assert tolerance.judge_derived(0.135, 0.1, tolerance.resampled(0.05, 100), heads, 100, 0).passed is False


#: Every tolerance rule (the arithmetic and its words) and the judging of a measurement: mechbench.claims.tolerance's.
RULE_NAMES = (
    "binomial_tolerance",
    "BINOMIAL_RULE",
    "SAME_SAMPLE_RULE",
    "same_sample",
    "binomial",
    "widest_binomial",
    "mean_of_draws",
    "spread_of_fresh_draws",
    "difference",
    "resampled",
    "resampled_at",
    "fixed",
    "PRECISION_FLIP_RATE",
    "PRECISION_RULE",
    "precision_factor",
    "own_examples",
    "tolerance_for",
    "is_binomial",
    "binomial_on",
    "contexts_at",
    "widened",
    "tolerance_limit",
    "too_wide",
    "smallest_size",
    "Judgement",
    "stored_number",
    "judge",
    "judge_derived",
)


def test_every_tolerance_rule_lives_in_the_tolerance_module_and_baselines_keeps_none():
    """One tolerance module: every rule is defined in mechbench.claims.tolerance; mechbench.baselines (schema, files,
    staging) defines none, not even as a method of a record, and needs the rules only when it checks a file (an
    import there would be a cycle: the rules read records)."""
    import inspect
    import subprocess
    import sys

    for name in RULE_NAMES:
        obj = getattr(tolerance, name)
        assert getattr(obj, "__module__", tolerance.__name__) == tolerance.__name__, name
        assert not hasattr(baselines, name), f"mechbench.baselines still has {name}"
    own = [
        n
        for n, o in vars(baselines).items()
        if (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == baselines.__name__
    ]
    own += [f"Record.{n}" for n in vars(baselines.Record) if not n.startswith("__")]
    words = ("tolerance", "binomial", "precision", "wide", "smallest", "compar", "judg", "same_sample", "rescal")
    assert not [n for n in own if any(w in n.lower() for w in words)]
    assert not [n for n in vars(baselines) if n.endswith("_RULE") or "PRECISION" in n]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, mechbench.baselines; print('mechbench.claims.tolerance' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert loaded.stdout.strip() == "False", loaded.stderr


def test_the_generic_runner_has_no_claim_specific_branch():
    """Run.check and check_claim name no claim and no claim's key field: CMAP maps its own checkpoint key for
    --baseline-model (baseline_keys), minimality hands its derived stored number over (expected)."""
    import ast
    import inspect
    import textwrap

    from mechbench.claims import check, run

    def literals(source):  # every string in the code, docstrings left out
        tree = ast.parse(textwrap.dedent(source))
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        return {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
        }

    code = literals(inspect.getsource(run.Run.check)) | literals(inspect.getsource(check))
    assert not {w for w in code for name in ("checkpoint", "release", "local", "cmap", "minimality") if name in w}


def _minimality_run(tmp_path, monkeypatch, drop, *, seed=0, limit=None, se=0.05, n_clusters=15, dtype="float32"):
    """The minimality measurement on a stand-in for its discovery and its group's measurement (two heads whose
    stored drops average 0.125 on 100 prompts at seed 0), every check through Run.check: (the calls of Run.check,
    the results rows, the outcome raised or None)."""
    from mechbench.circuits import Circuit, HeadGroup
    from mechbench.claims.specs import minimality as spec
    from mechbench.methods.minimality import GroupMinimality, HeadSignificance
    from mechbench.stats import Estimate

    heads = {(1, 2): (0.6, 0.4), (3, 4): (0.5, 0.45)}
    records = [
        {
            "circuit": "toy-llama",
            "group": "value_fetcher",
            "kind": "head",
            "rank": rank,
            "layer": h[0],
            "head": h[1],
            "value": {"before": b, "after": a, "in_circuit": True},
            "source": "measured by test",
            "tolerance": 0.2171,
            "tolerance_same_sample": 0.03,
            "tolerance_rule": "r",
            "n": 100,
            "seed": 0,
        }
        for rank, (h, (b, a)) in enumerate(heads.items())
    ]
    (tmp_path / "minimality.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "claim": "minimality",
                "description": "d",
                "unit": "fraction",
                "source": "s",
                "records": records,
            }
        )
    )
    circuit = Circuit("toy-llama", {"value_fetcher": HeadGroup("value_fetcher", "last", tuple(heads))})
    config = SimpleNamespace(minimality_examples=100, minimality_seed=0, minimality_boot=10, minimality_threshold=0.01)
    measured = GroupMinimality(
        [HeadSignificance("value_fetcher", h, b, a) for h, (b, a) in heads.items()],
        Estimate(drop, drop - 0.1, drop + 0.1),
        se,
        10,
        0,
        n_clusters,
    )
    monkeypatch.setattr(spec, "discovery_of_claims", lambda *a, **k: (config, SimpleNamespace(circuit=circuit)))
    monkeypatch.setattr(spec, "build_dataset", lambda *a, **k: None)
    monkeypatch.setattr(spec, "group_minimality", lambda *a, **k: measured)
    monkeypatch.setattr(Run, "circuit", lambda self, *a, **k: circuit)
    monkeypatch.setattr(Run, "discovery_settings", lambda self, *a, **k: config)
    monkeypatch.setattr(Run, "ablation_means", lambda self: None)
    calls, rows = [], []
    check = Run.check

    def spy(self, keys, value, **kwargs):
        calls.append((keys, value, kwargs))
        return check(self, keys, value, **kwargs)

    monkeypatch.setattr(Run, "check", spy)
    settings = Settings(
        models=("toy-llama",),
        base_model=None,
        baseline_model=None,
        circuits=None,
        device="cpu",
        dtype=dtype,
        limit=limit,
        seed=seed,
        baselines_dir=tmp_path,
        update_baselines=False,
        results_dir=tmp_path,
        require_models=False,
    )
    results = SimpleNamespace(write=lambda claim, keys, value, **details: rows.append((claim, keys, details)))
    handle = SimpleNamespace(
        name="toy-llama", spec=SimpleNamespace(kind="toy"), fingerprint={"dtype": dtype}, tokenizer=None
    )
    try:
        spec.minimality(Run(get("minimality"), settings, handle, circuit_name="toy-llama", results=results))
    except (ClaimFailed, ClaimSkipped) as e:
        return calls, rows, e
    return calls, rows, None


def _old_verdict(drop, n, same, se, n_clusters, precision=1.0):
    """minimality's group verdict as its spec judged it before it went through Run.check (the reference)."""
    bound = tolerance.resampled(se, n, n_clusters)
    allowed = bound.same_sample * precision if same else bound.value
    passed = abs(drop - 0.125) <= allowed + 1e-9
    if not passed:
        return False
    return None if tolerance.too_wide(allowed, "fraction") else True  # within a bound too wide: inconclusive


@pytest.mark.parametrize(
    "seed, limit, se, n_clusters, dtype, drops",
    [
        (0, None, 0.05, 15, "float32", (0.125, 0.15, 0.155, 0.16, 0.05)),  # the stored examples: 3/n
        (0, None, 0.05, 15, "bfloat16", (0.15, 0.17, 0.2)),  # ... x the precision factor
        (1, None, 0.05, 15, "float32", (0.125, 0.3, 0.4, -0.2)),  # other prompts: resampled, Student's t for 15
        (0, 7, 0.2, 2, "float32", (0.125, 0.6, 3.0)),  # --limit 7: too wide, inconclusive (or far off: a failure)
    ],
)
def test_minimalitys_group_check_goes_through_run_check_with_its_verdicts(
    tmp_path, monkeypatch, seed, limit, se, n_clusters, dtype, drops
):
    """minimality's group mean drop is judged by Run.check (the stored number handed over: the mean of its heads'
    stored drops, no record of its own), recorded in the results like every check, at the verdicts its own check
    gave (pass, fail, inconclusive at the same numbers); the message keeps the drop with its interval, the heads,
    the stored drop and the rule."""
    for drop in drops:
        calls, rows, raised = _minimality_run(
            tmp_path, monkeypatch, drop, seed=seed, limit=limit, se=se, n_clusters=n_clusters, dtype=dtype
        )
        n = limit or 100
        same = seed == 0 and n == 100
        precision = tolerance.precision_factor(n, dtype, "float32")
        want = _old_verdict(drop, n, same, se, n_clusters, precision)
        ((keys, value, kwargs),) = calls
        assert keys == {"circuit": "toy-llama", "group": "value_fetcher", "kind": "group_mean_drop"}
        assert value == drop and kwargs["expected"] == pytest.approx(0.125) and kwargs["n"] == n
        claim, row_keys, details = rows[-1]
        assert claim == "minimality" and row_keys == keys and details["passed"] is want
        assert details["baseline"] == pytest.approx(0.125)
        if want is True:
            assert raised is None
            continue
        message = str(raised)
        assert isinstance(raised, ClaimFailed if want is False else ClaimSkipped), (drop, message)
        assert f"{drop:+.3f} [{drop - 0.1:+.3f}, {drop + 0.1:+.3f}] over 2 heads" in message
        assert "vs baseline 0.1250 (the mean of its 2 heads' stored drops)" in message
        assert ("same-sample bound" if same else "K re-chosen in each of 10 resamples") in message
        if want is None:
            at = tolerance.resampled_at(se, n, n_clusters)
            needs = smallest_size(lambda m: at(m).value, 0.5, n)
            assert f"needs at least {needs} prompts (--limit {needs})" in message


def _run(tmp_path, limit, rows, model="toy-llama", baseline_model="toy-goat"):
    settings = Settings(
        models=(model,),
        base_model=None,
        baseline_model=baseline_model,
        circuits=None,
        device="cpu",
        dtype="float32",
        limit=limit,
        seed=0,
        baselines_dir=baselines.DEFAULT_DIR,
        update_baselines=False,
        results_dir=tmp_path,
        require_models=False,
    )
    results = SimpleNamespace(write=lambda claim, keys, value, **details: rows.append(details))
    handle = SimpleNamespace(name=model, spec=SimpleNamespace(kind="toy"), fingerprint=None)
    return Run(get("accuracy"), settings, handle, results=results)


@pytest.mark.parametrize("limit", [7, 3, 14])
def test_run_check_skips_an_inconclusive_comparison_naming_the_limit_it_needs(tmp_path, limit):
    """Through the claims' route (Run.check -> check_claim -> tolerance.judge): a skip naming the prompts and the --limit
    needed, recorded with passed None; soft, the outcome says so and settle does not count it as passed."""
    rows = []
    run = _run(tmp_path, limit, rows)
    correct = ([1, 1, 0, 1, 0, 1, 1] * 2)[:limit]
    clusters = [i // 7 for i in range(limit)]
    with pytest.raises(ClaimSkipped) as skipped:
        run.check(
            {"model": "toy-llama"},
            sum(correct) / limit,
            n=limit,
            correct=correct,
            clusters=clusters,
            tolerance=tolerance.binomial(0.6, limit),
        )
    message = str(skipped.value)
    assert f"inconclusive at n={limit}: the tolerance" in message and "wider than a fraction allows" in message
    # the size the same rule needs against toy-goat's record, a context holding 7 prompts (one per box)
    from mechbench.stats import design_effect

    goat = baselines.load("accuracy").get(model="toy-goat")
    needs = judge(
        sum(correct) / limit,
        goat,
        n=limit,
        design_effect=design_effect(correct, clusters),
        n_clusters=contexts(limit),
        per_context=PER_CONTEXT,
    ).needs
    assert f"needs at least {needs} prompts (--limit {needs})" in message and needs > 14
    assert rows[-1]["passed"] is None and rows[-1]["inconclusive"].startswith(f"inconclusive at n={limit}")
    soft = run.check(
        {"model": "toy-llama"},
        sum(correct) / limit,
        n=limit,
        correct=correct,
        clusters=clusters,
        soft=True,
        tolerance=tolerance.binomial(0.6, limit),
    )
    assert soft.passed is None and soft.inconclusive and "inconclusive" in soft.message()
    with pytest.raises(ClaimSkipped, match="1 of 1 numbers inconclusive"):
        settle([soft])


def test_settle_fails_first_then_skips_inconclusive_never_passes_them():
    record = Record({"model": "m"}, 0.82, "measured", {"tolerance": 0.0733, "tolerance_rule": "r", "n": 500})

    def outcome(measured, n):
        return check_claim_outcome(measured, record, n)

    passed, failed, inconclusive = outcome(0.82, 500), outcome(0.2, 500), outcome(0.8, 3)
    assert (passed.passed, failed.passed, inconclusive.passed) == (True, False, None)
    with pytest.raises(ClaimFailed, match="1 of 3 numbers out of tolerance"):
        settle([passed, failed, inconclusive])
    with pytest.raises(ClaimSkipped, match="1 of 2 numbers inconclusive") as e:
        settle([passed, inconclusive])
    assert "needs at least" in str(e.value)
    settle([passed, passed])  # every number judged and within: the measurement passes


def check_claim_outcome(measured, record, n):
    from mechbench.claims.check import ClaimOutcome

    return ClaimOutcome("accuracy", {"model": "m"}, measured, judgement=judge(measured, record, n=n))


def test_check_claim_gives_the_size_in_the_claims_sample_and_limit():
    """The size needed is named in the claim's sample and the --limit that gives it, also for a sample that
    --limit scales (a claim measured on prompts and on a fifth as many pairs)."""
    from mechbench.claims import Claim
    from mechbench.claims.check import _sample_of

    two = Claim(
        name="two",
        title="t",
        sections="-",
        measures="m",
        description="d",
        unit="fraction",
        keys=("model",),
        rows=("model",),
        column=None,
        sizes=(("prompts", 500), ("pairs", 100)),
    )
    assert _sample_of(two, 50, 50, 80) == ("prompts", 80)
    assert _sample_of(two, 10, 50, 40) == ("pairs", 198)  # round(100 * 198 / 500) = 40 pairs; 197 gives 39
    assert _sample_of(two, 33, 50, 40) == ("examples", None)  # no sample of the claim has that size
    out = check_claim("accuracy", {"model": "toy-goat"}, 0.8, n=3, seed=1, limit=3)
    assert out.passed is None and "needs at least 7 prompts (--limit 7)" in out.inconclusive  # 3/n below 0.5


def test_cmap_maps_its_own_checkpoint_key_for_another_models_baseline(tmp_path):
    """Under --baseline-model a local checkpoint of toy-vicuna is checked against toy-vicuna's CMAP record, a
    release's: the key comes from the spec (baseline_keys), the runner only swaps the model's name."""
    import inspect

    from mechbench.claims.specs import cmap

    rows = []
    settings = Settings(
        models=("my-ckpt",),
        base_model=None,
        baseline_model="toy-vicuna",
        circuits=None,
        device="cpu",
        dtype="float32",
        limit=None,
        seed=0,
        baselines_dir=baselines.DEFAULT_DIR,
        update_baselines=False,
        results_dir=tmp_path,
        require_models=False,
    )
    results = SimpleNamespace(write=lambda claim, keys, value, **details: rows.append((keys, details)))
    handle = SimpleNamespace(name="my-ckpt", spec=SimpleNamespace(kind="toy"), fingerprint=None)
    run = Run(get("cmap"), settings, handle, results=results)
    keys = {
        "kind": "output_cmap",
        "source_model": "my-ckpt",
        "target_model": "toy-llama",
        "checkpoint": "local",
        "group": "full_circuit",
    }
    outcome = run.check(
        keys, 0.656, n=500, soft=True, tolerance=tolerance.binomial(0.656, 500), baseline_keys={"checkpoint": "release"}
    )
    assert outcome.passed and outcome.judgement.record.keys["checkpoint"] == "release"
    assert rows[-1][0] == keys and rows[-1][1]["baseline_model"] == "toy-vicuna"  # the results keep its own keys
    assert run.check(keys, 0.656, n=500, soft=True, tolerance=tolerance.binomial(0.656, 500)).missing
    assert "baseline_keys=" in inspect.getsource(cmap.cmap)
