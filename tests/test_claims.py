"""The claim registry: each claim declared once, data and measurement (mechbench/claims/specs), made into tests by the
plugin and read by the report, the README table and the baseline check; --limit and --seed act on every claim by
one rule."""

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mechbench import baselines
from mechbench.claims import CLAIMS, Claim, check_claim, derived_seed, get, registry, tolerance
from mechbench.claims.readme import claims_table, with_table
from mechbench.report import write_report

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"


SPECS = ROOT / "mechbench" / "claims" / "specs"


def _suite_call(path: Path) -> str | None:
    """The claim a suite file makes tests of, when the file is nothing but a docstring, the import and the call
    ``globals().update(claim_tests("name"))``; else None."""
    body = ast.parse(path.read_text()).body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 2 or ast.unparse(body[0]) != "from mechbench.pytest_plugin import claim_tests":
        return None
    call = ast.unparse(body[1])
    prefix, suffix = "globals().update(claim_tests('", "'))"
    return call[len(prefix) : -len(suffix)] if call.startswith(prefix) and call.endswith(suffix) else None


def test_every_suite_is_a_claims_spec_and_a_call():
    """A suite file holds no measurement: it is the call that makes the tests of one claim's spec, and each claim
    that names a suite file has it."""
    for claim in CLAIMS.values():
        if claim.suite is not None:
            assert _suite_call(SUITES / claim.suite) == claim.name, (
                f"{claim.suite}: not the call claim_tests({claim.name!r}) (the measurement lives in its spec)"
            )
    declared = {c.suite for c in CLAIMS.values()}
    for path in SUITES.glob("test_*.py"):
        # comparison mode (every claim side by side) and the claims with no suite file of their own
        if path.name not in ("test_compare.py", "test_registered_claims.py"):
            assert path.name in declared, f"{path} is a suite with no spec in mechbench/claims/specs"


def test_every_claim_has_a_measurement_and_each_test_its_own_name():
    for claim in CLAIMS.values():
        assert claim.tests, f"claim {claim.name!r} registers no measurement"
        assert all(t.per in ("model", "circuit") for t in claim.tests)
    names = [t.name for c in CLAIMS.values() for t in c.tests]
    assert len(names) == len(set(names))


def test_the_measurements_take_sizes_seeds_and_tolerances_from_the_spec_and_need_no_pytest():
    """No measurement writes a sample size, a seed rule or a tolerance formula of its own, nor reads a baseline file
    but through its run, nor imports pytest (a claim runs under any runner): the sizes live in its ``Claim``, the
    rules in mechbench.claims.tolerance."""
    for path in SPECS.glob("*.py"):
        tree = ast.parse(path.read_text())

        def number(node):
            return isinstance(node, ast.Constant) and type(node.value) in (int, float)

        sizes = [
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
            and t.id != "Z"
            and (number(node.value) or (isinstance(node.value, ast.Tuple) and all(number(e) for e in node.value.elts)))
        ]
        assert not sizes, f"{path.name} declares sizes of its own: {sizes}"
        text = path.read_text()
        for banned in (
            "tolerance_rule=",
            "binomial_tolerance",
            "import math",
            "baselines.load(",
            "1000 * (",
            "import pytest",
            "n_examples=500",
            "settings.seed",
        ):
            assert banned not in text, (
                f"{path.name}: {banned!r} (the spec, its run and mechbench.claims.tolerance say it)"
            )


def test_a_spec_alone_is_collected_skips_without_a_baseline_stores_one_and_then_passes(pytester, tmp_path, monkeypatch):
    """A claim added as one spec (here at run time) runs in ``pytest suites/`` with no suite file of its own."""
    from mechbench.evaluate import correct_on

    new = Claim(
        name="new_claim",
        title="a new claim",
        sections="9.9",
        measures="a number",
        description="A number.",
        unit="fraction",
        keys=("model",),
        rows=("model",),
        column=None,
        sizes=(("prompts", 40),),
        tolerance="binomial",
        needs_working_model=False,
    )

    @new.test()
    def new_claim_accuracy(run):
        dataset = run.prompts()
        correct = correct_on(run.model, dataset)
        value = correct.float().mean().item()
        run.check(
            {"model": run.model.name},
            value,
            n=len(dataset),
            correct=correct,
            clusters=dataset.clusters(),
            tolerance=tolerance.binomial(value, len(dataset)),
        )

    monkeypatch.setitem(registry.CLAIMS, "new_claim", new)
    baselines_dir = tmp_path / "baselines"
    baselines_dir.mkdir()
    args = [
        str(SUITES),
        "--model=toy-llama",
        f"--baselines-dir={baselines_dir}",
        f"--results-dir={tmp_path / 'r'}",
        "-p",
        "no:cacheprovider",
        "-rA",
    ]
    listed = pytester.runpytest_inprocess(*args, "--collect-only", "-q")
    listed.stdout.fnmatch_lines(["*suites/test_registered_claims.py::test_new_claim_accuracy[[]toy-llama[]]"])
    selected = [*args, "-k", "new_claim"]
    first = pytester.runpytest_inprocess(*selected, "--allow-skips")  # asked for: a run that checks nothing passes
    first.assert_outcomes(skipped=1)
    assert first.ret == pytest.ExitCode.OK
    first.stdout.fnmatch_lines(
        ["*new_claim*does not exist yet*--update-baselines*", "*--allow-skips: the run passes anyway, as asked*"]
    )
    pytester.runpytest_inprocess(*selected, "--update-baselines").assert_outcomes(passed=1)
    assert baselines.load("new_claim", baselines_dir).description == "A number."
    pytester.runpytest_inprocess(*selected).assert_outcomes(passed=1)


def test_the_readme_table_is_the_registrys():
    readme = (ROOT / "README.md").read_text()
    assert with_table(readme) == readme, "README.md's claims table is stale: run python -m mechbench.claims --write"


def test_a_new_spec_shows_in_the_readme_table_the_report_and_the_baseline_check(tmp_path, monkeypatch):
    new = Claim(
        name="new_claim",
        title="a new claim",
        sections="9.9",
        measures="a number",
        description="A number.",
        unit="fraction",
        keys=("model", "layer"),
        rows=("model",),
        column="layer",
        sizes=(("prompts", 100),),
        tolerance="binomial",
    )
    monkeypatch.setitem(registry.CLAIMS, "new_claim", new)
    assert "| a new claim (9.9) | `suites/test_registered_claims.py` | a number |" in claims_table()
    # no baseline file yet: the check offers to store one, and storing writes the file from the spec
    outcome = check_claim("new_claim", {"model": "m", "layer": 0}, 0.5, n=100, seed=0, baselines_dir=tmp_path)
    assert outcome.missing and "does not exist yet" in outcome.missing and "--update-baselines" in outcome.missing
    for layer, value in ((0, 0.5), (1, 0.25)):
        check_claim(
            "new_claim",
            {"model": "m", "layer": layer},
            value,
            n=100,
            seed=0,
            baselines_dir=tmp_path,
            update=True,
            tolerance=tolerance.binomial(value, 100),
        )
    stored = baselines.load("new_claim", tmp_path)
    assert stored.description == "A number." and len(stored.records) == 2
    assert check_claim("new_claim", {"model": "m", "layer": 1}, 0.25, n=100, seed=0, baselines_dir=tmp_path).passed
    # a misspelt key never matches a record silently
    with pytest.raises(ValueError, match="layr"):
        check_claim("new_claim", {"model": "m", "layr": 1}, 0.25, baselines_dir=tmp_path)
    # the report lays it out as its spec says: one row per model, one column per layer
    rows = [
        {"claim": "new_claim", "model": "m", "layer": layer, "value": value, "passed": True}
        for layer, value in ((0, 0.5), (1, 0.25))
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(tmp_path / "results.jsonl", tmp_path / "out", figures=False).read_text()
    # under its name, title and section (the spec's)
    table = [
        line.split("|")[1:-1]
        for line in report.split("## new_claim: a new claim (docs/paper.md §9.9)", 1)[1].strip().splitlines()
    ]
    assert [c.strip() for c in table[0]] == ["model", "0", "1"] and [c.strip() for c in table[2]] == [
        "m",
        "0.5",
        "0.25",
    ]


def test_limit_sets_the_main_size_scales_the_other_samples_and_leaves_the_methods_settings():
    dcm = get("dcm")  # the masks train on the paper's pairs whatever the limit: fewer change what is measured
    assert [dcm.size(s) for s in ("test_pairs", "train_pairs", "validation_pairs")] == [500, 1000, 500]
    assert [dcm.size(s, 50) for s in ("test_pairs", "train_pairs", "validation_pairs")] == [50, 1000, 500]
    minimality = get("minimality")  # its prompts come from the model's discovery settings
    assert minimality.size("prompts", None, default=100) == 100 and minimality.size("prompts", 30, default=100) == 30
    assert minimality.size("ablation_prompts", 50) == 500
    two = Claim(
        name="two",
        title="t",
        sections="",
        measures="",
        description="",
        unit="fraction",
        keys=(),
        rows=(),
        column=None,
        suite="",
        sizes=(("prompts", 500), ("context_prompts", 100)),
        fixed=(("train", 64),),
    )
    assert [two.size(s, 50) for s in ("prompts", "context_prompts", "train")] == [50, 10, 64]
    with pytest.raises(KeyError, match="prompts, context_prompts, train"):
        two.size("pairs")
    for claim in CLAIMS.values():  # every claim has a main size, and a limit sets it
        main = claim.sizes[0][0]
        assert claim.size(main, 7) == 7


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 999), st.integers(0, 999))
def test_draws_of_two_seeds_never_share_a_seed(seed_a, seed_b, draw_a, draw_b):
    if (seed_a, draw_a) != (seed_b, draw_b):
        assert derived_seed(seed_a, draw=draw_a) != derived_seed(seed_b, draw=draw_b)
    assert derived_seed(seed_a) == seed_a and derived_seed(seed_a, offset=10) == seed_a + 10


def test_the_tolerance_rules():
    assert tolerance.binomial(0.66, 500).value == tolerance.binomial_tolerance(0.66, 500, 500)
    assert tolerance.binomial(0.0, 500).value > 0  # an observed 0 still allows an example
    assert tolerance.binomial(0.5, 500).same_sample == 0.006
    draws = tolerance.mean_of_draws(0.1, 10, n=500, unit=100, rounding=0.05)
    assert draws.value == round(3 * 2**0.5 * 0.1 / 10**0.5 + 0.05 + 100 / 500, 4)
    assert tolerance.mean_of_draws(0.0, 10, n=500).value == 0.002  # a zero spread still allows one example
    both = tolerance.difference(tolerance.binomial(0.2, 500), tolerance.binomial(0.3, 500), "a and b")
    assert both.value == round(tolerance.binomial(0.2, 500).value + tolerance.binomial(0.3, 500).value, 4)


def test_an_effect_above_zero_fails_at_full_size_and_is_inconclusive_on_a_reduced_sample(tmp_path):
    from types import SimpleNamespace

    from mechbench.claims import ClaimFailed, ClaimSkipped, Run, Settings

    def run(limit):
        settings = Settings(
            models=("m",),
            base_model=None,
            baseline_model=None,
            circuits=None,
            device="cpu",
            dtype="float32",
            limit=limit,
            seed=0,
            baselines_dir=tmp_path,
            update_baselines=False,
            results_dir=tmp_path,
            require_models=False,
        )
        return Run(get("faithfulness"), settings)

    def estimate(value, lo, hi):
        return SimpleNamespace(value=value, lo=lo, hi=hi)

    describe = lambda passed: f"passed={passed}"  # noqa: E731
    full, reduced = run(None), run(40)
    full.effect_above_zero("beats", {}, estimate(0.3, 0.1, 0.5), describe)  # above 0: holds at any size
    reduced.effect_above_zero("beats", {}, estimate(0.3, 0.1, 0.5), describe)
    with pytest.raises(ClaimFailed, match="passed=False"):  # an interval that includes 0 at the claim's own size
        full.effect_above_zero("beats", {}, estimate(0.1, -0.1, 0.3), describe)
    with pytest.raises(ClaimSkipped, match="inconclusive at --limit 40"):  # the same on 40 prompts: too few to tell
        reduced.effect_above_zero("beats", {}, estimate(0.1, -0.1, 0.3), describe)
    with pytest.raises(ClaimFailed):  # wholly at or below 0 fails even then
        reduced.effect_above_zero("beats", {}, estimate(-0.2, -0.4, -0.01), describe)
    assert [line.split("] ")[1] for line in reduced.lines] == ["passed=True", "passed=False", "passed=False"]


def test_the_spread_of_fresh_draws_is_at_least_the_binomials():
    # ten runs of 40 pairs that happen to agree closely: the bound takes the binomial spread of one run
    values = [41.0, 38.0, 45.0, 40.0, 42.0, 37.5, 44.0, 40.0, 41.5, 41.0]
    binomial_spread = 100 * (0.41 * 0.59 / 40) ** 0.5
    assert tolerance.spread_of_fresh_draws(values, 40, unit=100) == pytest.approx(binomial_spread, rel=1e-2)
    wide = [10.0, 70.0, 20.0, 60.0]  # a spread above the binomial's is kept
    assert tolerance.spread_of_fresh_draws(wide, 40, unit=100) == pytest.approx(650**0.5)
